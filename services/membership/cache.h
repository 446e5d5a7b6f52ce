/* The Redis cache of each user's memberships: hash `mem:{user}` of group id -> role, plus the
 * field "_" so that a user in no group is a hit too. Filled under a lease (`SET fill:mem:{user}
 * <random> NX PX 2000`, read PostgreSQL, Lua compare-and-set write), so a fill that read
 * PostgreSQL before a removal committed can never write the removed membership back: the
 * removal deletes the lease. Redis down or erroring = a miss = PostgreSQL (fail closed). */
#ifndef MEMBERSHIP_CACHE_H
#define MEMBERSHIP_CACHE_H
#include "extranet/svc.h"
#include "rules.h"
#include "store.h"

/* user_id's role in gid (ROLE_NONE when not a member) into *ret_role, from mem:{user_id} or,
 * on a miss, from PostgreSQL (filling the entry when the lease is ours). Ids are lower-cased
 * first; a malformed one has no role. Returns 0, or a store error (-EIO: PostgreSQL down). */
int mcache_role(svc_thread_t *t, arena_t *a, const char *user_id, const char *gid,
                mrole_t *ret_role) WUR;

/* Every (group, role) of user_id (lower-cased first; a malformed id has none), new in the
 * arena: from mem:{user_id} or, on a miss, from PostgreSQL (filling the entry when the lease
 * is ours). 0, -ENOMEM or a store error. */
int mcache_groups(svc_thread_t *t, arena_t *a, const char *user_id, store_grole_t **ret,
                  size_t *ret_n) WUR;

/* Fault injection for tests only (EXTRANET_MEMBERSHIP_FILL_DELAY_MS, default 0): a fill
 * sleeps this long between reading PostgreSQL and writing Redis, so a test can make a removal
 * land inside that window deterministically. Set once by main.c before any thread starts. */
extern long mcache_fill_delay_ms;

/* Deletes fill:mem:{u} and mem:{u} for each of the n users. Returns 0, or -EIO when Redis could
 * not be reached (the caller keeps the pending invalidations for the tick). */
int mcache_invalidate(svc_thread_t *t, char *const *user_ids, size_t n) WUR;
#endif
