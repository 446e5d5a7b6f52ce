/* What every identity handler does around its work (calls.c): actor and input checks that
 * answer the call when they refuse (*_or_reply, Redis' getLongLongFromObjectOrReply style),
 * store errors mapped to statuses, and the effects after a commit. */
#ifndef IDENTITY_CALLS_H
#define IDENTITY_CALLS_H
#include "extranet/svc.h"
#include "handlers.h"
#include "identity.pb-c.h"
#include "rules.h"
#include "store.h"
#include <stdbool.h>

/* The call's actor (borrowed; may be NULL when the envelope has none). */
const Extranet__Actor *call_actor(const svc_call_t *call);
/* rules_access_check plus uuid-shaped ids for signed-in actors; answers and returns false
 * when refused. */
bool call_allowed_or_reply(svc_call_t *call, rules_access_t access);
/* Answers INVALID with err and returns true when err is not NULL. */
bool call_invalid_or_reply(svc_call_t *call, const char *err);
/* Returns true when id is a uuid, else answers INVALID "<field> must be a uuid". */
bool call_uuid_or_reply(svc_call_t *call, const char *field, const char *id);
/* Answers a store error: -ENOENT NOT_FOUND "<what> not found", -EEXIST CONFLICT, -EAGAIN
 * UNAVAILABLE, else INTERNAL (logged). */
void call_store_fail(svc_call_t *call, int rc, const char *what);

/* "{a,b}" from n uuid/hex strings, new in the arena (NULL on OOM). */
char *call_array_literal(arena_t *a, char *const *items, size_t n);

/* After a commit that queued pending invalidations: deletes fill:sess:{h} + sess:{h}, drops
 * the pending rows, publishes session.revoked when reason is given (user_id may be NULL
 * then only if reason is NULL). Returns 0, or -EIO when Redis could not be reached (rows
 * stay for the tick; the caller answers UNAVAILABLE where the change tightens access). */
int call_after_revoke(svc_thread_t *t, arena_t *a, const char *user_id, const store_hashes_t *h,
                      const char *reason);
/* Queues a security notice mail to u (no-op without EXTRANET_SMTP_URL); inside the caller's
 * transaction when there is one. */
void call_notice(svc_thread_t *t, const Extranet__Identity__User *u, const char *subject,
                 const char *what);
/* Expiry timers (README.md "Expiry timers"): a handler queues the user.expire change with
 * store_timer_enqueue inside its transaction, commits, then calls call_expiry (the fast path:
 * sends it now, deletes the row on OK; on failure logs and leaves the row to the tick).
 * call_expiry_send sends one row as SYSTEM (Schedule or Cancel) and returns rpc_call's code. */
int call_expiry_send(svc_thread_t *t, const char *request_id, const store_timer_t *tm,
                     int64_t deadline_ms, char *err, size_t errlen) WUR;
void call_expiry(svc_thread_t *t, svc_call_t *call, const store_timer_t *tm);
/* Seconds the tick leaves a freshly queued row to the request's own attempt (> its 2 s). */
#define CALL_EXPIRY_HOLD_S 5

/* Audit (services/audit/README.md lists the actions). Writes one record for this call through
 * t->pg inside the caller's open transaction; actor NULL = the call's actor, target_type /
 * target_id / details (a JSON object, ids only) may be NULL. outcome: ok | fail |
 * mfa_required | denied. Returns 0 or audit_record's negative code. */
int call_audit(svc_thread_t *t, const svc_call_t *call, const Extranet__Actor *actor,
               const char *action, const char *target_type, const char *target_id,
               const char *outcome, const char *details) WUR;
/* The same in a transaction of its own, for refusals that change nothing else; a failure is
 * logged (the refusal is still answered). */
void call_audit_alone(svc_thread_t *t, const svc_call_t *call, const Extranet__Actor *actor,
                      const char *action, const char *target_type, const char *target_id,
                      const char *outcome, const char *details);
/* *out = the call's actor (ip) acting as user_id of kind ("admin"|"employee"|"extranet") with
 * session_id (may be NULL): the actor of a sign-in. Strings are borrowed. */
void call_actor_as(const svc_call_t *call, const char *user_id, const char *kind,
                   const char *session_id, Extranet__Actor *out);
#endif
