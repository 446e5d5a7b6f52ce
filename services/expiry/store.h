/* Every SQL statement of expiry (schema "expiry", table timers), prepared by name on each
 * connection, and the typed functions handlers.c and fire.c call. No statement here holds a lock
 * beyond its own (autocommit) transaction: nothing is locked while an owner is being called. */
#ifndef EXPIRY_STORE_H
#define EXPIRY_STORE_H
#include "expiry.pb-c.h"
#include "extranet/arena.h"
#include "extranet/pg.h"
#include "rules.h"

/* The prepared statements (svc_def_t.statements). */
extern const pg_stmt_t expiry_statements[];

/* Creates the pending (kind, subject) timer, or moves its due_at (resetting attempts, backoff
 * and any claim in flight, so an older call's answer cannot finish the moved timer). Scheduling
 * the same due_at again changes nothing. Arguments are validated by the caller. Returns 0 or
 * pg_exec's negative code. */
int expiry_store_schedule(pg_t *pg, const char *kind, const char *subject, const char *due_at) WUR;

/* Cancels the pending (kind, subject) timer, if any. Returns 0 or a negative code. */
int expiry_store_cancel(pg_t *pg, const char *kind, const char *subject) WUR;

/* Timers matching the filters ("" = any), latest due first. *ret_timers is an array of
 * *ret_n messages allocated in arena (owned by it). Returns 0 or a negative code. */
int expiry_store_list(pg_t *pg, arena_t *arena, const char *kind, const char *subject,
                      const char *state, int limit, Extranet__Expiry__TimerInfo ***ret_timers,
                      size_t *ret_n) WUR;

/* One claimed timer: a copy may call the owner for it until its lease lapses. */
typedef struct {
    char id[37];
    char claim[37];
    char kind[EXPIRY_KIND_MAX + 1];
    char subject[EXPIRY_SUBJECT_MAX + 1];
    int attempts; /* including this one */
} expiry_claim_t;

/* Claims up to max due timers (state pending, due_at and next_attempt_at <= now(), kind among
 * `kinds`, a PostgreSQL text array literal such as {"user.expire"}: a copy never claims a kind it
 * cannot fire, e.g. a newer one's during a rolling upgrade) in one short
 * transaction: SELECT ... FOR UPDATE SKIP LOCKED, then a new claim id, attempts + 1 and
 * next_attempt_at = now() + lease_ms, committed before returning. Other copies skip the rows
 * while locked and do not see them as due afterwards. Fills ret_claims[0..*ret_n).
 * Returns 0 or a negative code (nothing claimed). */
int expiry_store_claim(pg_t *pg, int max, int64_t lease_ms, const char *kinds,
                       expiry_claim_t *ret_claims, int *ret_n) WUR;

/* Finishing a claim: each applies only while the row is still pending under the same claim (a
 * Schedule, Cancel or another copy after a lapsed lease wins). *ret_applied (may be NULL) says
 * whether it did. Return 0 or a negative code. */
/* done: state done, fired_at now; note (may be NULL) is kept in last_error. */
int expiry_store_done(pg_t *pg, const expiry_claim_t *c, const char *note, bool *ret_applied) WUR;
/* retry: next attempt after delay_ms, error kept in last_error. */
int expiry_store_retry(pg_t *pg, const expiry_claim_t *c, int64_t delay_ms, const char *error,
                       bool *ret_applied) WUR;
/* release: the owner was not called; the attempt is given back and the timer is due again. */
int expiry_store_release(pg_t *pg, const expiry_claim_t *c, bool *ret_applied) WUR;
#endif
