/* The isolation check (DESIGN.md §4, §5), one library for the gateway and every service:
 * "who is this session", "may user A act in group G" and "which groups may A see", answered
 * from the Redis caches that identity (sess:{token sha256}) and membership (mem:{user}) keep,
 * and from membership over the broker when the cache has no answer.
 *
 * The caches: sess:{h} is a hash {user_id, kind, session_id, mfa_pending "0"|"1",
 * valid_until_ms} written by identity and deleted before it answers a logout, a revocation or
 * a deactivation. mem:{user} is a hash {"_" = "1", group id = role} written only by a leased
 * fill (iso_fill_lease + iso_fill, below) and deleted (iso_invalidate) before membership
 * answers any change, so a fill that read PostgreSQL before a removal committed can never
 * write the removed membership back. Every Redis failure is "no answer" (ask the owner),
 * never "allow". */
#ifndef EXTRANET_ISO_H
#define EXTRANET_ISO_H
#include "extranet/arena.h"
#include "extranet/common.h"
#include "extranet/rds.h"
#include "extranet/rpc.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A role in a group, ordered by power; ISO_ROLE_NONE = not a member. */
typedef enum { ISO_ROLE_NONE = 0, ISO_ROLE_MEMBER, ISO_ROLE_MODERATOR, ISO_ROLE_OWNER } iso_role_t;

/* "owner" | "moderator" | "member" -> role; false for anything else. */
bool iso_role_parse(const char *s, iso_role_t *ret);
const char *iso_role_name(iso_role_t r); /* "" for ISO_ROLE_NONE */

/* --- sessions and the gateway's check ------------------------------------------------------ */

typedef struct {
    char user_id[37], kind[16], session_id[37];
    bool mfa_pending;
    int64_t valid_until_ms; /* epoch ms */
} iso_session_t;

typedef enum {
    ISO_GROUP_UNKNOWN = 0, /* no group asked, or mem:{user} not cached: ask membership */
    ISO_GROUP_OUTSIDE,     /* cached: the user is in no such group (a hidden or missing one) */
    ISO_GROUP_MEMBER,      /* cached: role below */
} iso_group_answer_t;

typedef struct {
    bool session_found; /* a complete sess:{h} entry, valid until after now */
    iso_session_t session;
    iso_group_answer_t group;
    iso_role_t role; /* with ISO_GROUP_MEMBER */
} iso_lookup_t;

/* The session behind token_sha256 (64 lower-case hex) and, when gid is given (a valid uuid),
 * the session user's cached role in gid: one Redis round trip. With user_hint (the user the
 * session was seen with before, from iso_hints_get) both hashes are read by two pipelined
 * HMGETs; without it a Lua script reads the session and then its user's entry. A hint that
 * does not match the session's user leaves the group answer unknown. Returns 0 (*out filled;
 * session_found false = no usable entry: identity decides), or -EIO when Redis gave no answer. */
int iso_lookup(rds_t *r, const char *token_sha256, const char *user_hint, const char *gid,
               iso_lookup_t *out) WUR;

/* Token hash -> user id, remembered in the process: a session never changes its user, so the
 * hint holds no permission, only where to look (every check still reads both Redis entries).
 * Fixed size (slots entries, direct-mapped: a newer session evicts an older one in its slot),
 * thread-safe. */
typedef struct iso_hints iso_hints_t;
iso_hints_t *iso_hints_new(size_t slots); /* NULL on OOM or slots == 0 */
void iso_hints_destroy(iso_hints_t **self_p);
/* Copies the remembered user id into user_id (37 bytes) and returns true, or false. */
bool iso_hints_get(iso_hints_t *self, const char *token_sha256, char user_id[37]);
void iso_hints_put(iso_hints_t *self, const char *token_sha256, const char *user_id);
void iso_hints_drop(iso_hints_t *self, const char *token_sha256);

/* --- memberships: the cache, its fill, and the services' check ---------------------------- */

typedef struct {
    char *group_id, *role;
} iso_grole_t;

#define ISO_LEASE_LEN     RDS_LEASE_LEN
#define ISO_FILL_LEASE_MS 2000

/* 1 and *ret_role (ISO_ROLE_NONE: cached as not a member) when mem:{user_id} is cached, 0 on
 * a miss, any Redis failure or a malformed id (ids are lower-cased first). */
int iso_cached_role(rds_t *r, const char *user_id, const char *gid, iso_role_t *ret_role) WUR;
/* 1 and every cached (group, role) of user_id, new in the arena, or 0 on a miss or failure;
 * -ENOMEM. */
int iso_cached_groups(rds_t *r, arena_t *a, const char *user_id, iso_grole_t **ret,
                      size_t *ret_n) WUR;

/* Takes the fill lease of mem:{user_id} (SET fill:mem:{u} <random> NX PX 2000) into lease;
 * false when Redis is down or another fill holds it (then read PostgreSQL and do not fill). */
bool iso_fill_lease(rds_t *r, const char *user_id, char lease[ISO_LEASE_LEN + 1]);
/* Writes mem:{user_id} = rows (read from PostgreSQL after taking the lease) with ttl_ms, only
 * while the lease is still ours. 1 written, 0 lease lost (an invalidation came between),
 * -EIO Redis failed, -ENOMEM. */
int iso_fill(rds_t *r, arena_t *a, const char *user_id, const char *lease, const iso_grole_t *rows,
             size_t n, long ttl_ms) WUR;
/* Deletes fill:mem:{u} and mem:{u}: 0, or -EIO (the caller retries; see membership). */
int iso_invalidate(rds_t *r, const char *user_id) WUR;

/* "May user_id act in gid": the role (ISO_ROLE_NONE = not a member, a missing or malformed gid
 * included) from mem:{user_id}, else membership.Check over rpc as SYSTEM with request_id and
 * the absolute deadline_ms. For services other than membership. Returns 0, or -EIO when
 * neither Redis nor membership gave an answer (fail closed: answer UNAVAILABLE). */
int iso_role(rds_t *r, rpc_t *rpc, const char *request_id, int64_t deadline_ms, const char *user_id,
             const char *gid, iso_role_t *ret_role) WUR;
/* "Which groups may user_id see": every (group, role), from mem:{user_id}, else
 * membership.GroupsOf over rpc; new in the arena. Returns 0, -EIO as iso_role, -ENOMEM. */
int iso_groups(rds_t *r, rpc_t *rpc, arena_t *a, const char *request_id, int64_t deadline_ms,
               const char *user_id, iso_grole_t **ret, size_t *ret_n) WUR;
#endif
