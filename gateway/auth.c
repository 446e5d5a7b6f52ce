/* Session lookup: Authorization header -> sha256 hex -> Redis sess:{h} (and, on a group route,
 * mem:{user}) through the isolation library (extranet/iso.h; per-thread connection) -> actor,
 * or a miss that the loop resolves with identity.Authenticate. Redis failing is always a miss,
 * never an allow (DESIGN.md §5). */
#include "auth.h"
#include "extranet/iso.h"
#include "extranet/log.h"
#include "extranet/rds.h"
#include "extranet/util.h"
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define S_MAX_TOKEN 512

#define S_HINT_SLOTS 16384 /* sessions whose user this process remembers (~1.6 MB) */

static char *s_redis_url;
static iso_hints_t *s_hints;
static pthread_key_t s_key;
static bool s_key_ok;

static void s_rds_free(void *p) {
    rds_t *r = p;
    rds_destroy(&r);
}

int auth_init(const char *redis_url) {
    s_redis_url = strdup(redis_url);
    s_hints = iso_hints_new(S_HINT_SLOTS);
    if (!s_redis_url || !s_hints || pthread_key_create(&s_key, s_rds_free) != 0) {
        iso_hints_destroy(&s_hints);
        free(s_redis_url);
        s_redis_url = NULL;
        return -ENOMEM;
    }
    s_key_ok = true;
    return 0;
}

void auth_fini(void) {
    if (s_key_ok) {
        /* The calling thread's own connection: other threads freed theirs at exit. */
        s_rds_free(pthread_getspecific(s_key));
        pthread_setspecific(s_key, NULL);
        pthread_key_delete(s_key);
        s_key_ok = false;
    }
    iso_hints_destroy(&s_hints);
    free(s_redis_url);
    s_redis_url = NULL;
}

/* This thread's Redis connection (borrowed; freed by the key's destructor), or NULL. */
static rds_t *s_rds(void) {
    if (!s_key_ok)
        return NULL;
    rds_t *r = pthread_getspecific(s_key);
    if (!r) {
        r = rds_new(s_redis_url);
        if (r && pthread_setspecific(s_key, r) != 0)
            rds_destroy(&r);
    }
    return r;
}

#define S_BREAK_MIN_MS 1000
#define S_BREAK_MAX_MS 10000
#define S_SLOW_MS      500 /* far above any healthy answer, even on a loaded machine */

static int64_t s_skip_until; /* monotonic ms; 0 = Redis in use (atomic) */
static int64_t s_backoff;    /* length of the current window, ms (atomic) */

