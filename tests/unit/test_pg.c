/* Tests of pg.c. Without a server: an unreachable PostgreSQL fails fast and bad schema names are
 * refused. With EXTRANET_TEST_PG (a libpq conninfo of a scratch database) also: migrations (once,
 * concurrently), SQLSTATE mapping, transactions, and the reconnect after a killed backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/pg.h"
#include "extranet/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
static int s_closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static const pg_stmt_t s_stmts[] = {
    {"item_insert", "INSERT INTO items (id, name, parent) VALUES ($1::int, $2, $3::int)", 3},
    {"item_get", "SELECT name FROM items WHERE id = $1::int", 1},
    {"item_count", "SELECT count(*) AS n FROM items", 0},
    {"backend_pid", "SELECT pg_backend_pid() AS pid", 0},
    {NULL, NULL, 0},
};

static const pg_migration_t s_migrations[] = {
    {1, "001_items",
     "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL UNIQUE,"
     " parent int REFERENCES items(id));"
     "CREATE INDEX items_parent ON items (parent);"},
    {2, "002_seed", "INSERT INTO items (id, name) VALUES (1, 'root');"},
    {0, NULL, NULL},
};

static void test_pg_unreachable_fails_fast(void **state) {
    (void)state;
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d dbname=x user=x connect_timeout=2", s_closed_port());
    int64_t t0 = util_mono_ms();
    pg_t *pg = pg_new(conninfo, "test", s_stmts);
    assert_null(pg);
    assert_int_equal(pg_migrate(conninfo, "test", s_migrations), -EIO);
    assert_true(util_mono_ms() - t0 < 2000);
    pg_destroy(&pg);
    pg_destroy(NULL);
}

static void test_pg_schema_name_refused(void **state) {
    (void)state;
    const char *bad[] = {"", "Upper", "1abc", "a-b", "a;drop", "a b", "\"q\"", NULL};
    for (int i = 0; bad[i]; i++) {
        assert_null(pg_new("host=127.0.0.1 port=1", bad[i], s_stmts));
        assert_int_equal(pg_migrate("host=127.0.0.1 port=1", bad[i], s_migrations), -EIO);
    }
    assert_null(pg_new("host=127.0.0.1 port=1", NULL, s_stmts));
}

/* Runs pg_new and pg_migrate on conninfo with stderr (the log) captured into buf. */
static void s_connect_captured(const char *conninfo, char *buf, size_t len) {
    char path[] = "/tmp/test_pg_log_XXXXXX";
    int tmp = mkstemp(path);
    assert_true(tmp >= 0);
    unlink(path);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(tmp, 2) >= 0);
    pg_t *pg = pg_new(conninfo, "test", s_stmts);
    int mrc = pg_migrate(conninfo, "test", s_migrations);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    assert_null(pg);
    assert_int_equal(mrc, -EIO);
    ssize_t n = pread(tmp, buf, len - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    close(tmp);
}

/* libpq's parse errors quote the conninfo (for a URI, the bad component or the whole string):
 * the log must say only that it is invalid, never the password. */
static void test_pg_malformed_conninfo_hides_password(void **state) {
    (void)state;
    /* bad percent-encoding in the password; unterminated IPv6 host; a key without "=" */
    const char *bad[] = {
        "postgresql://u:Sekr1tPw%zz@127.0.0.1:1/db",
        "postgresql://u:Sekr1tPw@[::1:1/db",
        "host=127.0.0.1 port=1 password=Sekr1tPw dbname",
        NULL,
    };
    for (int i = 0; bad[i]; i++) {
        char out[8192];
        s_connect_captured(bad[i], out, sizeof out);
        if (strstr(out, "Sekr1tPw"))
            fail_msg("password logged for \"%s\":\n%s", bad[i], out);
        assert_non_null(strstr(out, "not a valid conninfo"));
    }
    /* A well-formed conninfo that fails to connect names the server, not the password. */
    char ok[160], out[8192];
    snprintf(ok, sizeof ok, "postgresql://u:Sekr1tPw@127.0.0.1:%d/db?connect_timeout=2",
             s_closed_port());
    s_connect_captured(ok, out, sizeof out);
    assert_null(strstr(out, "not a valid conninfo"));
    assert_null(strstr(out, "Sekr1tPw"));
}

/* ---- against a real server (EXTRANET_TEST_PG) ---- */

static const char *s_conninfo;
static char s_schema[40];

static PGconn *s_raw(void) {
    PGconn *c = PQconnectdb(s_conninfo);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    return c;
}

