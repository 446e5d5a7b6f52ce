/* expiry's SQL (store.h): one named statement per action on expiry.timers, text parameters only.
 * The claim is a single statement, so its SELECT ... FOR UPDATE SKIP LOCKED and the UPDATE that
 * marks the rows claimed commit together and the row locks last only that long. */
#include "store.h"

#include "extranet/audit.h"
#include "extranet/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* The SQL reads better laid out by hand. */
/* clang-format off */
const pg_stmt_t expiry_statements[] = {
    /* Upsert on the partial unique index; the WHERE makes a repeat with the same due_at a
     * no-op, and a move resets the retry state and drops the claim of a call in flight. */
    {"expiry_schedule",
     "INSERT INTO timers (kind, subject, due_at) VALUES ($1, $2, $3::timestamptz) "
     "ON CONFLICT (kind, subject) WHERE state = 'pending' DO UPDATE SET "
     "due_at = EXCLUDED.due_at, attempts = 0, next_attempt_at = now(), claim = NULL, "
     "last_error = NULL, updated_at = now() "
     "WHERE timers.due_at IS DISTINCT FROM EXCLUDED.due_at",
     3},
    {"expiry_cancel",
     "UPDATE timers SET state = 'cancelled', claim = NULL, updated_at = now() "
     "WHERE kind = $1 AND subject = $2 AND state = 'pending'",
     2},
    {"expiry_list",
     "SELECT id::text AS id, kind, subject, " TS("due_at") " AS due_at, state, attempts, "
     TS("next_attempt_at") " AS next_attempt_at, coalesce(last_error, '') AS last_error, "
     TS("created_at") " AS created_at, " TS("updated_at") " AS updated_at, "
     "coalesce(" TS("fired_at") ", '') AS fired_at FROM timers "
     "WHERE ($1::text = '' OR kind = $1::text) AND ($2::text = '' OR subject = $2::text) "
     "AND ($3::text = '' OR state = $3::text) "
     "ORDER BY due_at DESC, created_at DESC LIMIT $4::integer",
     4},
    /* SKIP LOCKED: a row another copy is claiming right now is left to it. A row another copy
     * claimed after our snapshot is re-checked under READ COMMITTED (its next_attempt_at has
     * moved into the future) and dropped, so one row is never claimed twice at once. */
    {"expiry_claim",
     "WITH due AS (SELECT id FROM timers WHERE state = 'pending' AND due_at <= now() "
     "AND next_attempt_at <= now() AND kind = ANY ($3::text[]) "
     "ORDER BY due_at LIMIT $1::integer "
     "FOR UPDATE SKIP LOCKED) "
     "UPDATE timers t SET claim = gen_random_uuid(), attempts = t.attempts + 1, "
     "next_attempt_at = now() + $2::bigint * interval '1 millisecond', updated_at = now() "
     "FROM due WHERE t.id = due.id "
     "RETURNING t.id::text AS id, t.claim::text AS claim, t.kind, t.subject, t.attempts",
     3},
    {"expiry_done",
     "UPDATE timers SET state = 'done', fired_at = now(), claim = NULL, last_error = $3, "
     "updated_at = now() WHERE id = $1::uuid AND claim = $2::uuid AND state = 'pending'",
     3},
    {"expiry_retry",
     "UPDATE timers SET claim = NULL, last_error = $4, "
     "next_attempt_at = now() + $3::bigint * interval '1 millisecond', updated_at = now() "
     "WHERE id = $1::uuid AND claim = $2::uuid AND state = 'pending'",
     4},
    {"expiry_release",
     "UPDATE timers SET claim = NULL, attempts = greatest(attempts - 1, 0), "
     "next_attempt_at = now(), updated_at = now() "
     "WHERE id = $1::uuid AND claim = $2::uuid AND state = 'pending'",
     2},
    AUDIT_PG_STMTS, /* timer.fired + the relay (extranet/audit.h) */
    {NULL, NULL, 0},
};
/* clang-format on */

int expiry_store_schedule(pg_t *pg, const char *kind, const char *subject, const char *due_at) {
    const char *p[3] = {kind, subject, due_at};
    return pg_exec(pg, "expiry_schedule", p, NULL);
}

int expiry_store_cancel(pg_t *pg, const char *kind, const char *subject) {
    const char *p[2] = {kind, subject};
    return pg_exec(pg, "expiry_cancel", p, NULL);
}

static int s_col_int(PGresult *res, int row, const char *name) {
    int c = PQfnumber(res, name);
    if (c < 0 || PQgetisnull(res, row, c))
        return 0;
    long v = strtol(PQgetvalue(res, row, c), NULL, 10);
    return v < 0 ? 0 : v > INT32_MAX ? INT32_MAX : (int)v;
}

