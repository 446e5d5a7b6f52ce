/* Bearer-token authentication of the gateway. The token's SHA-256 (hex) is looked up in Redis
 * (`sess:{h}`, written only by identity) with one HGETALL on the calling libmicrohttpd thread,
 * over a Redis connection of that thread (thread-local, created lazily, freed at thread exit):
 * a ~100 µs blocking call is accepted there, a blocking broker call never is. A miss, an
 * expired entry or Redis down sends identity.Authenticate through the loop thread instead.
 * On a group route ({gid}), the same one round trip is an EVAL that also reads the caller's
 * mem:{user} entry (written by membership): a group the cache says the caller is not in
 * answers 404 at once (R1); a role, a miss or an admin still go to the service, which
 * re-checks. Only a deny is ever taken from the cache.
 * The gateway overwrites the actor with what the session says (DESIGN.md §3). */
#ifndef GW_AUTH_H
#define GW_AUTH_H
#include "extranet/common.h"
#include "extranet/rds.h"
#include "identity.pb-c.h"
#include "request.h"
#include <stdbool.h>
#include <stdint.h>

/* redis_url is copied. Returns 0 or -ENOMEM. */
int auth_init(const char *redis_url) WUR;
void auth_fini(void);

/* This thread's Redis connection (borrowed; freed at thread exit), shared with the rate
 * limiter, behind a process-wide breaker: after a failed or slow (> 500 ms) call every thread
 * skips Redis (a miss) for 1 s, doubling up to 10 s while one thread at a time probes again,
 * so a paused Redis blocks libmicrohttpd threads once per window, not once per request.
 * NULL when skipped (or on OOM); then do not call auth_redis_release. */
rds_t *auth_redis_acquire(int64_t *ret_started_ms);
/* Reports how the call(s) on the acquired connection went. */
void auth_redis_release(bool ok, int64_t started_ms);

/* Sets req->actor to anonymous with req->client_ip. */
void auth_actor_anonymous(gw_req_t *req);

/* Parses `Authorization: Bearer <token>` (value may be NULL) into req->token_sha256.
 * Returns OK, or UNAUTHENTICATED (missing header, other scheme, malformed token). */
Extranet__Status auth_parse_header(gw_req_t *req, const char *authorization);

/* Looks the session up in Redis. Returns 1 on a usable hit: req->actor is filled and the
 * route's mfa rule checked (req->status/message set to MFA_ENROLLMENT_REQUIRED when it fails,
 * or to NOT_FOUND on a group route whose group the cached memberships do not hold);
 * 0 on a miss (ask identity.Authenticate). Never an error: Redis down is a miss. */
int auth_cache_lookup(gw_req_t *req);

/* Applies identity's answer (loop thread): fills the actor, checks valid_until_ms and the
 * route's mfa rule. Returns OK, or the status also written into req's result. */
Extranet__Status auth_apply_reply(gw_req_t *req, const Extranet__Identity__AuthenticateReply *ar);
#endif
