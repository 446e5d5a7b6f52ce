/* Tests of membership's invalidation outbox (services/membership/store.c) against a real
 * PostgreSQL (EXTRANET_TEST_PG; skipped without one): a change whose Redis DEL succeeded
 * deletes only the pending row at the version it queued, so a later change of the same user
 * whose DEL failed keeps its row for the tick. Before the version column, the earlier change's
 * delete removed the later one's row and a stale mem:{user} entry outlived a removal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/pg.h"
#include "extranet/util.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_conninfo;
static char s_schema[40];
static pg_t *s_pg;

static int s_setup(void **state) {
    (void)state;
    s_conninfo = getenv("EXTRANET_TEST_PG");
    if (!s_conninfo || !*s_conninfo)
        return 0;
    char u[37];
    util_uuid_v4(u);
    snprintf(s_schema, sizeof s_schema, "tm_%.8s", u);
    if (pg_migrate(s_conninfo, s_schema, service_migrations) != 0)
        return -1;
    s_pg = pg_new(s_conninfo, s_schema, membership_statements);
    return s_pg ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    pg_destroy(&s_pg);
    if (s_conninfo && *s_conninfo && s_schema[0]) {
        PGconn *c = PQconnectdb(s_conninfo);
        char sql[96];
        snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", s_schema);
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    }
    return 0;
}

static size_t s_batch(arena_t *a, const char *user, int64_t *ret_version) {
    char **ids = NULL;
    int64_t *v = NULL;
    size_t n = 0, hits = 0;
    assert_int_equal(store_pending_batch(s_pg, a, 100, &ids, &v, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(ids[i], user)) {
            hits++;
            *ret_version = v[i];
        }
    }
    return hits;
}

static void test_pending_done_keeps_a_later_change(void **state) {
    (void)state;
    if (!s_pg)
        skip();
    arena_t *a = arena_new(1 << 16);
    assert_non_null(a);
    char user[37];
    util_uuid_v4(user);
    int64_t va = 0, vb = 0, vt = 0;
    /* change A queues, then change B of the same user queues (B's DEL will fail) */
    assert_int_equal(store_pending_add(s_pg, user, &va), 0);
    assert_int_equal(store_pending_add(s_pg, user, &vb), 0);
    assert_true(vb > va);
    /* A's DEL succeeded: its delete must leave B's row */
    assert_int_equal(store_pending_done(s_pg, user, va), 0);
    assert_int_equal(s_batch(a, user, &vt), 1);
    assert_int_equal(vt, vb);
    /* the tick's DEL succeeded at B's version: now the row goes */
    assert_int_equal(store_pending_done(s_pg, user, vt), 0);
    assert_int_equal(s_batch(a, user, &vt), 0);
    /* a fresh change after that starts a new row */
    assert_int_equal(store_pending_add(s_pg, user, &va), 0);
    assert_int_equal(s_batch(a, user, &vt), 1);
    assert_int_equal(vt, va);
    assert_int_equal(store_pending_done(s_pg, user, va), 0);
    assert_int_equal(s_batch(a, user, &vt), 0);
    arena_destroy(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pending_done_keeps_a_later_change),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
