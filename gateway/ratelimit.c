/* Fixed-window login counters. Redis keys rl:{scope}:a:{sha256(account)} and
 * rl:{scope}:ip:{ip} (the account is hashed: no emails or mfa tokens in Redis). PEXPIRE NX sets
 * the window once, so a crash between INCR and PEXPIRE cannot leave a counter without TTL for
 * more than the next attempt. The fallback table is small and lossy on purpose: a collision
 * shares a counter, which only makes it stricter. */
#include "ratelimit.h"
#include "auth.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define S_SLOTS 4096

typedef struct {
    uint64_t key;
    int64_t window_end; /* monotonic ms */
    long count;
} s_slot_t;

static ratelimit_cfg_t s_cfg;
static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static s_slot_t s_slots[S_SLOTS];

int ratelimit_init(const ratelimit_cfg_t *cfg) {
    s_cfg = *cfg;
    memset(s_slots, 0, sizeof s_slots);
    return 0;
}

void ratelimit_fini(void) {}

static void s_key_hash(const char *scope, const char *kind, const char *value, char out[65],
                       uint64_t *ret_short) {
    uint8_t h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const unsigned char *)scope, strlen(scope) + 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)kind, strlen(kind) + 1);
    crypto_hash_sha256_update(&st, (const unsigned char *)value, strlen(value));
    crypto_hash_sha256_final(&st, h);
    util_hex(h, 16, out); /* 128 bits are plenty for a counter name */
    memcpy(ret_short, h, sizeof *ret_short);
}

/* In-process fallback: half the limits. Returns ms until the window ends when over, or 0. */
static int64_t s_local_hit(uint64_t key, long limit) {
    long strict = limit / 2 > 0 ? limit / 2 : 1;
    int64_t now = util_mono_ms();
    pthread_mutex_lock(&s_mu);
    s_slot_t *s = &s_slots[key % S_SLOTS];
    if (s->window_end <= now) {
        s->key = key;
        s->count = 0;
        s->window_end = now + s_cfg.window_s * 1000;
    }
    long c = ++s->count;
    int64_t left = s->window_end - now;
    pthread_mutex_unlock(&s_mu);
    return c > strict ? left : 0;
}

static int s_seconds(long long ms) {
    return ms <= 0 ? 1 : (int)((ms + 999) / 1000);
}

typedef struct {
    char ha[65], hi[65]; /* Redis key suffixes */
    uint64_t ka, ki;     /* local table keys */
    bool has_account;
} s_keys_t;

static void s_keys(const char *scope, const char *account, const char *ip, s_keys_t *k) {
    char acct_norm[320];
    size_t n = 0;
    for (; account[n] && n + 1 < sizeof acct_norm; n++) /* emails are case-insensitive */
        acct_norm[n] = (char)tolower((unsigned char)account[n]);
    acct_norm[n] = '\0';
    s_key_hash(scope, "a", acct_norm, k->ha, &k->ka);
    s_key_hash(scope, "ip", ip, k->hi, &k->ki);
    k->has_account = acct_norm[0] != '\0';
}

bool ratelimit_allow(const char *scope, const char *account, const char *ip, int *ret_retry_after_s,
                     bool *ret_local) {
    s_keys_t k;
    s_keys(scope, account, ip, &k);
    const char *ha = k.ha, *hi = k.hi;
    uint64_t ka = k.ka, ki = k.ki;
    bool has_account = k.has_account;
    *ret_local = false;
    long long window_ms = (long long)s_cfg.window_s * 1000;

    int64_t started = 0;
    rds_t *r = auth_redis_acquire(&started);
    redisReply *reps[6] = {0};
    int ncmd = 0;
    bool redis_ok = r != NULL;
    if (redis_ok && has_account) {
        redis_ok = rds_append(r, "INCR rl:%s:a:%s", scope, ha) == 0 &&
                   rds_append(r, "PEXPIRE rl:%s:a:%s %lld NX", scope, ha, window_ms) == 0 &&
                   rds_append(r, "PTTL rl:%s:a:%s", scope, ha) == 0;
        ncmd += 3;
    }
    if (redis_ok)
        redis_ok = rds_append(r, "INCR rl:%s:ip:%s", scope, hi) == 0 &&
                   rds_append(r, "PEXPIRE rl:%s:ip:%s %lld NX", scope, hi, window_ms) == 0 &&
                   rds_append(r, "PTTL rl:%s:ip:%s", scope, hi) == 0;
    ncmd += 3;
    if (redis_ok)
        redis_ok = rds_pipeline(r, ncmd, reps) == 0;
    if (r)
        auth_redis_release(redis_ok, started);
    if (redis_ok) {
        long long wait_ms = 0;
        bool over = false, bad = false;
        for (int i = 0; i < ncmd; i += 3) {
            /* PEXPIRE .. NX needs Redis 7: an error reply there would leave a counter with no
             * TTL (a lockout for good), so it counts as Redis trouble (the local limiter). */
            if (reps[i]->type != REDIS_REPLY_INTEGER || reps[i + 1]->type != REDIS_REPLY_INTEGER ||
                reps[i + 2]->type != REDIS_REPLY_INTEGER) {
                bad = true;
                continue;
            }
            long limit = (has_account && i == 0) ? s_cfg.per_account : s_cfg.per_ip;
            if (reps[i]->integer > limit) {
                over = true;
                long long ttl = reps[i + 2]->integer > 0 ? reps[i + 2]->integer : window_ms;
                if (ttl > wait_ms)
                    wait_ms = ttl;
            }
        }
        for (int i = 0; i < ncmd; i++)
            freeReplyObject(reps[i]);
        if (!bad) {
            *ret_retry_after_s = s_seconds(wait_ms);
            return !over;
        }
    }
    /* Redis unreachable or odd: the stricter local limiter decides. */
    *ret_local = true;
    log_debug("rate limit: Redis unavailable, local limiter used");
    int64_t wa = has_account ? s_local_hit(ka, s_cfg.per_account) : 0;
    int64_t wi = s_local_hit(ki, s_cfg.per_ip);
    int64_t w = wa > wi ? wa : wi;
    *ret_retry_after_s = s_seconds(w);
    return w == 0;
}

/* DECR only keys that still exist: a DECR on an expired key would create one without TTL. */
static const char *s_refund_lua =
    "for i, k in ipairs(KEYS) do if redis.call('EXISTS', k) == 1 then "
    "redis.call('DECR', k) end end return 0";

void ratelimit_refund(const char *scope, const char *account, const char *ip, bool local) {
    s_keys_t k;
    s_keys(scope, account, ip, &k);
    if (local) {
        pthread_mutex_lock(&s_mu);
        uint64_t keys[2] = {k.ki, k.ka};
        for (int i = 0; i < (k.has_account ? 2 : 1); i++) {
            s_slot_t *s = &s_slots[keys[i] % S_SLOTS];
            if (s->count > 0)
                s->count--;
        }
        pthread_mutex_unlock(&s_mu);
        return;
    }
    int64_t started = 0;
    rds_t *r = auth_redis_acquire(&started);
    if (!r)
        return;
    redisReply *rep = k.has_account
                          ? rds_command(r, "EVAL %s 2 rl:%s:ip:%s rl:%s:a:%s", s_refund_lua, scope,
                                        k.hi, scope, k.ha)
                          : rds_command(r, "EVAL %s 1 rl:%s:ip:%s", s_refund_lua, scope, k.hi);
    auth_redis_release(rep != NULL, started);
    if (rep)
        freeReplyObject(rep); /* best effort: a lost refund only makes the limit stricter */
}
