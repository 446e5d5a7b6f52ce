/* membership's dispatch table, its tick, the configuration main.c reads once before svc_main
 * starts any thread (read-only afterwards), and the helpers every handler uses (calls.c). */
#ifndef MEMBERSHIP_HANDLERS_H
#define MEMBERSHIP_HANDLERS_H
#include "extranet/svc.h"
#include "identity.pb-c.h"
#include "membership.pb-c.h"
#include "rules.h"
#include <stdbool.h>

typedef struct {
    const char *
        public_url; /* EXTRANET_PUBLIC_URL: invitation links are <public_url>/invitations/<token> */
    long invitation_ttl_s; /* EXTRANET_INVITATION_TTL_S (7 days) */
} membership_cfg_t;

extern membership_cfg_t membership_cfg;
extern const svc_method_t membership_methods[];
void membership_tick(svc_thread_t *t); /* pending cache invalidations */

/* groups.c */
void groups_create(svc_thread_t *t, svc_call_t *call);
void groups_list(svc_thread_t *t, svc_call_t *call);
void groups_get(svc_thread_t *t, svc_call_t *call);
void groups_update(svc_thread_t *t, svc_call_t *call);
void groups_archive(svc_thread_t *t, svc_call_t *call);
/* members.c */
void members_list(svc_thread_t *t, svc_call_t *call);
void members_add(svc_thread_t *t, svc_call_t *call);
void members_update(svc_thread_t *t, svc_call_t *call);
void members_remove(svc_thread_t *t, svc_call_t *call);
void members_check(svc_thread_t *t, svc_call_t *call);
void members_groups_of(svc_thread_t *t, svc_call_t *call);
/* invitations.c */
void invitations_create(svc_thread_t *t, svc_call_t *call);
void invitations_list(svc_thread_t *t, svc_call_t *call);
void invitations_revoke(svc_thread_t *t, svc_call_t *call);
void invitations_lookup(svc_thread_t *t, svc_call_t *call);
void invitations_accept(svc_thread_t *t, svc_call_t *call);
void invitations_join(svc_thread_t *t, svc_call_t *call);
void invitations_expire(svc_thread_t *t, svc_call_t *call);
/* people.c */
void people_contacts(svc_thread_t *t, svc_call_t *call);
void people_get(svc_thread_t *t, svc_call_t *call);

/* --- calls.c: what every handler does around its work --------------------------------- */

/* A signed-in user (admin, employee, extranet) with uuid ids and no pending 2FA enrolment:
 * *ret_kind set; otherwise answers UNAUTHENTICATED / MFA_ENROLLMENT_REQUIRED and false. */
bool call_user_or_reply(svc_call_t *call, ukind_t *ret_kind);
/* The caller is SYSTEM (another service): true; otherwise answers FORBIDDEN (a signed-in user)
 * or UNAUTHENTICATED "not allowed" and false. */
bool call_system_or_reply(svc_call_t *call);
/* Answers the verdict's status when it is not OK; true when OK. */
bool call_verdict_or_reply(svc_call_t *call, rules_verdict_t v);
/* A group id from the caller: a uuid, else NOT_FOUND "not found" (it cannot exist, R1). */
bool call_gid_or_reply(svc_call_t *call, const char *gid);
/* The caller's role in gid through the mem:{user} cache; answers UNAVAILABLE on failure. */
bool call_role_or_reply(svc_thread_t *t, svc_call_t *call, const char *gid, mrole_t *ret_role);
/* The group gid as the caller may see it (signed in, uuid, role through the cache, R1 view
 * rule); *ret_kind and *ret_role set. Returns the group in the call's arena, or NULL after
 * answering (NOT_FOUND when hidden or missing, exactly alike). */
Extranet__Membership__Group *call_group_or_reply(svc_thread_t *t, svc_call_t *call, const char *gid,
                                                 ukind_t *ret_kind, mrole_t *ret_role);