static int s_timer_fill(arena_t *arena, PGresult *res, int row, Extranet__Expiry__TimerInfo *ti) {
    extranet__expiry__timer_info__init(ti);
    ti->id = pg_col_str(arena, res, row, "id");
    ti->kind = pg_col_str(arena, res, row, "kind");
    ti->subject = pg_col_str(arena, res, row, "subject");
    ti->due_at = pg_col_str(arena, res, row, "due_at");
    ti->state = pg_col_str(arena, res, row, "state");
    ti->attempts = s_col_int(res, row, "attempts");
    ti->next_attempt_at = pg_col_str(arena, res, row, "next_attempt_at");
    ti->last_error = pg_col_str(arena, res, row, "last_error");
    ti->created_at = pg_col_str(arena, res, row, "created_at");
    ti->updated_at = pg_col_str(arena, res, row, "updated_at");
    ti->fired_at = pg_col_str(arena, res, row, "fired_at");
    if (!ti->id || !ti->kind || !ti->subject || !ti->due_at || !ti->state || !ti->next_attempt_at ||
        !ti->last_error || !ti->created_at || !ti->updated_at || !ti->fired_at)
        return -ENOMEM;
    return 0;
}

int expiry_store_list(pg_t *pg, arena_t *arena, const char *kind, const char *subject,
                      const char *state, int limit, Extranet__Expiry__TimerInfo ***ret_timers,
                      size_t *ret_n) {
    *ret_timers = NULL;
    *ret_n = 0;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *p[4] = {kind, subject, state, lim};
    PGresult *res = NULL;
    int rc = pg_exec(pg, "expiry_list", p, &res);
    if (rc < 0)
        return rc;
    int n = PQntuples(res);
    Extranet__Expiry__TimerInfo **arr = NULL;
    if (n > 0) {
        arr = arena_alloc(arena, sizeof(Extranet__Expiry__TimerInfo *) * (size_t)n);
        Extranet__Expiry__TimerInfo *rows = arena_alloc(arena, sizeof(*rows) * (size_t)n);
        if (!arr || !rows) {
            rc = -ENOMEM;
            goto out;
        }
        for (int i = 0; i < n; i++) {
            arr[i] = &rows[i];
            rc = s_timer_fill(arena, res, i, arr[i]);
            if (rc < 0)
                goto out;
        }
    }
    *ret_timers = arr;
    *ret_n = (size_t)n;
out:
    PQclear(res);
    return rc;
}

/* Copies a column into a fixed buffer; false when missing, NULL or too long. */
static bool s_copy(PGresult *res, int row, const char *name, char *out, size_t outlen) {
    int c = PQfnumber(res, name);
    if (c < 0 || PQgetisnull(res, row, c))
        return false;
    const char *v = PQgetvalue(res, row, c);
    size_t len = strlen(v);
    if (len >= outlen)
        return false;
    memcpy(out, v, len + 1);
    return true;
}

int expiry_store_claim(pg_t *pg, int max, int64_t lease_ms, const char *kinds,
                       expiry_claim_t *ret_claims, int *ret_n) {
    *ret_n = 0;
    char lim[16], lease[24];
    snprintf(lim, sizeof lim, "%d", max);
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    const char *p[3] = {lim, lease, kinds};
    PGresult *res = NULL;
    int rc = pg_exec(pg, "expiry_claim", p, &res);
    if (rc < 0)
        return rc;
    int n = PQntuples(res);
    int out = 0;
    for (int i = 0; i < n && out < max; i++) {
        expiry_claim_t *c = &ret_claims[out];
        if (!s_copy(res, i, "id", c->id, sizeof c->id) ||
            !s_copy(res, i, "claim", c->claim, sizeof c->claim) ||
            !s_copy(res, i, "kind", c->kind, sizeof c->kind) ||
            !s_copy(res, i, "subject", c->subject, sizeof c->subject)) {
            /* Only Schedule writes rows and it validates kind and subject, so this is a row
             * written by hand. Its lease makes it due again later; say so once per claim. */
            log_warn("timer %s has an oversized kind or subject; skipped", PQgetvalue(res, i, 0));
            continue;
        }
        c->attempts = s_col_int(res, i, "attempts");
        out++;
    }
    PQclear(res);
    *ret_n = out;
    return 0;
}

/* Runs a finishing statement and reports whether it touched the row (same claim, pending). */
static int s_finish(pg_t *pg, const char *stmt, const char *const *p, bool *ret_applied) {
    PGresult *res = NULL;
    int rc = pg_exec(pg, stmt, p, &res);
    if (rc < 0)
        return rc;
    if (ret_applied)
        *ret_applied = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    return 0;
}

int expiry_store_done(pg_t *pg, const expiry_claim_t *c, const char *note, bool *ret_applied) {
    const char *p[3] = {c->id, c->claim, note};
    return s_finish(pg, "expiry_done", p, ret_applied);
}

int expiry_store_retry(pg_t *pg, const expiry_claim_t *c, int64_t delay_ms, const char *error,
                       bool *ret_applied) {
    char delay[24];
    snprintf(delay, sizeof delay, "%" PRId64, delay_ms);
    const char *p[4] = {c->id, c->claim, delay, error};
    return s_finish(pg, "expiry_retry", p, ret_applied);
}

int expiry_store_release(pg_t *pg, const expiry_claim_t *c, bool *ret_applied) {
    const char *p[2] = {c->id, c->claim};
    return s_finish(pg, "expiry_release", p, ret_applied);
}
