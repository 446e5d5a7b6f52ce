/* Session lookup: Authorization header -> sha256 hex -> Redis HGETALL sess:{h} (per-thread
 * connection) -> actor, or a miss that the loop resolves with identity.Authenticate.
 * Redis failing is always a miss, never an allow (DESIGN.md §5). */
#include "auth.h"
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

static char *s_redis_url;
static pthread_key_t s_key;
static bool s_key_ok;

static void s_rds_free(void *p) {
    rds_t *r = p;
    rds_destroy(&r);
}

int auth_init(const char *redis_url) {
    s_redis_url = strdup(redis_url);
    if (!s_redis_url)
        return -ENOMEM;
    if (pthread_key_create(&s_key, s_rds_free) != 0) {
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

/* Session and group membership in one round trip (DESIGN.md §5): the session hash, then, when
 * it names a user, that user's role in the group ARGV[1] from membership's mem:{user} cache
 * ({"_" marker, role}; nil when the entry is not cached). */
static const char s_session_member_lua[] =
    "local s = redis.call('HGETALL', KEYS[1]) "
    "for i = 1, #s, 2 do if s[i] == 'user_id' then "
    "return {s, redis.call('HMGET', 'mem:' .. s[i + 1], '_', ARGV[1])} end end "
    "return {s, false}";

/* The route's {gid} parameter when it holds a uuid (a group-scoped route), else NULL. */
static const char *s_route_gid(const gw_req_t *req) {
    for (int i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], "gid") == 0 && util_uuid_valid(req->match.values[i]))
            return req->match.values[i];
    return NULL;
}

/* A cached "not a member" from mem:{user}: the entry exists ("_" is set) and has no role for the
 * group. Only a deny is taken from here; a role still goes to the service, which re-checks. */
static bool s_cached_non_member(const redisReply *m) {
    return m && m->type == REDIS_REPLY_ARRAY && m->elements == 2 &&
           m->element[0]->type == REDIS_REPLY_STRING && m->element[1]->type == REDIS_REPLY_NIL;
}

int auth_cache_lookup(gw_req_t *req) {
    int64_t started;
    rds_t *r = auth_redis_acquire(&started);
    if (!r)
        return 0;
    const char *gid = s_route_gid(req);
    redisReply *top = NULL, *rep;
    const redisReply *mem = NULL;
    if (gid) {
        top = rds_command(r, "EVAL %s 1 sess:%s %s", s_session_member_lua, req->token_sha256, gid);
        rep =
            (top && top->type == REDIS_REPLY_ARRAY && top->elements == 2) ? top->element[0] : NULL;
        mem = rep ? top->element[1] : NULL;
    } else {
        top = rep = rds_command(r, "HGETALL sess:%s", req->token_sha256);
    }
    auth_redis_release(top != NULL, started);
    if (!rep) {
        if (top)
            freeReplyObject(top);
        return 0;
    }
    const char *user_id = NULL, *kind = NULL, *session_id = NULL, *mfa = NULL, *until = NULL;
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const redisReply *k = rep->element[i], *v = rep->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(k->str, "user_id") == 0)
                user_id = v->str;
            else if (strcmp(k->str, "kind") == 0)
                kind = v->str;
            else if (strcmp(k->str, "session_id") == 0)
                session_id = v->str;
            else if (strcmp(k->str, "mfa_pending") == 0)
                mfa = v->str;
            else if (strcmp(k->str, "valid_until_ms") == 0)
                until = v->str;
        }
    }
    int hit = 0;
    if (user_id && kind && session_id && mfa && until) {
        char *end = NULL;
        errno = 0;
        long long vu = strtoll(until, &end, 10);
        /* An entry past its validity may be stale either way: identity decides (a miss). */
        if (errno == 0 && end != until && *end == '\0' && vu > util_now_ms()) {
            s_apply(req, user_id, kind, session_id, strcmp(mfa, "1") == 0, vu);
            hit = req->status == EXTRANET__STATUS__UNAUTHENTICATED ? 0 : 1;
            if (!hit)
                req_set_result(req, EXTRANET__STATUS__OK, "%s", "");
            /* R1 fast path: a group the cache says the caller is not in answers exactly like a
             * missing one, without a trip to the service (admins see every group). */
            else if (req->status == EXTRANET__STATUS__OK &&
                     req->actor.kind != EXTRANET__ACTOR_KIND__ADMIN && s_cached_non_member(mem))
                req_set_result(req, EXTRANET__STATUS__NOT_FOUND, "not found");
        }
    }
    freeReplyObject(top);
    return hit;
}

Extranet__Status auth_apply_reply(gw_req_t *req, const Extranet__Identity__AuthenticateReply *ar) {
    return s_apply(req, ar->user_id, ar->kind, ar->session_id, ar->mfa_pending, ar->valid_until_ms);
}