/* call_group_or_reply for a handler that changes something (`action`, the audit action it
 * would write): a signed-in caller the group is hidden from (or who names a missing uuid) also
 * leaves a `denied` record of action (call_audit_denied: target group gid, no group_id). */
Extranet__Membership__Group *call_group_for_change_or_reply(svc_thread_t *t, svc_call_t *call,
                                                            const char *gid, const char *action,
                                                            ukind_t *ret_kind, mrole_t *ret_role);
/* Answers a store error: -ENOENT NOT_FOUND "not found", -EEXIST CONFLICT (conflict_msg),
 * -EAGAIN UNAVAILABLE, else INTERNAL (logged). */
void call_store_fail(svc_call_t *call, int rc, const char *conflict_msg);

/* A user as identity knows it; strings in the call's arena. */
typedef struct {
    char *id, *email, *display_name, *kind, *status, *expires_at;
} muser_t;
/* Whether an account may still become a member: status "active" and expires_at ("" = never,
 * RFC 3339 UTC as identity prints it) not reached. A deactivated or expired account is never
 * added (R9: it must not regain access through a new membership). */
bool call_account_usable(const char *status, const char *expires_at);
/* identity.GetUsers for n ids (chunks of 500) as SYSTEM: *ret holds the ones that exist.
 * Returns 0, or -(1000+status) (UNAVAILABLE when identity did not answer); never answers. */
int call_users(svc_thread_t *t, svc_call_t *call, char *const *ids, size_t n, muser_t **ret,
               size_t *ret_n) WUR;
/* One user (NULL in *ret when it does not exist). */
int call_user(svc_thread_t *t, svc_call_t *call, const char *id, muser_t **ret) WUR;
/* Calls identity `method` as SYSTEM on the caller's remaining deadline (see rpc_call). */
int call_identity(svc_thread_t *t, svc_call_t *call, const char *method,
                  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *reply_desc,
                  ProtobufCMessage **ret_reply, char *errbuf, size_t errlen) WUR;

/* Writes an audit record (R11) of this call's actor inside the open transaction: action, the
 * target (type + id), the group, details (a JSON object without secrets or emails, NULL =
 * "{}"). Returns audit_record's code; the caller rolls back on failure. */
int call_audit(svc_thread_t *t, svc_call_t *call, const char *action, const char *target_type,
               const char *target_id, const char *gid, const char *details) WUR;
/* R11 for refusals: writes and commits, in a transaction of its own (none may be open), one
 * record of the attempted `action` with outcome "denied" and details {"reason": reason} (a
 * static text safe to show, never an email or secret). target_id and gid go in only when they
 * are uuids (lower-cased); pass gid NULL when the caller cannot see the group. A failure is
 * logged; the refusal is answered either way. */
void call_audit_denied(svc_thread_t *t, svc_call_t *call, const char *action,
                       const char *target_type, const char *target_id, const char *gid,
                       const char *reason);
/* call_verdict_or_reply for a change: a FORBIDDEN verdict (a caller who sees the group but
 * lacks the right) also leaves the denied record of action (gid included). Other refusals
 * (CONFLICT, INVALID, NOT_FOUND of a target) leave none. true when OK. */
bool call_verdict_or_deny(svc_thread_t *t, svc_call_t *call, rules_verdict_t v, const char *action,
                          const char *target_type, const char *target_id, const char *gid);

/* After a commit that queued pending invalidations for users[0..n) (versions[i] from
 * store_pending_add): deletes their mem:{user} entries (and the pending rows at those versions),
 * then publishes membership.changed for each (role[i], "" = removed). Returns 0, or -EIO when
 * Redis could not be reached (rows stay for the tick; the caller answers UNAVAILABLE where the
 * change takes access away). */
int call_after_change(svc_thread_t *t, const char *gid, char *const *users,
                      const int64_t *versions, const char *const *roles, size_t n,
                      const char *reason) WUR;
#endif
