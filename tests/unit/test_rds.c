/* Tests of rds.c. Without a server: a closed port fails within the connect timeout and the
 * backoff makes the next call free. With redis-server on PATH (started here on a free port, as
 * hiredis' own tests do): commands, error replies, SELECT of a db, pipelines, the reconnect
 * after the server dropped our connection, and the timeout + backoff of a paused server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/rds.h"
#include "extranet/util.h"
#include "lib/redis_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int s_closed_port(void) {
    int port = redis_server_free_port();
    assert_true(port > 0);
    return port;
}

static void s_sleep_ms(int ms) {
    redis_server_sleep_ms(ms);
}

static void test_rds_closed_port(void **state) {
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%d", s_closed_port());
    rds_t *r = rds_new(url);
    assert_non_null(r);
    int64_t t0 = util_mono_ms();
    assert_null(rds_command(r, "PING"));
    assert_true(util_mono_ms() - t0 < 1000);
    /* within the backoff: no connect attempt at all */
    t0 = util_mono_ms();
    for (int i = 0; i < 100; i++)
        assert_null(rds_command(r, "GET %s", "k"));
    assert_true(util_mono_ms() - t0 < 100);
    assert_int_equal(rds_append(r, "PING"), -EIO);
    redisReply *rep[1];
    assert_int_equal(rds_pipeline(r, 1, rep), -EIO);
    rds_destroy(&r);
    assert_null(r);
    rds_destroy(&r);
    rds_destroy(NULL);
}

static void test_rds_bad_urls(void **state) {
    (void)state;
    const char *bad[] = {"", "redis://", "host:", "host:0", "host:70000", "host:12ab",
                         "redis://h:1/x", "[::1", ":6379", NULL};
    for (int i = 0; bad[i]; i++) {
        rds_t *r = rds_new(bad[i]);
        assert_non_null(r); /* NULL only on OOM */
        assert_null(rds_command(r, "PING"));
        rds_destroy(&r);
    }
}

/* ---- against a redis-server started here ---- */

static pid_t s_redis_pid = -1;
static int s_redis_port;

static int s_start_redis(void **state) {
    (void)state;
    s_redis_pid = redis_server_start(&s_redis_port);
    return 0;
}

static int s_stop_redis(void **state) {
    (void)state;
    redis_server_stop(s_redis_pid);
    return 0;
}

#define REQUIRE_REDIS()                                                                    \
    do {                                                                                   \
        if (s_redis_pid <= 0)                                                              \
            skip();                                                                        \
    } while (0)

static rds_t *s_client(const char *fmt) {
    char url[96];
    snprintf(url, sizeof url, fmt, s_redis_port);
    rds_t *r = rds_new(url);
    assert_non_null(r);
    return r;
}

static void test_rds_commands(void **state) {
    (void)state;
    REQUIRE_REDIS();
    rds_t *r = s_client("redis://127.0.0.1:%d");
    redisReply *rep = rds_command(r, "SET %s %b", "k1", "v\0x", (size_t)3);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    rep = rds_command(r, "GET %s", "k1");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, 3);
    assert_memory_equal(rep->str, "v\0x", 3);
    freeReplyObject(rep);

    /* an error reply is NULL, and the connection goes on */
    assert_null(rds_command(r, "INCR %s", "k1"));
    const char *argv[] = {"HSET", "h1", "f", "1"};
    rep = rds_commandargv(r, 4, argv, NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    rds_destroy(&r);
}

static void test_rds_select_db(void **state) {
    (void)state;
    REQUIRE_REDIS();
    rds_t *db3 = s_client("redis://127.0.0.1:%d/3");
    rds_t *db0 = s_client("127.0.0.1:%d");
    redisReply *rep = rds_command(db3, "SET %s %s", "only_in_3", "x");
    assert_non_null(rep);
    freeReplyObject(rep);
    rep = rds_command(db0, "EXISTS %s", "only_in_3");
    assert_non_null(rep);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = rds_command(db3, "EXISTS %s", "only_in_3");
    assert_non_null(rep);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    rds_destroy(&db3);
    rds_destroy(&db0);
}