static void s_raw_exec(const char *sql, const char *param) {
    PGconn *c = s_raw();
    const char *params[1] = {param};
    PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_TUPLES_OK && t != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

static int s_setup_real(void **state) {
    (void)state;
    s_conninfo = getenv("EXTRANET_TEST_PG");
    if (!s_conninfo || !*s_conninfo)
        return 0;
    char u[37];
    util_uuid_v4(u);
    snprintf(s_schema, sizeof s_schema, "t_%.8s", u);
    return 0;
}

static int s_teardown_real(void **state) {
    (void)state;
    if (s_conninfo && *s_conninfo && s_schema[0]) {
        char sql[96];
        snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", s_schema);
        s_raw_exec(sql, NULL);
    }
    return 0;
}

#define REQUIRE_PG()                                                                       \
    do {                                                                                   \
        if (!s_conninfo || !*s_conninfo)                                                   \
            skip();                                                                        \
    } while (0)

static void *s_migrate_thread(void *arg) {
    (void)arg;
    return (void *)(intptr_t)pg_migrate(s_conninfo, s_schema, s_migrations);
}

static void test_pg_migrate_concurrent_once(void **state) {
    (void)state;
    REQUIRE_PG();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, s_migrate_thread, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *rc = NULL;
        assert_int_equal(pthread_join(th[i], &rc), 0);
        assert_int_equal((intptr_t)rc, 0);
    }
    /* again: nothing left to apply (the seed row would otherwise collide) */
    assert_int_equal(pg_migrate(s_conninfo, s_schema, s_migrations), 0);

    PGconn *c = s_raw();
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT version, name FROM %s.schema_migrations ORDER BY version",
             s_schema);
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    assert_string_equal(PQgetvalue(r, 1, 1), "002_seed");
    PQclear(r);
    PQfinish(c);

    /* a failing migration is rolled back and reported, the earlier ones stay */
    const pg_migration_t more[] = {s_migrations[0], s_migrations[1],
                                   {3, "003_broken", "CREATE TABLE ok3 (x int); SELEC 1;"},
                                   {0, NULL, NULL}};
    assert_int_equal(pg_migrate(s_conninfo, s_schema, more), -EIO);
    c = s_raw();
    snprintf(sql, sizeof sql, "SELECT to_regclass('%s.ok3') IS NULL", s_schema);
    r = PQexec(c, sql);
    assert_string_equal(PQgetvalue(r, 0, 0), "t");
    PQclear(r);
    PQfinish(c);
}

static void test_pg_exec_and_errors(void **state) {
    (void)state;
    REQUIRE_PG();
    assert_int_equal(pg_migrate(s_conninfo, s_schema, s_migrations), 0);
    pg_t *pg = pg_new(s_conninfo, s_schema, s_stmts);
    assert_non_null(pg);
    assert_non_null(pg_conn(pg));

    const char *p2[3] = {"2", "two", "1"};
    assert_int_equal(pg_exec(pg, "item_insert", p2, NULL), 0);
    PGresult *res = NULL;
    const char *g[1] = {"2"};
    assert_int_equal(pg_exec(pg, "item_get", g, &res), 0);
    assert_non_null(res);
    assert_int_equal(PQntuples(res), 1);
    assert_string_equal(PQgetvalue(res, 0, PQfnumber(res, "name")), "two");
    PQclear(res);

    const char *dup[3] = {"3", "two", NULL}; /* name is unique */
    assert_int_equal(pg_exec(pg, "item_insert", dup, NULL), -EEXIST);
    const char *fk[3] = {"4", "four", "999"};
    assert_int_equal(pg_exec(pg, "item_insert", fk, NULL), -ENOENT);
    const char *garbage[3] = {"not-a-number", "x", NULL};
    res = (PGresult *)1;
    assert_int_equal(pg_exec(pg, "item_insert", garbage, &res), -EIO);
    assert_null(res);
    assert_int_equal(pg_exec(pg, "no_such_statement", NULL, NULL), -EIO);

    /* a transaction: rollback discards, commit keeps */
    assert_int_equal(pg_begin(pg), 0);
    const char *p5[3] = {"5", "five", NULL};
    assert_int_equal(pg_exec(pg, "item_insert", p5, NULL), 0);
    pg_rollback(pg);
    const char *g5[1] = {"5"};
    assert_int_equal(pg_exec(pg, "item_get", g5, &res), 0);
    assert_int_equal(PQntuples(res), 0);
    PQclear(res);
    assert_int_equal(pg_begin(pg), 0);
    assert_int_equal(pg_exec(pg, "item_insert", p5, NULL), 0);
    assert_int_equal(pg_commit(pg), 0);
    assert_int_equal(pg_exec(pg, "item_get", g5, &res), 0);
    assert_int_equal(PQntuples(res), 1);
    PQclear(res);

    /* COMMIT of a transaction that failed is a rollback, and says so */
    assert_int_equal(pg_begin(pg), 0);
    const char *p6[3] = {"6", "six", NULL};
    assert_int_equal(pg_exec(pg, "item_insert", p6, NULL), 0);
    assert_int_equal(pg_exec(pg, "item_insert", dup, NULL), -EEXIST);
    assert_int_equal(pg_commit(pg), -EIO);
    const char *g6[1] = {"6"};
    assert_int_equal(pg_exec(pg, "item_get", g6, &res), 0);
    assert_int_equal(PQntuples(res), 0);
    PQclear(res);
    pg_rollback(pg); /* safe outside a transaction */
    assert_int_equal(pg_commit(pg), -EIO);
    pg_destroy(&pg);
    assert_null(pg);
}

