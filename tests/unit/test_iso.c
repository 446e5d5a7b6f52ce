/* Tests of the isolation library (iso.c). Pure: role names, the session -> user hints (also
 * under threads: a hint is never another session's user). Against a redis-server started
 * here: the session + membership lookup on both of its paths (Lua script, pipelined with a
 * hint), stale and malformed entries, the leased fill losing to an invalidation, the cached
 * groups, the services' check from the cache, and Redis gone (no answer, never an allow). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "extranet/iso.h"
#include "extranet/util.h"
#include "lib/redis_server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define TOKEN_A "aaaa000000000000000000000000000000000000000000000000000000000001"
#define TOKEN_B "bbbb000000000000000000000000000000000000000000000000000000000002"
#define USER_1  "11111111-1111-4111-8111-111111111111"
#define USER_2  "22222222-2222-4222-8222-222222222222"
#define SESS_1  "33333333-3333-4333-8333-333333333333"
#define GROUP_X "44444444-4444-4444-8444-444444444444"
#define GROUP_Y "5555aaaa-5555-4555-8555-55555555bbbb"

static void test_roles(void **state) {
    (void)state;
    const char *names[] = {"member", "moderator", "owner"};
    for (int i = 0; i < 3; i++) {
        iso_role_t r = ISO_ROLE_NONE;
        assert_true(iso_role_parse(names[i], &r));
        assert_int_equal(r, ISO_ROLE_MEMBER + i);
        assert_string_equal(iso_role_name(r), names[i]);
    }
    iso_role_t r = ISO_ROLE_OWNER;
    assert_false(iso_role_parse("", &r));
    assert_false(iso_role_parse("Owner", &r));
    assert_false(iso_role_parse("admin", &r));
    assert_false(iso_role_parse(NULL, &r));
    assert_int_equal(r, ISO_ROLE_OWNER); /* untouched */
    assert_string_equal(iso_role_name(ISO_ROLE_NONE), "");
}

static void test_hints(void **state) {
    (void)state;
    assert_null(iso_hints_new(0));
    iso_hints_t *h = iso_hints_new(1); /* one slot: every token collides */
    assert_non_null(h);
    char u[37] = "";
    assert_false(iso_hints_get(h, TOKEN_A, u));
    iso_hints_put(h, TOKEN_A, USER_1);
    assert_true(iso_hints_get(h, TOKEN_A, u));
    assert_string_equal(u, USER_1);
    assert_false(iso_hints_get(h, TOKEN_B, u)); /* same slot, other token */
    iso_hints_put(h, TOKEN_B, USER_2);          /* evicts A */
    assert_false(iso_hints_get(h, TOKEN_A, u));
    assert_true(iso_hints_get(h, TOKEN_B, u));
    assert_string_equal(u, USER_2);
    iso_hints_drop(h, TOKEN_A); /* not A's slot any more: B stays */
    assert_true(iso_hints_get(h, TOKEN_B, u));
    iso_hints_drop(h, TOKEN_B);
    assert_false(iso_hints_get(h, TOKEN_B, u));
    /* not a token hash, not a uuid: ignored */
    iso_hints_put(h, "AAAA", USER_1);
    iso_hints_put(h, TOKEN_A, "not-a-uuid");
    assert_false(iso_hints_get(h, TOKEN_A, u));
    assert_false(iso_hints_get(h, "", u));
    assert_false(iso_hints_get(NULL, TOKEN_A, u));
    iso_hints_destroy(&h);
    assert_null(h);
    iso_hints_destroy(&h);
}

/* Threads put and read their own tokens into a table far too small for them; a read may miss
 * but must never hand out another token's user. */
typedef struct {
    iso_hints_t *h;
    int id;
    long wrong, hits;
} s_worker_t;

static void *s_hint_worker(void *arg) {
    s_worker_t *w = arg;
    for (int i = 0; i < 20000; i++) {
        char tok[65], user[37], got[37];
        snprintf(tok, sizeof tok, "%02x%062x", w->id, i % 97);
        snprintf(user, sizeof user, "%08x-0000-4000-8000-%012x", w->id, i % 97);
        iso_hints_put(w->h, tok, user);
        if (iso_hints_get(w->h, tok, got)) {
            w->hits++;
            if (strcmp(got, user) != 0)
                w->wrong++;
        }
    }
    return NULL;
}