rds_t *auth_redis_acquire(int64_t *ret_started_ms) {
    int64_t until = __atomic_load_n(&s_skip_until, __ATOMIC_ACQUIRE);
    int64_t now = util_mono_ms();
    if (until) {
        if (now < until)
            return NULL;
        /* The window is over: one thread probes, the others keep skipping meanwhile. */
        int64_t b = __atomic_load_n(&s_backoff, __ATOMIC_RELAXED);
        if (!__atomic_compare_exchange_n(&s_skip_until, &until, now + b, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            return NULL;
    }
    *ret_started_ms = now;
    return s_rds();
}

void auth_redis_release(bool ok, int64_t started_ms) {
    int64_t now = util_mono_ms();
    if (ok && now - started_ms < S_SLOW_MS) {
        if (__atomic_exchange_n(&s_skip_until, 0, __ATOMIC_ACQ_REL) != 0) {
            __atomic_store_n(&s_backoff, 0, __ATOMIC_RELAXED);
            log_info("redis: answering again; session cache and rate limits back in use");
        }
        return;
    }
    int64_t b = __atomic_load_n(&s_backoff, __ATOMIC_RELAXED);
    b = b ? (b * 2 > S_BREAK_MAX_MS ? S_BREAK_MAX_MS : b * 2) : S_BREAK_MIN_MS;
    __atomic_store_n(&s_backoff, b, __ATOMIC_RELAXED);
    __atomic_store_n(&s_skip_until, now + b, __ATOMIC_RELEASE);
    log_warn("redis: %s; skipped for %lld ms (sessions from identity, local rate limits)",
             ok ? "slow answer" : "no answer", (long long)b);
}

void auth_actor_anonymous(gw_req_t *req) {
    Extranet__Actor init = EXTRANET__ACTOR__INIT;
    req->actor = init;
    req->actor.kind = EXTRANET__ACTOR_KIND__ANONYMOUS;
    req->actor.client_ip = req->client_ip;
}

Extranet__Status auth_parse_header(gw_req_t *req, const char *authorization) {
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return EXTRANET__STATUS__UNAUTHENTICATED;
    const char *tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    size_t n = strlen(tok);
    while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    if (n == 0 || n > S_MAX_TOKEN)
        return EXTRANET__STATUS__UNAUTHENTICATED;
    for (size_t i = 0; i < n; i++) { /* RFC 6750 §2.1 b64token */
        char c = tok[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' ||
                  (c == '=' && i > 0);
        if (!ok)
            return EXTRANET__STATUS__UNAUTHENTICATED;
    }
    uint8_t h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)tok, n);
    util_hex(h, sizeof h, req->token_sha256);
    return EXTRANET__STATUS__OK;
}

static bool s_kind(const char *s, Extranet__ActorKind *ret) {
    if (strcmp(s, "admin") == 0)
        *ret = EXTRANET__ACTOR_KIND__ADMIN;
    else if (strcmp(s, "employee") == 0)
        *ret = EXTRANET__ACTOR_KIND__EMPLOYEE;
    else if (strcmp(s, "extranet") == 0)
        *ret = EXTRANET__ACTOR_KIND__EXTRANET;
    else
        return false;
    return true;
}

/* Fills the actor from a session and checks the route's rule for mfa_pending sessions. */
static Extranet__Status s_apply(gw_req_t *req, const char *user_id, const char *kind,
                                const char *session_id, bool mfa_pending, int64_t valid_until) {
    Extranet__ActorKind k;
    if (!user_id || !session_id || !kind || !util_uuid_valid(user_id) ||
        !util_uuid_valid(session_id) || !s_kind(kind, &k) || valid_until <= util_now_ms()) {
        req_set_result(req, EXTRANET__STATUS__UNAUTHENTICATED,
                       "missing, invalid or expired session");
        return EXTRANET__STATUS__UNAUTHENTICATED;
    }
    snprintf(req->actor_user_id, sizeof req->actor_user_id, "%s", user_id);
    snprintf(req->actor_session_id, sizeof req->actor_session_id, "%s", session_id);
    auth_actor_anonymous(req);
    req->actor.kind = k;
    req->actor.user_id = req->actor_user_id;
    req->actor.session_id = req->actor_session_id;
    req->actor.mfa_pending = mfa_pending;
    if (mfa_pending && !(req->match.route->flags & GW_ROUTE_MFA_OK)) {
        req_set_result(req, EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED,
                       "two-factor enrollment required");
        return EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED;
    }
    return EXTRANET__STATUS__OK;
}

/* The route's {gid} parameter when it holds a uuid (a group-scoped route), else NULL. */
static const char *s_route_gid(const gw_req_t *req) {
    for (int i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], "gid") == 0 && util_uuid_valid(req->match.values[i]))
            return req->match.values[i];
    return NULL;
}

/* GET and HEAD: a read, whose refusal leaves no audit record. */
static bool s_is_read(const gw_req_t *req) {
    const char *m = req->match.route ? req->match.route->http_method : NULL;
    return m && (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0);
}

int auth_cache_lookup(gw_req_t *req) {
    int64_t started;
    rds_t *r = auth_redis_acquire(&started);
    if (!r)
        return 0;
    /* Session and membership in one round trip (iso.h): two pipelined HMGETs once this
     * process has seen the session's user, a Lua script the first time. */
    const char *gid = s_route_gid(req);
    char hint[37];
    bool hinted = gid && iso_hints_get(s_hints, req->token_sha256, hint);
    iso_lookup_t l;
    int rc = iso_lookup(r, req->token_sha256, hinted ? hint : NULL, gid, &l);
    auth_redis_release(rc == 0, started);
    if (rc != 0)
        return 0;
    if (!l.session_found) {
        iso_hints_drop(s_hints, req->token_sha256);
        return 0; /* identity decides */
    }
    if (!hinted || strcmp(hint, l.session.user_id) != 0)
        iso_hints_put(s_hints, req->token_sha256, l.session.user_id);
    s_apply(req, l.session.user_id, l.session.kind, l.session.session_id, l.session.mfa_pending,
            l.session.valid_until_ms);
    if (req->status == EXTRANET__STATUS__UNAUTHENTICATED) {
        req_set_result(req, EXTRANET__STATUS__OK, "%s", "");
        return 0;
    }
    /* R1 fast path: a read of a group the cache says the caller is not in answers exactly like
     * a missing one, without a trip to the service (admins see every group). Only a deny is
     * taken from the cache here; a role still goes to the service, which checks again. A
     * change (any method but GET/HEAD) always goes to the service, which refuses it the same
     * way and leaves the "denied" audit record of the attempt (R11). */
    if (req->status == EXTRANET__STATUS__OK && req->actor.kind != EXTRANET__ACTOR_KIND__ADMIN &&
        l.group == ISO_GROUP_OUTSIDE && s_is_read(req))
        req_set_result(req, EXTRANET__STATUS__NOT_FOUND, "not found");
    return 1;
}

Extranet__Status auth_apply_reply(gw_req_t *req, const Extranet__Identity__AuthenticateReply *ar) {
    return s_apply(req, ar->user_id, ar->kind, ar->session_id, ar->mfa_pending, ar->valid_until_ms);
}
