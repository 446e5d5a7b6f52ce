/* The mem:{user} Redis cache (cache.h): lookup, leased fill with a Lua compare-and-set, and
 * invalidation. Every Redis failure is a miss; the answer then comes from PostgreSQL. */
#include "cache.h"
#include "extranet/log.h"
#include "store.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define LEASE_LEN 32

long mcache_fill_delay_ms;

/* KEYS[1] = fill:mem:{u}, KEYS[2] = mem:{u}; ARGV[1] = lease, ARGV[2] = ttl ms, then pairs of
 * group id, role. Writes only while the lease is still ours: an invalidation deletes it, so a
 * fill that read PostgreSQL before the change committed finds it gone and writes nothing. */
static const char s_fill_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('DEL', KEYS[2]) "
    "redis.call('HSET', KEYS[2], '_', '1') "
    "for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end "
    "redis.call('PEXPIRE', KEYS[2], ARGV[2]) "
    "redis.call('DEL', KEYS[1]) "
    "return 1";

/* At most this many groups are cached for one user; beyond it the entry is not written and
 * every check reads PostgreSQL (correct, only slower). */
#define MAX_CACHED_GROUPS 2000

/* 1 = hit (role set), 0 = miss, never an error. */
static int s_lookup(rds_t *r, const char *user_id, const char *gid, mrole_t *ret_role) {
    if (!r)
        return 0;
    redisReply *rep = rds_command(r, "HMGET mem:%s _ %s", user_id, gid);
    int hit = 0;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING) {
        hit = 1;
        *ret_role = ROLE_NONE;
        if (rep->element[1]->type == REDIS_REPLY_STRING &&
            !rules_role_parse(rep->element[1]->str, ret_role))
            hit = 0; /* not something we wrote: ask PostgreSQL */
    }
    if (rep)
        freeReplyObject(rep);
    return hit;
}

static bool s_lease(rds_t *r, const char *user_id, char lease[LEASE_LEN + 1]) {
    if (!r)
        return false;
    unsigned char rnd[LEASE_LEN / 2];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(lease, LEASE_LEN + 1, rnd, sizeof rnd);
    redisReply *rep = rds_command(r, "SET fill:mem:%s %s NX PX 2000", user_id, lease);
    bool ok = rep && rep->type == REDIS_REPLY_STATUS && rep->str && !strcmp(rep->str, "OK");
    if (rep)
        freeReplyObject(rep);
    return ok;
}

static void s_fill(rds_t *r, arena_t *a, const char *user_id, const char *lease,
                   const store_grole_t *rows, size_t n) {
    size_t argc = 7 + 2 * n;
    const char **argv = arena_alloc(a, argc * sizeof *argv);
    size_t *lens = arena_alloc(a, argc * sizeof *lens);
    char *fill_key = arena_printf(a, "fill:mem:%s", user_id);
    char *mem_key = arena_printf(a, "mem:%s", user_id);
    char *ttl = arena_printf(a, "%d", RULES_MEM_CACHE_TTL_MS);
    if (!argv || !lens || !fill_key || !mem_key || !ttl)
        return;
    argv[0] = "EVAL";
    argv[1] = s_fill_lua;
    argv[2] = "2";
    argv[3] = fill_key;
    argv[4] = mem_key;
    argv[5] = lease;
    argv[6] = ttl;
    for (size_t i = 0; i < n; i++) {
        argv[7 + 2 * i] = rows[i].group_id;
        argv[8 + 2 * i] = rows[i].role;
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisReply *rep = rds_commandargv(r, (int)argc, argv, lens);
    if (!rep || rep->type != REDIS_REPLY_INTEGER)
        log_debug("mem cache fill for %s not written", user_id);
    if (rep)
        freeReplyObject(rep);
}

int mcache_role(svc_thread_t *t, arena_t *a, const char *user_id, const char *gid,
                mrole_t *ret_role) {
    if (s_lookup(t->redis, user_id, gid, ret_role))
        return 0;
    char lease[LEASE_LEN + 1];
    if (!s_lease(t->redis, user_id, lease)) {
        /* Redis down, or another fill in progress: one row from PostgreSQL. */
        char *role = NULL;
        int rc = store_role(t->pg, a, gid, user_id, &role);
        if (rc == -ENOENT) {
            *ret_role = ROLE_NONE;
            return 0;
        }
        if (rc != 0)
            return rc;
        return rules_role_parse(role, ret_role) ? 0 : -EIO;
    }
    store_grole_t *rows = NULL;
    size_t n = 0;
    int rc = store_roles_of(t->pg, a, user_id, &rows, &n);
    if (rc != 0)
        return rc;
    *ret_role = ROLE_NONE;
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].group_id, gid) == 0 && !rules_role_parse(rows[i].role, ret_role))
            return -EIO;
    if (mcache_fill_delay_ms > 0) {
        struct timespec ts = {mcache_fill_delay_ms / 1000,
                              (mcache_fill_delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    if (n <= MAX_CACHED_GROUPS)
        s_fill(t->redis, a, user_id, lease, rows, n);
    return 0;
}

int mcache_invalidate(svc_thread_t *t, char *const *user_ids, size_t n) {
    if (n == 0)
        return 0;
    if (!t->redis)
        return -EIO;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        redisReply *rep = rds_command(t->redis, "DEL fill:mem:%s mem:%s", user_ids[i], user_ids[i]);
        if (!rep || rep->type != REDIS_REPLY_INTEGER)
            rc = -EIO;
        if (rep)
            freeReplyObject(rep);
    }
    return rc;
}