static char *s_backend_pid(pg_t *pg) {
    PGresult *res = NULL;
    assert_int_equal(pg_exec(pg, "backend_pid", NULL, &res), 0);
    char *pid = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return pid;
}

static void test_pg_reconnect_after_killed_backend(void **state) {
    (void)state;
    REQUIRE_PG();
    assert_int_equal(pg_migrate(s_conninfo, s_schema, s_migrations), 0);
    pg_t *pg = pg_new(s_conninfo, s_schema, s_stmts);
    assert_non_null(pg);
    char *pid = s_backend_pid(pg);
    /* waits (up to 5 s) until the backend is gone, so the loss is there to find before sending */
    s_raw_exec("SELECT pg_terminate_backend($1::int, 5000)", pid);
    /* outside a transaction: reconnects, re-prepares, and answers on a new backend */
    PGresult *res = NULL;
    assert_int_equal(pg_exec(pg, "item_count", NULL, &res), 0);
    PQclear(res);
    char *pid2 = s_backend_pid(pg);
    assert_string_not_equal(pid, pid2);

    /* inside a transaction: the loss is reported, never retried silently */
    assert_int_equal(pg_begin(pg), 0);
    s_raw_exec("SELECT pg_terminate_backend($1::int, 5000)", pid2);
    assert_int_equal(pg_exec(pg, "item_count", NULL, NULL), -EIO);
    pg_rollback(pg);
    assert_int_equal(pg_exec(pg, "item_count", NULL, NULL), 0);
    free(pid);
    free(pid2);
    pg_destroy(&pg);
}

/* A statement whose connection dies after it was sent may have taken effect: pg_exec must not
 * run it again. nextval() is not rolled back, so the sequence counts the runs. */
static void test_pg_no_rerun_after_lost_answer(void **state) {
    (void)state;
    REQUIRE_PG();
    assert_int_equal(pg_migrate(s_conninfo, s_schema, s_migrations), 0);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE SEQUENCE %s.runs", s_schema);
    s_raw_exec(sql, NULL);
    static const pg_stmt_t stmts[] = {
        {"run_and_die",
         "SELECT nextval('runs'), pg_terminate_backend(pg_backend_pid()), pg_sleep(5)", 0},
        {"runs", "SELECT last_value FROM runs", 0},
        {NULL, NULL, 0},
    };
    pg_t *pg = pg_new(s_conninfo, s_schema, stmts);
    assert_non_null(pg);
    int64_t t0 = util_mono_ms();
    assert_int_equal(pg_exec(pg, "run_and_die", NULL, NULL), -EIO);
    assert_true(util_mono_ms() - t0 < 4000);
    /* the next call reconnects (the loss was found) and sees exactly one run */
    PGresult *res = NULL;
    assert_int_equal(pg_exec(pg, "runs", NULL, &res), 0);
    assert_string_equal(PQgetvalue(res, 0, 0), "1");
    PQclear(res);
    pg_destroy(&pg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_unreachable_fails_fast),
        cmocka_unit_test(test_pg_schema_name_refused),
        cmocka_unit_test(test_pg_migrate_concurrent_once),
        cmocka_unit_test(test_pg_exec_and_errors),
        cmocka_unit_test(test_pg_malformed_conninfo_hides_password),
        cmocka_unit_test(test_pg_reconnect_after_killed_backend),
        cmocka_unit_test(test_pg_no_rerun_after_lost_answer),
    };
    return cmocka_run_group_tests(tests, s_setup_real, s_teardown_real);
}
