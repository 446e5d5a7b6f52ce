/* Audit without loss (DESIGN.md §6): audit_record() writes one record into the calling
 * service's own audit_outbox table inside the caller's open transaction, and
 * audit_relay_tick() (from the service's tick) ships outbox rows to audit.Append in batches,
 * deleting them only after audit acknowledged them. Audit down = rows wait; nothing is lost.
 *
 * A service that audits (1) splices AUDIT_PG_STMTS into its pg_stmt_t table, (2) adds this
 * table in one of its migrations (same columns in every schema; unqualified names resolve to
 * the service's schema through search_path), (3) calls audit_relay_tick(t) from its tick:
 *
 *   CREATE TABLE audit_outbox (
 *       id            bigserial   PRIMARY KEY,          -- shipping order (oldest first)
 *       event_id      uuid        NOT NULL UNIQUE,      -- audit de-duplicates on it
 *       time          timestamptz NOT NULL DEFAULT now(),
 *       actor_id      text        NOT NULL DEFAULT '',
 *       actor_kind    text        NOT NULL DEFAULT '',
 *       actor_ip      text        NOT NULL DEFAULT '',
 *       actor_session text        NOT NULL DEFAULT '',
 *       action        text        NOT NULL,
 *       target_type   text        NOT NULL DEFAULT '',
 *       target_id     text        NOT NULL DEFAULT '',
 *       group_id      text        NOT NULL DEFAULT '',
 *       outcome       text        NOT NULL DEFAULT '',
 *       request_id    text        NOT NULL DEFAULT '',
 *       details       text        NOT NULL DEFAULT '{}'
 *   );
 *
 * Records name people by id only: no email, password, token, TOTP or recovery code, ever. */
#ifndef EXTRANET_AUDIT_H
#define EXTRANET_AUDIT_H
#include "envelope.pb-c.h"
#include "extranet/common.h"
#include "extranet/pg.h"

struct svc_thread;

#define AUDIT_BATCH_MAX   200 /* rows one Append carries */
#define AUDIT_FIELD_MAX   256 /* longest id/action/ip/outcome field accepted */
#define AUDIT_DETAILS_MAX 4096

/* clang-format off */
/* The statements audit_record and the relay run; splice into the service's table:
 *   const pg_stmt_t my_statements[] = { {...}, ..., AUDIT_PG_STMTS, {NULL, NULL, 0} }; */
#define AUDIT_PG_STMTS                                                                             \
    {"audit_outbox_insert",                                                                        \
     "INSERT INTO audit_outbox (event_id, actor_id, actor_kind, actor_ip, actor_session, action, "  \
     "target_type, target_id, group_id, outcome, request_id, details) VALUES ($1::uuid, $2, $3, "   \
     "$4, $5, $6, $7, $8, $9, $10, $11, $12)", 12},                                                \
    {"audit_outbox_batch",                                                                         \
     "SELECT event_id::text AS event_id, "                                                         \
     "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS time, actor_id, "   \
     "actor_kind, actor_ip, actor_session, action, target_type, target_id, group_id, outcome, "    \
     "request_id, details FROM audit_outbox ORDER BY id LIMIT $1::integer FOR UPDATE SKIP LOCKED", \
     1},                                                                                           \
    {"audit_outbox_delete",                                                                        \
     "DELETE FROM audit_outbox WHERE event_id = ANY ($1::uuid[])", 1}
/* clang-format on */

/* The kind of an actor as audit stores it: "anonymous", "admin", ... (static string). */
const char *audit_actor_kind(Extranet__ActorKind kind);

/* Inserts one record (new event id, time = now()) into audit_outbox through tx, which must be
 * inside the caller's open transaction (pg_begin) so the record commits or rolls back with the
 * action. actor (borrowed, may be NULL = anonymous) gives id, kind, ip and session. action is
 * required; target_type, target_id, group_id, outcome, request_id may be NULL (""); details_json
 * (NULL = "{}") must be a JSON object without secrets. Nothing is retained. Returns 0, -EINVAL
 * for a missing action, an over-long field or details that are not a JSON object, or
 * pg_exec's negative code. */
int audit_record(pg_t *tx, const Extranet__Actor *actor, const char *action,
                 const char *target_type, const char *target_id, const char *group_id,
                 const char *outcome, const char *request_id, const char *details_json) WUR;

/* Ships outbox rows to audit.Append: repeatedly takes up to AUDIT_BATCH_MAX rows (oldest first,
 * FOR UPDATE SKIP LOCKED, so several copies of a service ship disjoint rows), calls audit as
 * SYSTEM, and deletes the rows in the same transaction only after an OK. Stops after a short
 * batch, a failure, shutdown or ~2 s of work. After a failure (audit down) it waits 2 s before
 * trying again, so the caller's tick keeps doing its other work. A crash between audit's OK and
 * the delete ships the rows again; audit drops the duplicates by event id.
 * Call from the tick thread only (t->pg, t->rpc). Returns the number of records shipped, or a
 * negative code when the last attempt failed (logged). */
int audit_relay_tick(struct svc_thread *t);
#endif