static void test_hints_threads(void **state) {
    (void)state;
    iso_hints_t *h = iso_hints_new(7);
    assert_non_null(h);
    pthread_t th[4];
    s_worker_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (s_worker_t){.h = h, .id = i + 1};
        assert_int_equal(pthread_create(&th[i], NULL, s_hint_worker, &w[i]), 0);
    }
    long hits = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].wrong, 0);
        hits += w[i].hits;
    }
    assert_true(hits > 0);
    iso_hints_destroy(&h);
}

/* ---- against a redis-server started here ---- */

static pid_t s_pid = -1;
static int s_port;
static rds_t *s_r;

static int s_setup(void **state) {
    (void)state;
    s_pid = redis_server_start(&s_port);
    if (s_pid > 0) {
        char url[64];
        snprintf(url, sizeof url, "127.0.0.1:%d", s_port);
        s_r = rds_new(url);
    }
    return 0;
}

static int s_teardown(void **state) {
    (void)state;
    rds_destroy(&s_r);
    redis_server_stop(s_pid);
    s_pid = -1;
    return 0;
}

#define REQUIRE_REDIS()                                                                            \
    do {                                                                                           \
        if (s_pid <= 0)                                                                            \
            skip();                                                                                \
    } while (0)

static void s_cmd(const char *fmt, const char *a, const char *b) {
    redisReply *rep = rds_command(s_r, fmt, a, b);
    assert_non_null(rep);
    freeReplyObject(rep);
}

static void s_session(const char *token, const char *user, const char *mfa, long long until) {
    redisReply *rep = rds_command(s_r,
                                  "HSET sess:%s user_id %s kind extranet session_id %s "
                                  "mfa_pending %s valid_until_ms %lld",
                                  token, user, SESS_1, mfa, until);
    assert_non_null(rep);
    freeReplyObject(rep);
}

static void s_flush(void) {
    redisReply *rep = rds_command(s_r, "FLUSHALL");
    assert_non_null(rep);
    freeReplyObject(rep);
}

/* Both paths of iso_lookup give the same answer for the same state. */
static void s_both(const char *gid, bool found, iso_group_answer_t group, iso_role_t role) {
    for (int hinted = 0; hinted < 2; hinted++) {
        iso_lookup_t l;
        assert_int_equal(iso_lookup(s_r, TOKEN_A, hinted ? USER_1 : NULL, gid, &l), 0);
        assert_int_equal(l.session_found, found);
        assert_int_equal(l.group, found ? group : ISO_GROUP_UNKNOWN);
        assert_int_equal(l.role, found && group == ISO_GROUP_MEMBER ? role : ISO_ROLE_NONE);
        if (found) {
            assert_string_equal(l.session.user_id, USER_1);
            assert_string_equal(l.session.session_id, SESS_1);
            assert_string_equal(l.session.kind, "extranet");
        }
    }
}

