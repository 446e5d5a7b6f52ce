/* Isolation check benchmark (issue 4): the gateway's authorization check as the library call it
 * is (iso_lookup: session + the caller's membership in one Redis round trip) versus one raw
 * Redis round trip (HGET) on the same hiredis connection, interleaved call by call so the
 * machine's noise falls on both alike. Three kinds, each timed per call:
 *
 *   hget    HGET mem:{user} {gid}                     (the baseline: one round trip)
 *   hinted  iso_lookup with the session's user known  (the gateway's steady state: two
 *           pipelined HMGETs, sess:{h} and mem:{user})
 *   eval    iso_lookup without a hint                 (a session's first request: one Lua EVAL)
 *
 * Input (argv[2]): lines "user_id gid" (the bench script samples them from the loaded
 * memberships; some gids are foreign to their user). For each line a session entry sess:{h} is
 * written in identity's format under a random token hash and deleted at the end. Every answer
 * is checked against the expected one (member or outside) so a broken check cannot look fast.
 * Prints p50/p99 (ms) of each kind and the ratios; exits 0 when it measured, 1 otherwise.
 *
 * usage: iso_bench redis_url pairs_file [rounds] */
#include "extranet/iso.h"
#include "extranet/rds.h"
#include "extranet/util.h"

#include <hiredis/hiredis.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PAIRS 20000

typedef struct {
    char user[37], gid[37], hash[65];
    bool member;
} pair_t;

enum { K_HGET, K_HINTED, K_EVAL, K_N };
static const char *const s_kind_name[K_N] = {"hget", "hinted", "eval"};

static int64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int s_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double s_pct_ms(int64_t *v, size_t n, double q) {
    size_t i = (size_t)(q / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i < n ? i : n - 1] / 1e6;
}

/* Reads "user gid" lines into pairs; returns how many, or -1. */
static long s_read_pairs(const char *path, pair_t *pairs, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t n = 0;
    char u[64], g[64];
    while (n < cap && fscanf(f, "%63s %63s", u, g) == 2) {
        if (!util_uuid_lower(u, pairs[n].user) || !util_uuid_lower(g, pairs[n].gid)) {
            fprintf(stderr, "iso_bench: not a uuid pair: %s %s\n", u, g);
            fclose(f);
            return -1;
        }
        n++;
    }
    if (fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return (long)n;
}

/* Writes sess:{h} for each pair (random h) and learns whether the pair is a membership. */
static int s_prepare(rds_t *r, pair_t *pairs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char raw[32];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2hex(pairs[i].hash, sizeof pairs[i].hash, raw, sizeof raw);
        char sid[37];
        util_uuid_v4(sid);
        redisReply *rep =
            rds_command(r,
                        "HSET sess:%s user_id %s kind employee session_id %s mfa_pending 0 "
                        "valid_until_ms %lld",
                        pairs[i].hash, pairs[i].user, sid, (long long)(util_now_ms() + 3600000));
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "iso_bench: HSET sess failed\n");
            if (rep)
                freeReplyObject(rep);
            return -1;
        }
        freeReplyObject(rep);
        rep = rds_command(r, "HEXISTS mem:%s %s", pairs[i].user, pairs[i].gid);
        if (!rep || rep->type != REDIS_REPLY_INTEGER) {
            fprintf(stderr, "iso_bench: HEXISTS failed (is mem:{user} loaded?)\n");
            if (rep)
                freeReplyObject(rep);
            return -1;
        }
        pairs[i].member = rep->integer == 1;
        freeReplyObject(rep);
    }
    return 0;
}

static void s_cleanup(rds_t *r, const pair_t *pairs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = rds_command(r, "DEL sess:%s", pairs[i].hash);
        if (rep)
            freeReplyObject(rep);
    }
}

