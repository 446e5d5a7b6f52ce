/* PostgreSQL through libpq: a connection with the service's statements prepared by name, one
 * reconnect on a lost connection outside a transaction, SQLSTATE -> error code mapping, and the
 * forward-only migration runner serialized by an advisory lock. Not thread-safe: one per thread. */
#include "extranet/pg.h"
#include "extranet/log.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Applied only when the conninfo names no connect_timeout of its own (seconds). */
#define PG_CONNECT_TIMEOUT "5"

struct pg {
    PGconn *conn;
    char *schema;
    const pg_stmt_t *stmts; /* borrowed */
    bool in_tx;             /* between pg_begin and pg_commit/pg_rollback */
    bool broken;            /* a reconnect left the session without its setup: redo it */
};

/* Schema names go into DDL (CREATE SCHEMA), which cannot take parameters: accept only
 * ^[a-z_][a-z0-9_]*$ and quote them anyway. */
static bool s_schema_valid(const char *s) {
    if (!s || !*s || strlen(s) > 63)
        return false;
    if (!((*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

/* The connection's own message without its trailing newline, for one-line logs. libpq's
 * connection errors name host, port, user and database but never the password; should one
 * ever contain it anyway, the message is withheld (secrets are never logged). */
static void s_log_conn_error(const char *what, PGconn *conn) {
    const char *m = conn ? PQerrorMessage(conn) : "out of memory";
    const char *pw = conn ? PQpass(conn) : NULL;
    if (pw && *pw && strstr(m, pw)) {
        log_error("postgres: %s: failed (libpq's message withheld: it contains the password)",
                  what);
        return;
    }
    size_t n = strlen(m);
    while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    log_error("postgres: %s: %.*s", what, (int)n, m);
}

/* A failed result's SQLSTATE and primary message; with no result (connection lost) the
 * connection's own message. */
static void s_log_result_error(const char *what, const PGresult *res, PGconn *conn) {
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m) {
        char buf[160];
        snprintf(buf, sizeof buf, "%.150s failed", what);
        s_log_conn_error(buf, conn);
        return;
    }
    log_error("postgres: %s failed: %s (sqlstate %s)", what, m, st ? st : "none");
}

/* Server notices (NOTICE: relation already exists, ...) become debug lines instead of raw text
 * on stderr, which would break the one-JSON-object-per-line log. */
static void s_notice(void *arg, const char *message) {
    (void)arg;
    size_t n = strlen(message);
    while (n > 0 && message[n - 1] == '\n')
        n--;
    log_debug("postgres: %.*s", (int)n, message);
}

static PGconn *s_connect(const char *conninfo) {
    /* libpq's parse errors quote the conninfo, password included: check it first and say
     * only that it is invalid. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        PQfreemem(perr); /* NULL-safe; never logged */
        log_error("postgres: EXTRANET_PG is not a valid conninfo");
        return NULL;
    }
    PQconninfoFree(opts);
    /* Keywords are processed in order and the expanded dbname (the caller's conninfo) overrides
     * earlier ones, so the default timeout yields to a connect_timeout the operator set. */
    const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *const vals[] = {PG_CONNECT_TIMEOUT, conninfo, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        s_log_conn_error("connect", conn);
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, s_notice, NULL);
    return conn;
}

static int s_set_search_path(PGconn *conn, const char *schema, bool local) {
    const char *params[1] = {schema};
    PGresult *res = PQexecParams(conn,
                                 local ? "SELECT set_config('search_path', $1, true)"
                                       : "SELECT set_config('search_path', $1, false)",
                                 1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        s_log_result_error("set search_path", res, conn);
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

/* search_path and every statement: run at connect and again after each reset, since prepared
 * statements and settings live in the server session. */
static int s_session_setup(pg_t *self) {
    if (s_set_search_path(self->conn, self->schema, false) < 0)
        return -EIO;
    for (const pg_stmt_t *s = self->stmts; s && s->name; s++) {
        PGresult *res = PQprepare(self->conn, s->name, s->sql, s->nparams, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            char what[160];
            snprintf(what, sizeof what, "prepare %s", s->name);
            s_log_result_error(what, res, self->conn);
            PQclear(res);
            return -EIO;
        }
        PQclear(res);
    }
    return 0;
}

pg_t *pg_new(const char *conninfo, const char *schema, const pg_stmt_t *stmts) {
    if (!conninfo || !s_schema_valid(schema)) {
        log_error("postgres: missing conninfo or invalid schema name");
        return NULL;
    }
    pg_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->schema = strdup(schema);
    self->stmts = stmts;
    if (!self->schema)
        goto fail;
    self->conn = s_connect(conninfo);
    if (!self->conn || s_session_setup(self) < 0)
        goto fail;
    return self;
fail:
    pg_destroy(&self);
    return NULL;
}

void pg_destroy(pg_t **self_p) {
    if (!self_p || !*self_p)
        return;
    pg_t *self = *self_p;
    PQfinish(self->conn);
    free(self->schema);
    free(self);
    *self_p = NULL;
}

PGconn *pg_conn(pg_t *self) {
    return self ? self->conn : NULL;
}

/* One reconnect attempt: PQreset reuses the original parameters. */
static int s_reconnect(pg_t *self) {
    log_warn("postgres: connection lost, reconnecting");
    self->broken = true;
    PQreset(self->conn);
    if (PQstatus(self->conn) != CONNECTION_OK) {
        s_log_conn_error("reconnect", self->conn);
        return -EIO;
    }
    if (s_session_setup(self) < 0)
        return -EIO;
    self->broken = false;
    return 0;
}

/* Reads, without blocking, what the server sent while the connection sat idle: a backend that
 * was terminated meanwhile left its FATAL message and end-of-file, and reading them turns the
 * connection BAD now, before a statement is sent into it (pg_exec retries only then). */
static void s_probe(pg_t *self) {
    for (int i = 0; i < 8 && PQstatus(self->conn) == CONNECTION_OK; i++) {
        struct pollfd p = {.fd = PQsocket(self->conn), .events = POLLIN};
        if (p.fd < 0 || poll(&p, 1, 0) <= 0)
            return;
        if (!PQconsumeInput(self->conn))
            return; /* read error or EOF: the connection is BAD now */
    }
}

/* The connection needs a reconnect before use: lost, or set up only halfway. */
static bool s_needs_reconnect(pg_t *self) {
    if (!self->broken)
        s_probe(self);
    return self->broken || PQstatus(self->conn) == CONNECTION_BAD;
}

static const pg_stmt_t *s_stmt_find(const pg_t *self, const char *name) {
    for (const pg_stmt_t *s = self->stmts; s && s->name; s++)
        if (!strcmp(s->name, name))
            return s;
    return NULL;
}

/* Maps a failed result to the codes of pg.h; expected conflicts are logged at debug only. */
static int s_result_error(const char *what, const PGresult *res, PGconn *conn) {
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (st && !strcmp(st, "23505")) {
        log_debug("postgres: %s: unique violation", what);
        return -EEXIST;
    }
    if (st && !strcmp(st, "23503")) {
        log_debug("postgres: %s: foreign key violation", what);
        return -ENOENT;
    }
    if (st && (!strcmp(st, "40001") || !strcmp(st, "40P01"))) {
        log_debug("postgres: %s: serialization failure (%s)", what, st);
        return -EAGAIN;
    }
    s_log_result_error(what, res, conn);
    return -EIO;
}

static bool s_result_ok(const PGresult *res) {
    ExecStatusType t = PQresultStatus(res);
    return t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK;
}

int pg_exec(pg_t *self, const char *name, const char *const *params, PGresult **ret_res) {
    if (ret_res)
        *ret_res = NULL;
    if (!self || !name)
        return -EINVAL;
    const pg_stmt_t *stmt = s_stmt_find(self, name);
    if (!stmt) {
        log_error("postgres: no prepared statement named %s", name);
        return -EIO;
    }
    /* The one safe retry: a connection found lost before sending. Once the statement was
     * sent, a lost connection may have lost only the answer (the statement may have
     * committed), so that is -EIO and the next call reconnects. */
    if (s_needs_reconnect(self)) {
        if (self->in_tx)
            return -EIO; /* the transaction is gone with the connection */
        if (s_reconnect(self) < 0)
            return -EIO;
    }
    PGresult *res = PQexecPrepared(self->conn, name, stmt->nparams, params, NULL, NULL, 0);
    if (s_result_ok(res)) {
        if (ret_res)
            *ret_res = res;
        else
            PQclear(res);
        return 0;
    }
    int rc;
    if (PQstatus(self->conn) == CONNECTION_BAD) {
        s_log_result_error(name, res, self->conn);
        rc = -EIO;
    } else {
        rc = s_result_error(name, res, self->conn);
    }
    PQclear(res);
    return rc;
}

/* Runs a fixed command (no parameters) such as BEGIN; returns its result or NULL. */
static PGresult *s_exec_simple(pg_t *self, const char *sql) {
    return PQexec(self->conn, sql);
}

/* BEGIN (sql: a fixed BEGIN command): reconnects once when the connection was lost. */
static int s_begin(pg_t *self, const char *sql) {
    if (!self)
        return -EINVAL;
    if (self->in_tx) {
        log_error("postgres: pg_begin inside a transaction");
        return -EIO;
    }
    bool retried = false;
    if (s_needs_reconnect(self)) {
        retried = true;
        if (s_reconnect(self) < 0)
            return -EIO;
    }
    for (;;) {
        PGresult *res = s_exec_simple(self, sql);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            PQclear(res);
            self->in_tx = true;
            return 0;
        }
        PQclear(res);
        if (PQstatus(self->conn) == CONNECTION_BAD && !retried) {
            retried = true;
            if (s_reconnect(self) < 0)
                return -EIO;
            continue;
        }
        s_log_conn_error("BEGIN", self->conn);
        return -EIO;
    }
}

int pg_begin(pg_t *self) {
    return s_begin(self, "BEGIN");
}

int pg_begin_snapshot(pg_t *self) {
    return s_begin(self, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
}

int pg_commit(pg_t *self) {
    if (!self)
        return -EINVAL;
    if (!self->in_tx) {
        log_error("postgres: pg_commit outside a transaction");
        return -EIO;
    }
    self->in_tx = false;
    PGresult *res = s_exec_simple(self, "COMMIT");
    int rc = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = s_result_error("COMMIT", res, self->conn);
    } else if (strcmp(PQcmdStatus(res), "COMMIT") != 0) {
        /* COMMIT of a failed transaction succeeds as a ROLLBACK: nothing was written. */
        log_error("postgres: COMMIT of an aborted transaction rolled back");
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

void pg_rollback(pg_t *self) {
    if (!self)
        return;
    bool was = self->in_tx;
    self->in_tx = false;
    if (PQstatus(self->conn) != CONNECTION_OK)
        return;
    if (!was && PQtransactionStatus(self->conn) == PQTRANS_IDLE)
        return;
    PGresult *res = s_exec_simple(self, "ROLLBACK");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        s_log_result_error("ROLLBACK", res, self->conn);
    PQclear(res);
}

/* ---- migrations ---- */

static int s_exec_params_ok(PGconn *conn, const char *what, const char *sql, int n,
                            const char *const *params, ExecStatusType want) {
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != want) {
        s_log_result_error(what, res, conn);
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

static int s_exec_ok(PGconn *conn, const char *what, const char *sql) {
    PGresult *res = PQexec(conn, sql);
    int rc = 0;
    ExecStatusType t = PQresultStatus(res);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK && t != PGRES_EMPTY_QUERY) {
        s_log_result_error(what, res, conn);
        rc = -EIO;
    }
    PQclear(res);
    return rc;
}

/* 1 when the schema exists, 0 when not, -EIO on error. */
static int s_schema_exists(PGconn *conn, const char *schema) {
    const char *params[1] = {schema};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, NULL,
                                 params, NULL, NULL, 0);
    int rc;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        s_log_result_error("look up schema", res, conn);
        rc = -EIO;
    } else {
        rc = PQntuples(res) > 0 ? 1 : 0;
    }
    PQclear(res);
    return rc;
}

/* 1 when version is recorded, 0 when not, -EIO on error. */
static int s_migration_applied(PGconn *conn, const char *table, int version) {
    char sql[512], v[16];
    snprintf(sql, sizeof sql, "SELECT 1 FROM %s WHERE version = $1::int", table);
    snprintf(v, sizeof v, "%d", version);
    const char *params[1] = {v};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    int rc;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        s_log_result_error("read schema_migrations", res, conn);
        rc = -EIO;
    } else {
        rc = PQntuples(res) > 0 ? 1 : 0;
    }
    PQclear(res);
    return rc;
}

static int s_migration_apply(PGconn *conn, const char *schema, const char *table,
                             const pg_migration_t *m) {
    char what[200], sql[512], v[16];
    snprintf(what, sizeof what, "migration %s.%s", schema, m->name ? m->name : "?");
    if (s_exec_ok(conn, "BEGIN", "BEGIN") < 0)
        return -EIO;
    /* Local to this transaction: the migration's unqualified names land in the schema. */
    if (s_set_search_path(conn, schema, true) < 0)
        goto fail;
    if (s_exec_ok(conn, what, m->sql ? m->sql : "") < 0)
        goto fail;
    snprintf(sql, sizeof sql, "INSERT INTO %s (version, name) VALUES ($1::int, $2)", table);
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[2] = {v, m->name ? m->name : ""};
    if (s_exec_params_ok(conn, "record migration", sql, 2, params, PGRES_COMMAND_OK) < 0)
        goto fail;
    PGresult *res = PQexec(conn, "COMMIT");
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK && !strcmp(PQcmdStatus(res), "COMMIT");
    if (!ok)
        s_log_result_error(what, res, conn);
    PQclear(res);
    if (!ok)
        return -EIO;
    log_info("applied %s", what);
    return 0;
fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -EIO;
}

int pg_migrate(const char *conninfo, const char *schema, const pg_migration_t *migrations) {
    if (!conninfo || !s_schema_valid(schema)) {
        log_error("postgres: migrate: missing conninfo or invalid schema name");
        return -EIO;
    }
    PGconn *conn = s_connect(conninfo);
    if (!conn)
        return -EIO;
    int rc = -EIO;
    char *qschema = NULL;
    char table[160], sql[512];
    bool locked = false;
    const char *lock_params[1] = {schema};

    /* Held for the whole run (session lock) so concurrent starters migrate one at a time;
     * PQfinish releases it too should we leave early. */
    if (s_exec_params_ok(conn, "advisory lock", "SELECT pg_advisory_lock(hashtext($1))", 1,
                         lock_params, PGRES_TUPLES_OK) < 0)
        goto out;
    locked = true;

    qschema = PQescapeIdentifier(conn, schema, strlen(schema));
    if (!qschema) {
        s_log_conn_error("escape schema", conn);
        goto out;
    }
    /* CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists;
     * a deployment creates each service's schema beforehand (deploy/postgres/db-init.sh) and
     * grants no such right, so only a missing schema is created. */
    int exists = s_schema_exists(conn, schema);
    if (exists < 0)
        goto out;
    if (!exists) {
        snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", qschema);
        if (s_exec_ok(conn, "create schema", sql) < 0)
            goto out;
    }
    snprintf(table, sizeof table, "%s.schema_migrations", qschema);
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s (version int PRIMARY KEY, name text NOT NULL, "
             "applied_at timestamptz NOT NULL DEFAULT now())",
             table);
    if (s_exec_ok(conn, "create schema_migrations", sql) < 0)
        goto out;

    int last = 0;
    for (const pg_migration_t *m = migrations; m && m->version; m++) {
        if (m->version <= last) {
            log_error("postgres: migrations of %s out of order at %d", schema, m->version);
            goto out;
        }
        last = m->version;
        int applied = s_migration_applied(conn, table, m->version);
        if (applied < 0)
            goto out;
        if (applied == 0 && s_migration_apply(conn, schema, table, m) < 0)
            goto out;
    }
    rc = 0;
out:
    /* A failed unlock is only logged: PQfinish below ends the session and its lock. */
    if (locked)
        (void)s_exec_params_ok(conn, "advisory unlock", "SELECT pg_advisory_unlock(hashtext($1))",
                               1, lock_params, PGRES_TUPLES_OK);
    PQfreemem(qschema);
    PQfinish(conn);
    return rc;
}

char *pg_col_str(arena_t *a, const PGresult *res, int row, const char *col) {
    int c = PQfnumber(res, col);
    if (c < 0)
        return NULL;
    return arena_strdup(a, PQgetisnull(res, row, c) ? "" : PQgetvalue(res, row, c));
}

bool pg_col_bool(const PGresult *res, int row, const char *col) {
    int c = PQfnumber(res, col);
    return c >= 0 && !PQgetisnull(res, row, c) && PQgetvalue(res, row, c)[0] == 't';
}

int64_t pg_col_i64(const PGresult *res, int row, const char *col) {
    int c = PQfnumber(res, col);
    if (c < 0 || PQgetisnull(res, row, c))
        return 0;
    const char *v = PQgetvalue(res, row, c);
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0') {
        log_error("column %s: \"%.32s\" is not a 64-bit integer", col, v);
        return 0;
    }
    return n;
}

int pg_exec_row(pg_t *self, const char *name, const char *const *params, bool need_row,
                PGresult **ret_res) {
    PGresult *res = NULL;
    int rc = pg_exec(self, name, params, &res);
    if (rc != 0)
        return rc;
    if (need_row && PQntuples(res) == 0) {
        PQclear(res);
        return -ENOENT;
    }
    if (ret_res)
        *ret_res = res;
    else
        PQclear(res);
    return 0;
}