static void test_lookup(void **state) {
    (void)state;
    REQUIRE_REDIS();
    s_flush();
    long long later = util_now_ms() + 60000;
    s_both(GROUP_X, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE); /* no session */
    s_session(TOKEN_A, USER_1, "0", later);
    s_both(GROUP_X, true, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE); /* mem:{user} not cached */
    s_cmd("HSET mem:%s _ 1 %s member", USER_1, GROUP_Y);
    s_both(GROUP_X, true, ISO_GROUP_OUTSIDE, ISO_ROLE_NONE);
    s_both(GROUP_Y, true, ISO_GROUP_MEMBER, ISO_ROLE_MEMBER);
    /* any spelling of an id reads the lower-case key membership writes */
    s_both("5555AAAA-5555-4555-8555-55555555BBBB", true, ISO_GROUP_MEMBER, ISO_ROLE_MEMBER);
    iso_role_t role = ISO_ROLE_NONE;
    assert_int_equal(iso_cached_role(s_r, "11111111-1111-4111-8111-111111111111",
                                     "5555AAAA-5555-4555-8555-55555555BBBB", &role),
                     1);
    assert_int_equal(role, ISO_ROLE_MEMBER);
    assert_int_equal(iso_cached_role(s_r, USER_1, "not-a-group", &role), 0);
    s_cmd("HSET mem:%s %s boss", USER_1, GROUP_X); /* not a role membership writes */
    s_both(GROUP_X, true, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);

    /* no gid: the session alone */
    iso_lookup_t l;
    assert_int_equal(iso_lookup(s_r, TOKEN_A, NULL, NULL, &l), 0);
    assert_true(l.session_found);
    assert_false(l.session.mfa_pending);
    assert_int_equal(l.session.valid_until_ms, later);
    assert_int_equal(l.group, ISO_GROUP_UNKNOWN);

    /* a hint naming another user never answers for the group */
    s_cmd("HSET mem:%s _ 1 %s owner", USER_2, GROUP_X);
    assert_int_equal(iso_lookup(s_r, TOKEN_A, USER_2, GROUP_X, &l), 0);
    assert_true(l.session_found);
    assert_int_equal(l.group, ISO_GROUP_UNKNOWN);

    /* pending second factor is reported; a stale or malformed entry is no session */
    s_session(TOKEN_A, USER_1, "1", later);
    assert_int_equal(iso_lookup(s_r, TOKEN_A, NULL, NULL, &l), 0);
    assert_true(l.session_found && l.session.mfa_pending);
    s_session(TOKEN_A, USER_1, "0", util_now_ms() - 1);
    s_both(GROUP_Y, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);
    s_session(TOKEN_A, USER_1, "yes", later);
    s_both(GROUP_Y, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);
    s_session(TOKEN_A, "not-a-uuid", "0", later);
    s_both(GROUP_Y, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);
    s_session(TOKEN_A, USER_1, "0", later);
    s_cmd("HSET sess:%s valid_until_ms %s", TOKEN_A, "12x");
    s_both(GROUP_Y, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);
    s_cmd("HDEL sess:%s %s", TOKEN_A, "kind");
    s_both(GROUP_Y, false, ISO_GROUP_UNKNOWN, ISO_ROLE_NONE);

    /* mem:{user} of the wrong type (an error reply inside the round trip): no answer on
     * both paths, never a group answer */
    s_session(TOKEN_A, USER_1, "0", later);
    s_cmd("DEL mem:%s%s", USER_1, "");
    s_cmd("SET mem:%s %s", USER_1, "junk");
    for (int hinted = 0; hinted < 2; hinted++) {
        l.group = ISO_GROUP_MEMBER;
        assert_int_equal(iso_lookup(s_r, TOKEN_A, hinted ? USER_1 : NULL, GROUP_Y, &l), -EIO);
        assert_int_equal(l.group, ISO_GROUP_UNKNOWN);
    }
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_Y, &role), 0);
}