/* One timed call of kind k; false when the answer is not the expected one. */
static bool s_one(rds_t *r, int k, const pair_t *p, int64_t *ret_ns) {
    int64_t t0 = s_now_ns();
    bool ok;
    if (k == K_HGET) {
        redisReply *rep = rds_command(r, "HGET mem:%s %s", p->user, p->gid);
        *ret_ns = s_now_ns() - t0;
        ok = rep && (p->member ? rep->type == REDIS_REPLY_STRING : rep->type == REDIS_REPLY_NIL);
        if (rep)
            freeReplyObject(rep);
        return ok;
    }
    iso_lookup_t l;
    int rc = iso_lookup(r, p->hash, k == K_HINTED ? p->user : NULL, p->gid, &l);
    *ret_ns = s_now_ns() - t0;
    return rc == 0 && l.session_found && strcmp(l.session.user_id, p->user) == 0 &&
           l.group == (p->member ? ISO_GROUP_MEMBER : ISO_GROUP_OUTSIDE);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: iso_bench redis_url pairs_file [rounds]\n");
        return 1;
    }
    long rounds = argc > 3 ? strtol(argv[3], NULL, 10) : 20000;
    if (rounds < 100 || sodium_init() < 0) {
        fprintf(stderr, "iso_bench: rounds must be >= 100 (or libsodium failed)\n");
        return 1;
    }
    pair_t *pairs = calloc(MAX_PAIRS, sizeof *pairs);
    int64_t *lat[K_N] = {0};
    for (int k = 0; k < K_N; k++)
        lat[k] = calloc((size_t)rounds, sizeof *lat[k]);
    rds_t *r = rds_new(argv[1]);
    int rc = 1;
    long n = pairs ? s_read_pairs(argv[2], pairs, MAX_PAIRS) : -1;
    if (!r || n <= 0 || !lat[0] || !lat[1] || !lat[2]) {
        fprintf(stderr, "iso_bench: no Redis, no pairs or out of memory\n");
        goto out;
    }
    if (s_prepare(r, pairs, (size_t)n) != 0)
        goto clean;
    size_t members = 0;
    for (long i = 0; i < n; i++)
        members += pairs[i].member;
    /* Warm-up, then rounds: each round times all three kinds on one pair, the order rotating
     * so no kind always runs first after the previous round's work. */
    for (long i = 0; i < 2000; i++) {
        int64_t ns;
        if (!s_one(r, (int)(i % K_N), &pairs[i % n], &ns)) {
            fprintf(stderr, "iso_bench: wrong answer during warm-up (kind %s, pair %ld)\n",
                    s_kind_name[i % K_N], i % n);
            goto clean;
        }
    }
    for (long i = 0; i < rounds; i++) {
        const pair_t *p = &pairs[(i * 7919) % n];
        for (int j = 0; j < K_N; j++) {
            int k = (int)((i + j) % K_N);
            if (!s_one(r, k, p, &lat[k][i])) {
                fprintf(stderr, "iso_bench: wrong answer (kind %s, user %s, gid %s)\n",
                        s_kind_name[k], p->user, p->gid);
                goto clean;
            }
        }
    }
    double p50[K_N], p99[K_N];
    for (int k = 0; k < K_N; k++) {
        qsort(lat[k], (size_t)rounds, sizeof *lat[k], s_cmp_i64);
        p50[k] = s_pct_ms(lat[k], (size_t)rounds, 50);
        p99[k] = s_pct_ms(lat[k], (size_t)rounds, 99);
    }
    printf("iso_bench: %ld rounds over %ld (user, group) pairs, %zu of them memberships\n", rounds,
           n, members);
    printf("  raw HGET mem:{u} {gid}                 p50 %.4f ms  p99 %.4f ms\n", p50[K_HGET],
           p99[K_HGET]);
    printf("  check, hinted (2 pipelined HMGETs)     p50 %.4f ms  p99 %.4f ms\n", p50[K_HINTED],
           p99[K_HINTED]);
    printf("  check, first request (one Lua EVAL)    p50 %.4f ms  p99 %.4f ms\n", p50[K_EVAL],
           p99[K_EVAL]);
    printf("  ratio hinted/HGET                      p50 %.2fx  p99 %.2fx  (target <= 1.5x)\n",
           p50[K_HINTED] / p50[K_HGET], p99[K_HINTED] / p99[K_HGET]);
    printf("  ratio eval/HGET                        p50 %.2fx  p99 %.2fx\n",
           p50[K_EVAL] / p50[K_HGET], p99[K_EVAL] / p99[K_HGET]);
    rc = 0;
clean:
    s_cleanup(r, pairs, (size_t)n);
out:
    rds_destroy(&r);
    for (int k = 0; k < K_N; k++)
        free(lat[k]);
    free(pairs);
    return rc;
}
