/* Session tokens and the sess:{h} Redis cache (see sessions.h for the lease protocol). */
#include "sessions.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS[1] = fill:sess:{h}, KEYS[2] = sess:{h}; ARGV = lease, user_id, kind, session_id,
 * mfa_pending, valid_until_ms, ttl_ms. Writes only while the lease is still ours: a
 * revocation deletes the lease, so a fill that read PostgreSQL before the revocation
 * committed finds it gone and writes nothing. */
static const char s_fill_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('DEL', KEYS[2]) "
    "redis.call('HSET', KEYS[2], 'user_id', ARGV[2], 'kind', ARGV[3], 'session_id', ARGV[4], "
    "'mfa_pending', ARGV[5], 'valid_until_ms', ARGV[6]) "
    "redis.call('PEXPIRE', KEYS[2], ARGV[7]) "
    "redis.call('DEL', KEYS[1]) "
    "return 1";

void sessions_token_new(char token[SESSIONS_TOKEN_LEN + 1], char hash[SESSIONS_HASH_LEN + 1]) {
    unsigned char rnd[32];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2base64(token, SESSIONS_TOKEN_LEN + 1, rnd, sizeof rnd,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(rnd, sizeof rnd);
    sessions_token_hash(token, hash);
}

void sessions_token_hash(const char *token, char hash[SESSIONS_HASH_LEN + 1]) {
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, (const unsigned char *)token, strlen(token));
    sodium_bin2hex(hash, SESSIONS_HASH_LEN + 1, d, sizeof d);
}

bool sessions_hash_valid(const char *h) {
    if (!h || strlen(h) != SESSIONS_HASH_LEN)
        return false;
    for (const char *p = h; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

bool sessions_cache_lease(rds_t *r, const char *h, char lease[SESSIONS_LEASE_LEN + 1]) {
    char key[80];
    snprintf(key, sizeof key, "fill:sess:%s", h);
    return rds_lease(r, key, 2000, lease);
}

bool sessions_cache_fill(rds_t *r, const char *h, const char *lease, const sessions_entry_t *e,
                         int64_t ttl_ms) {
    char fill_key[80], sess_key[80], valid[24], ttl[24];
    snprintf(fill_key, sizeof fill_key, "fill:sess:%s", h);
    snprintf(sess_key, sizeof sess_key, "sess:%s", h);
    snprintf(valid, sizeof valid, "%lld", (long long)e->valid_until_ms);
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *argv[] = {"EVAL", s_fill_lua, "2",     fill_key,      sess_key,
                          lease,  e->user_id, e->kind, e->session_id, e->mfa_pending ? "1" : "0",
                          valid,  ttl};
    size_t lens[sizeof argv / sizeof argv[0]];
    for (size_t i = 0; i < sizeof argv / sizeof argv[0]; i++)
        lens[i] = strlen(argv[i]);
    redisReply *rep = rds_commandargv(r, (int)(sizeof argv / sizeof argv[0]), argv, lens);
    bool ok = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    if (rep)
        freeReplyObject(rep);
    return ok;
}

/* One DEL of at most 2 * SESSIONS_DEL_CHUNK keys per round trip. */
#define SESSIONS_DEL_CHUNK 128

int sessions_cache_delete(rds_t *r, char *const *hashes, size_t n) {
    if (n == 0)
        return 0;
    if (!r)
        return -EIO;
    const char *argv[1 + 2 * SESSIONS_DEL_CHUNK];
    size_t lens[1 + 2 * SESSIONS_DEL_CHUNK];
    char(*keys)[80] = malloc(sizeof *keys * 2 * SESSIONS_DEL_CHUNK);
    if (!keys)
        return -ENOMEM;
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += SESSIONS_DEL_CHUNK) {
        size_t m = n - off < SESSIONS_DEL_CHUNK ? n - off : SESSIONS_DEL_CHUNK;
        argv[0] = "DEL";
        lens[0] = 3;
        for (size_t i = 0; i < m; i++) {
            snprintf(keys[2 * i], 80, "fill:sess:%s", hashes[off + i]);
            snprintf(keys[2 * i + 1], 80, "sess:%s", hashes[off + i]);
            argv[1 + 2 * i] = keys[2 * i];
            argv[2 + 2 * i] = keys[2 * i + 1];
            lens[1 + 2 * i] = strlen(keys[2 * i]);
            lens[2 + 2 * i] = strlen(keys[2 * i + 1]);
        }
        redisReply *rep = rds_commandargv(r, (int)(1 + 2 * m), argv, lens);
        if (!rep || rep->type != REDIS_REPLY_INTEGER)
            rc = -EIO;
        if (rep)
            freeReplyObject(rep);
    }
    free(keys);
    return rc;
}