static void test_fill_and_invalidate(void **state) {
    (void)state;
    REQUIRE_REDIS();
    s_flush();
    arena_t *a = arena_new(1 << 20);
    assert_non_null(a);
    iso_role_t role = ISO_ROLE_OWNER;
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_X, &role), 0); /* miss */
    iso_grole_t *rows = NULL;
    size_t n = 0;
    assert_int_equal(iso_cached_groups(s_r, a, USER_1, &rows, &n), 0);

    iso_grole_t want[] = {{GROUP_X, "moderator"}, {GROUP_Y, "member"}};
    char lease[ISO_LEASE_LEN + 1], other[ISO_LEASE_LEN + 1];
    assert_true(iso_fill_lease(s_r, USER_1, lease));
    assert_false(iso_fill_lease(s_r, USER_1, other)); /* one fill at a time */
    assert_int_equal(iso_fill(s_r, a, USER_1, lease, want, 2, 60000), 1);
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_X, &role), 1);
    assert_int_equal(role, ISO_ROLE_MODERATOR);
    assert_int_equal(iso_cached_groups(s_r, a, USER_1, &rows, &n), 1);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(rows[i].role,
                            strcmp(rows[i].group_id, GROUP_X) ? "member" : "moderator");

    /* The race the lease exists for: a fill that read PostgreSQL, then a removal invalidated,
     * then the fill tries to write what it read: nothing is written. */
    assert_int_equal(iso_invalidate(s_r, USER_1), 0);
    assert_true(iso_fill_lease(s_r, USER_1, lease));
    assert_int_equal(iso_invalidate(s_r, USER_1), 0);
    assert_int_equal(iso_fill(s_r, a, USER_1, lease, want, 2, 60000), 0);
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_X, &role), 0);
    /* a stale lease cannot write over a newer fill's */
    assert_true(iso_fill_lease(s_r, USER_1, lease));
    assert_int_equal(iso_fill(s_r, a, USER_1, "0123456789abcdef0123456789abcdef", want, 2, 60000),
                     0);

    /* in no group: cached as such */
    assert_int_equal(iso_fill(s_r, a, USER_1, lease, NULL, 0, 60000), 1);
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_X, &role), 1);
    assert_int_equal(role, ISO_ROLE_NONE);
    assert_int_equal(iso_cached_groups(s_r, a, USER_1, &rows, &n), 1);
    assert_int_equal(n, 0);

    /* the services' check: cached answers without membership (no rpc given) */
    assert_int_equal(iso_role(s_r, NULL, NULL, 0, USER_1, GROUP_X, &role), 0);
    assert_int_equal(role, ISO_ROLE_NONE);
    assert_int_equal(iso_role(s_r, NULL, NULL, 0, USER_1, "not-a-uuid", &role), 0);
    assert_int_equal(role, ISO_ROLE_NONE);
    assert_int_equal(iso_role(s_r, NULL, NULL, 0, USER_2, GROUP_X, &role), -EIO); /* miss */
    assert_int_equal(iso_groups(s_r, NULL, a, NULL, 0, USER_2, &rows, &n), -EIO);
    s_cmd("HSET mem:%s _ 1 %s owner", USER_2, GROUP_Y);
    char upper[] = "5555AAAA-5555-4555-8555-55555555BBBB";
    assert_int_equal(iso_role(s_r, NULL, NULL, 0, USER_2, upper, &role), 0);
    assert_int_equal(role, ISO_ROLE_OWNER);
    assert_int_equal(iso_groups(s_r, NULL, a, NULL, 0, USER_2, &rows, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].group_id, GROUP_Y);
    /* an entry membership did not write is a miss */
    s_cmd("HSET mem:%s %s root", USER_2, GROUP_X);
    assert_int_equal(iso_cached_groups(s_r, a, USER_2, &rows, &n), 0);
    arena_destroy(&a);
}

static void test_redis_gone(void **state) {
    (void)state;
    REQUIRE_REDIS();
    s_session(TOKEN_A, USER_1, "0", util_now_ms() + 60000);
    s_cmd("HSET mem:%s _ 1 %s member", USER_1, GROUP_X);
    redis_server_stop(s_pid);
    s_pid = -1;
    iso_lookup_t l;
    assert_int_equal(iso_lookup(s_r, TOKEN_A, USER_1, GROUP_X, &l), -EIO);
    assert_int_equal(iso_lookup(s_r, TOKEN_A, NULL, GROUP_X, &l), -EIO);
    assert_int_equal(iso_lookup(s_r, TOKEN_A, NULL, NULL, &l), -EIO);
    assert_false(l.session_found);
    iso_role_t role = ISO_ROLE_OWNER;
    assert_int_equal(iso_cached_role(s_r, USER_1, GROUP_X, &role), 0);
    assert_int_equal(iso_role(s_r, NULL, NULL, 0, USER_1, GROUP_X, &role), -EIO);
    assert_int_equal(role, ISO_ROLE_NONE);
    char lease[ISO_LEASE_LEN + 1];
    assert_false(iso_fill_lease(s_r, USER_1, lease));
    assert_int_equal(iso_invalidate(s_r, USER_1), -EIO);
    assert_int_equal(iso_invalidate(NULL, USER_1), -EIO);
}

int main(void) {
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_hints),
        cmocka_unit_test(test_hints_threads),
    };
    const struct CMUnitTest redis[] = {
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_fill_and_invalidate),
        cmocka_unit_test(test_redis_gone),
    };
    int failed = cmocka_run_group_tests_name("iso", pure, NULL, NULL);
    return failed + cmocka_run_group_tests_name("iso_redis", redis, s_setup, s_teardown);
}
