/* PostgreSQL through libpq: one connection per thread, every statement prepared by name at
 * connect (and again after a reconnect), parameterized only; plus the migration runner.
 * A service's statements live in its store.c as a pg_stmt_t table. */
#ifndef EXTRANET_PG_H
#define EXTRANET_PG_H
#include "extranet/arena.h"
#include "extranet/common.h"
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct { const char *name; const char *sql; int nparams; } pg_stmt_t;  /* {NULL} ends */
typedef struct { int version; const char *name; const char *sql; } pg_migration_t; /* {0} ends */

/* Embedded by extranet_migrations() in CMake from services/<name>/migrations/NNN_*.sql. */
extern const pg_migration_t service_migrations[];

typedef struct pg pg_t;

/* Connects with conninfo (a libpq URI or key=value string), sets search_path to schema and
 * prepares stmts (borrowed, must outlive the connection). NULL on failure (logged). */
pg_t *pg_new(const char *conninfo, const char *schema, const pg_stmt_t *stmts);
void pg_destroy(pg_t **self_p);
PGconn *pg_conn(pg_t *self);   /* borrowed; for COPY and the like */

/* Runs prepared statement `name` with text parameters (NULL = SQL NULL; count must match the
 * table). Reconnects once if the connection was lost outside a transaction. On success
 * *ret_res (may be NULL to discard) is a result the caller PQclear()s. Returns 0,
 * -EEXIST on unique violation (23505), -ENOENT on foreign-key violation (23503),
 * -EAGAIN on serialization failure/deadlock (40001/40P01), -EIO otherwise (logged). */
int pg_exec(pg_t *self, const char *name, const char *const *params, PGresult **ret_res) WUR;

/* pg_exec for store.c's: with need_row, a result without rows is -ENOENT (nothing to free). */
int pg_exec_row(pg_t *self, const char *name, const char *const *params, bool need_row,
                PGresult **ret_res) WUR;

int pg_begin(pg_t *self) WUR;
/* A read-only transaction on one snapshot (REPEATABLE READ READ ONLY): every statement until
 * pg_commit/pg_rollback sees the database as of its first statement, and none may write. */
int pg_begin_snapshot(pg_t *self) WUR;
int pg_commit(pg_t *self) WUR;
void pg_rollback(pg_t *self);   /* best effort; safe outside a transaction */

/* Reading a result's columns by name (PQfnumber), for every store.c.
 * pg_col_str: column col of row as a new string in arena a ("" for SQL NULL); NULL on OOM or
 * when the result has no such column (a programmer error the caller reports as a failure).
 * pg_col_bool: true only for a non-NULL 't'. pg_col_i64: 0 for NULL or a missing column. */
char *pg_col_str(arena_t *a, const PGresult *res, int row, const char *col);
bool pg_col_bool(const PGresult *res, int row, const char *col);
int64_t pg_col_i64(const PGresult *res, int row, const char *col);

/* Applies the migrations newer than those recorded in <schema>.schema_migrations, in order,
 * each in its own transaction, holding pg_advisory_lock(hashtext(schema)) throughout so several
 * starting copies migrate once. Creates the schema if missing. Returns 0 or -EIO (logged). */
int pg_migrate(const char *conninfo, const char *schema, const pg_migration_t *migrations) WUR;
#endif