static void test_rds_pipeline(void **state) {
    (void)state;
    REQUIRE_REDIS();
    rds_t *r = s_client("127.0.0.1:%d");
    redisReply *rep[3] = {0};
    assert_int_equal(rds_pipeline(r, 0, rep), 0);
    assert_int_equal(rds_append(r, "SET %s %s", "p1", "a"), 0);
    assert_int_equal(rds_append(r, "INCR %s", "p2"), 0);
    assert_int_equal(rds_append(r, "GET %s", "p1"), 0);
    assert_int_equal(rds_pipeline(r, 3, rep), 0);
    assert_int_equal(rep[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep[1]->integer, 1);
    assert_string_equal(rep[2]->str, "a");
    for (int i = 0; i < 3; i++)
        freeReplyObject(rep[i]);

    /* one error reply fails the whole pipeline, and the connection stays in step */
    assert_int_equal(rds_append(r, "INCR %s", "p2"), 0);
    assert_int_equal(rds_append(r, "INCR %s", "p1"), 0); /* not an integer */
    assert_int_equal(rds_pipeline(r, 2, rep), -EIO);
    redisReply *g = rds_command(r, "GET %s", "p2");
    assert_non_null(g);
    assert_string_equal(g->str, "2");
    freeReplyObject(g);

    /* a count that does not match what was appended is refused */
    assert_int_equal(rds_append(r, "PING"), 0);
    assert_int_equal(rds_pipeline(r, 2, rep), -EIO);
    g = rds_command(r, "PING");
    assert_non_null(g);
    assert_string_equal(g->str, "PONG");
    freeReplyObject(g);
    rds_destroy(&r);
}

static void test_rds_reconnects_after_kill(void **state) {
    (void)state;
    REQUIRE_REDIS();
    rds_t *r = s_client("127.0.0.1:%d");
    rds_t *admin = s_client("127.0.0.1:%d");
    redisReply *id = rds_command(r, "CLIENT ID");
    assert_non_null(id);
    long long first = id->integer;
    freeReplyObject(id);
    redisReply *k = rds_command(admin, "CLIENT KILL ID %lld", first);
    assert_non_null(k);
    assert_int_equal(k->integer, 1);
    freeReplyObject(k);
    /* the stale connection fails; this same call reconnects once and succeeds */
    id = rds_command(r, "CLIENT ID");
    assert_non_null(id);
    assert_true(id->integer != first);
    freeReplyObject(id);
    rds_destroy(&r);
    rds_destroy(&admin);
}

static void test_rds_paused_server_times_out_then_backs_off(void **state) {
    (void)state;
    REQUIRE_REDIS();
    rds_t *r = s_client("127.0.0.1:%d");
    redisReply *rep = rds_command(r, "PING");
    assert_non_null(rep);
    freeReplyObject(rep);
    assert_int_equal(kill(s_redis_pid, SIGSTOP), 0);
    int64_t t0 = util_mono_ms();
    rep = rds_command(r, "PING");
    int64_t took = util_mono_ms() - t0;
    kill(s_redis_pid, SIGCONT);
    assert_null(rep);
    assert_true(took >= 900 && took < 2000); /* the 1 s I/O timeout, once */
    t0 = util_mono_ms();
    assert_null(rds_command(r, "PING")); /* backing off: no wait at all */
    assert_true(util_mono_ms() - t0 < 50);
    /* after the backoff it connects again */
    int64_t deadline = util_mono_ms() + 3000;
    while (!(rep = rds_command(r, "PING")) && util_mono_ms() < deadline)
        s_sleep_ms(50);
    assert_non_null(rep);
    freeReplyObject(rep);
    rds_destroy(&r);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* as every service does: a dead peer is an error, not a signal */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rds_closed_port),
        cmocka_unit_test(test_rds_bad_urls),
        cmocka_unit_test(test_rds_commands),
        cmocka_unit_test(test_rds_select_db),
        cmocka_unit_test(test_rds_pipeline),
        cmocka_unit_test(test_rds_reconnects_after_kill),
        cmocka_unit_test(test_rds_paused_server_times_out_then_backs_off),
    };
    return cmocka_run_group_tests(tests, s_start_redis, s_stop_redis);
}
