/* Session tokens and their Redis cache (TEAM.md "Sessions in Redis"): identity is the only
 * writer of sess:{h}. A fill takes the lease fill:sess:{h} before reading PostgreSQL and
 * writes with a Lua script only while the lease still holds its value, so a revocation that
 * deletes both keys in between can never be undone by a slow fill (DESIGN.md §5). */
#ifndef IDENTITY_SESSIONS_H
#define IDENTITY_SESSIONS_H
#include "extranet/common.h"
#include "extranet/rds.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SESSIONS_TOKEN_LEN 43 /* 32 random bytes, base64url without padding */
#define SESSIONS_HASH_LEN  64 /* sha256, lower-case hex */
#define SESSIONS_LEASE_LEN RDS_LEASE_LEN

/* A new random token and the hex SHA-256 of its text. */
void sessions_token_new(char token[SESSIONS_TOKEN_LEN + 1], char hash[SESSIONS_HASH_LEN + 1]);
/* hex SHA-256 of token's text (what the gateway computes from the Bearer header). */
void sessions_token_hash(const char *token, char hash[SESSIONS_HASH_LEN + 1]);
/* True for 64 lower-case hex characters. */
bool sessions_hash_valid(const char *h);

/* Takes the fill lease of h (SET fill:sess:{h} <random> NX PX 2000). True when it is ours;
 * false when another fill holds it or Redis is unreachable (then do not fill). */
bool sessions_cache_lease(rds_t *r, const char *h, char lease[SESSIONS_LEASE_LEN + 1]);

typedef struct {
    const char *user_id, *kind, *session_id;
    bool mfa_pending;
    int64_t valid_until_ms;
} sessions_entry_t;

/* Writes sess:{h} with TTL ttl_ms if the lease still holds `lease`, then releases it.
 * Returns true when written. Failures are misses, never errors. */
bool sessions_cache_fill(rds_t *r, const char *h, const char *lease, const sessions_entry_t *e,
                         int64_t ttl_ms);

/* Deletes fill:sess:{h} and sess:{h} for each of the n hashes. Returns 0, or -EIO when Redis
 * could not be reached or refused (the caller keeps the pending invalidations). */
int sessions_cache_delete(rds_t *r, char *const *hashes, size_t n) WUR;
#endif
