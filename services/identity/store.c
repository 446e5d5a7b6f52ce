/* identity's SQL: the statement table prepared on every connection, and the typed wrappers
 * of store.h. Columns are read by name (PQfnumber); every result is PQclear'ed here. */
#include "store.h"
#include "extranet/audit.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "totp.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define USER_COLS                                                                                  \
    "u.id::text AS id, u.email, u.display_name, u.kind, u.status, "                                \
    "coalesce(rfc3339(u.expires_at), '') AS expires_at, "                                          \
    "EXISTS (SELECT 1 FROM mfa m WHERE m.user_id = u.id AND m.confirmed) AS mfa_enabled, "         \
    "rfc3339(u.created_at) AS created_at, rfc3339(u.updated_at) AS updated_at, "                   \
    "u.password_hash, "                                                                            \
    "(u.status = 'active' AND (u.expires_at IS NULL OR u.expires_at > now())) AS usable "

#define REVOKE_TAIL                                                                                \
    "RETURNING id, token_hash), "                                                                  \
    "p AS (INSERT INTO pending_invalidations (token_hash) SELECT token_hash FROM d "               \
    "      ON CONFLICT DO NOTHING) "                                                               \
    "SELECT id::text AS id, token_hash FROM d"

const pg_stmt_t identity_statements[] = {
    {"user_by_email", "SELECT " USER_COLS "FROM users u WHERE lower(u.email) = lower($1)", 1},
    {"user_by_id", "SELECT " USER_COLS "FROM users u WHERE u.id = $1::uuid", 1},
    {"user_insert",
     "INSERT INTO users (email, display_name, kind, password_hash, expires_at) "
     "VALUES (lower($1), $2, $3, $4, date_trunc('second', $5::timestamptz)) "
     "RETURNING id::text AS id",
     5},
    /* Held until the transaction ends: starting copies with different admin emails take turns,
     * so the NOT EXISTS below sees the other's committed admin (one bootstrap admin). */
    {"admin_first_lock", "SELECT pg_advisory_xact_lock(hashtext('extranet.identity.admin_first'))",
     0},
    {"admin_first",
     "INSERT INTO users (email, display_name, kind, password_hash) "
     "SELECT lower($1), $2, 'admin', $3 WHERE NOT EXISTS (SELECT 1 FROM users WHERE kind = "
     "'admin') "
     "ON CONFLICT DO NOTHING RETURNING id::text AS id",
     3},
    {"user_set_password",
     "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1::uuid RETURNING id", 2},
    /* Only over the hash that was verified: a password changed meanwhile stays changed. */
    {"user_rehash_password",
     "UPDATE users SET password_hash = $2 WHERE id = $1::uuid AND password_hash = $3 "
     "RETURNING id",
     3},
    {"user_update",
     "UPDATE users SET display_name = coalesce($2, display_name), status = coalesce($3, status), "
     "expires_at = CASE WHEN $5::boolean THEN NULL "
     "                  WHEN $4::timestamptz IS NOT NULL THEN date_trunc('second', "
     "$4::timestamptz) "
     "                  ELSE expires_at END, "
     "updated_at = now() WHERE id = $1::uuid RETURNING id",
     5},
    {"user_deactivate",
     "UPDATE users SET status = 'deactivated', updated_at = now() "
     "WHERE id = $1::uuid AND status <> 'deactivated' "
     "AND (NOT $2::boolean OR (expires_at IS NOT NULL AND expires_at <= now())) RETURNING id",
     2},
    {"user_transfer",
     "UPDATE users SET kind = 'employee', updated_at = now() "
     "WHERE id = $1::uuid AND kind = 'extranet' RETURNING id",
     1},
    {"users_list",
     "SELECT " USER_COLS "FROM users u "
     "WHERE ($1 = '' OR lower(u.email) > $1) AND ($2 = '' OR u.kind = $2) "
     "AND ($3 = '' OR u.status = $3) "
     "AND ($4 = '' OR strpos(lower(u.email), lower($4)) > 0 "
     "     OR strpos(lower(u.display_name), lower($4)) > 0) "
     "ORDER BY lower(u.email) LIMIT $5::integer",
     5},
    {"users_by_ids", "SELECT " USER_COLS "FROM users u WHERE u.id = ANY ($1::uuid[])", 1},

    {"session_insert",
     "INSERT INTO sessions (token_hash, user_id, client_ip, idle_until, max_until) "
     "VALUES ($1, $2::uuid, $3, now() + make_interval(secs => least($4::integer, $5::integer)), "
     "        now() + make_interval(secs => $5::integer)) RETURNING id::text AS id",
     5},
    {"session_auth",
     "SELECT s.id::text AS session_id, u.id::text AS user_id, u.kind, "
     "(u.kind = 'extranet' AND p.extranet_mfa_required AND NOT EXISTS "
     "   (SELECT 1 FROM mfa m WHERE m.user_id = u.id AND m.confirmed)) AS mfa_pending, "
     "(extract(epoch FROM least(s.idle_until, s.max_until, u.expires_at)) * 1000)::bigint "
     "   AS valid_until_ms, "
     "(s.last_seen_at < now() - interval '30 seconds') AS stale "
     "FROM sessions s JOIN users u ON u.id = s.user_id CROSS JOIN policy p "
     "WHERE s.token_hash = $1 AND u.status = 'active' "
     "AND (u.expires_at IS NULL OR u.expires_at > now()) "
     "AND s.idle_until > now() AND s.max_until > now()",
     1},
    {"session_touch",
     "UPDATE sessions s SET last_seen_at = now(), "
     "idle_until = least(now() + make_interval(secs => $2::integer), s.max_until) "
     "FROM users u WHERE s.id = $1::uuid AND u.id = s.user_id "
     "RETURNING (extract(epoch FROM least(s.idle_until, s.max_until, u.expires_at)) * 1000)"
     "::bigint AS valid_until_ms",
     2},
    {"sessions_list",
     "SELECT s.id::text AS id, rfc3339(s.created_at) AS created_at, "
     "rfc3339(s.last_seen_at) AS last_seen_at, "
     "rfc3339(least(s.idle_until, s.max_until)) AS expires_at, s.client_ip, "
     "(u.kind = 'extranet' AND p.extranet_mfa_required AND NOT EXISTS "
     "   (SELECT 1 FROM mfa m WHERE m.user_id = u.id AND m.confirmed)) AS mfa_pending "
     "FROM sessions s JOIN users u ON u.id = s.user_id CROSS JOIN policy p "
     "WHERE s.user_id = $1::uuid AND s.idle_until > now() AND s.max_until > now() "
     "ORDER BY s.created_at DESC LIMIT 200",
     1},
    {"session_revoke_one",
     "WITH d AS (DELETE FROM sessions WHERE id = $2::uuid AND user_id = $1::uuid " REVOKE_TAIL, 2},
    {"session_revoke_all", "WITH d AS (DELETE FROM sessions WHERE user_id = $1::uuid " REVOKE_TAIL,
     1},
    {"session_revoke_others",
     "WITH d AS (DELETE FROM sessions WHERE user_id = $1::uuid AND id <> $2::uuid " REVOKE_TAIL, 2},
    {"session_invalidate_user",
     "INSERT INTO pending_invalidations (token_hash) "
     "SELECT token_hash FROM sessions WHERE user_id = $1::uuid "
     "ON CONFLICT (token_hash) DO UPDATE SET attempts = pending_invalidations.attempts "
     "RETURNING '' AS id, token_hash",
     1},
    {"session_invalidate_extranet",
     "INSERT INTO pending_invalidations (token_hash) "
     "SELECT s.token_hash FROM sessions s JOIN users u ON u.id = s.user_id "
     "WHERE u.kind = 'extranet' "
     "ON CONFLICT (token_hash) DO UPDATE SET attempts = pending_invalidations.attempts "
     "RETURNING '' AS id, token_hash",
     0},
    {"pending_done", "DELETE FROM pending_invalidations WHERE token_hash = ANY ($1::text[])", 1},
    {"pending_batch",
     "UPDATE pending_invalidations SET attempts = attempts + 1 WHERE token_hash IN "
     "(SELECT token_hash FROM pending_invalidations ORDER BY created_at LIMIT $1::integer "
     " FOR UPDATE SKIP LOCKED) RETURNING '' AS id, token_hash",
     1},
    {"sessions_cleanup",
     "DELETE FROM sessions WHERE idle_until < now() - interval '1 hour' "
     "OR max_until < now() - interval '1 hour'",
     0},
    {"mfa_tokens_cleanup", "DELETE FROM mfa_tokens WHERE expires_at < now()", 0},

    {"mfa_token_insert",
     "INSERT INTO mfa_tokens (token_hash, user_id, client_ip, expires_at) "
     "VALUES ($1, $2::uuid, $3, now() + interval '5 minutes')",
     3},
    {"mfa_token_try",
     "UPDATE mfa_tokens SET tries = tries + 1 "
     "WHERE token_hash = $1 AND expires_at > now() AND tries < 5 "
     "RETURNING user_id::text AS user_id, tries",
     1},
    {"mfa_token_take", "DELETE FROM mfa_tokens WHERE token_hash = $1 RETURNING user_id", 1},
    {"mfa_get", "SELECT secret_enc, confirmed, last_step FROM mfa WHERE user_id = $1::uuid", 1},
    {"mfa_enroll",
     "INSERT INTO mfa (user_id, secret_enc) VALUES ($1::uuid, $2) "
     "ON CONFLICT (user_id) DO UPDATE SET secret_enc = EXCLUDED.secret_enc, last_step = 0, "
     "created_at = now() WHERE NOT mfa.confirmed RETURNING user_id",
     2},
    {"mfa_use_step",
     "UPDATE mfa SET last_step = $2::bigint "
     "WHERE user_id = $1::uuid AND confirmed AND last_step < $2::bigint RETURNING user_id",
     2},
    {"mfa_confirm",
     "UPDATE mfa SET confirmed = true, confirmed_at = now(), last_step = $3::bigint "
     "WHERE user_id = $1::uuid AND NOT confirmed AND secret_enc = $2 AND last_step < $3::bigint "
     "RETURNING user_id",
     3},
    {"mfa_delete",
     "WITH r AS (DELETE FROM recovery_codes WHERE user_id = $1::uuid) "
     "DELETE FROM mfa WHERE user_id = $1::uuid",
     1},
    {"recovery_delete", "DELETE FROM recovery_codes WHERE user_id = $1::uuid", 1},
    {"recovery_insert",
     "INSERT INTO recovery_codes (user_id, salt, hash) "
     "SELECT $1::uuid, s, h FROM unnest($2::text[], $3::text[]) AS t (s, h)",
     3},
    {"recovery_unused",
     "SELECT id::text AS id, salt, hash FROM recovery_codes "
     "WHERE user_id = $1::uuid AND used_at IS NULL",
     1},
    {"recovery_use",
     "UPDATE recovery_codes SET used_at = now() WHERE id = $1::bigint AND used_at IS NULL "
     "RETURNING id",
     1},

    {"login_wait",
     "SELECT greatest(0, ceil(extract(epoch FROM next_at - now())))::integer AS wait "
     "FROM login_failures WHERE account = $1",
     1},
    /* Failures older than an hour are forgotten; from the 6th failure on each one doubles
     * the wait: 1 s, 2 s, 4 s ... capped at 15 minutes. */
    {"login_failed",
     "INSERT INTO login_failures AS f (account, failures) VALUES ($1, 1) "
     "ON CONFLICT (account) DO UPDATE SET "
     "failures = CASE WHEN f.updated_at < now() - interval '1 hour' THEN 1 "
     "                ELSE f.failures + 1 END, "
     "next_at = now() + make_interval(secs => CASE "
     "    WHEN f.updated_at < now() - interval '1 hour' OR f.failures + 1 <= 5 THEN 0 "
     "    ELSE least(900, power(2, least(f.failures + 1 - 6, 20)))::integer END), "
     "updated_at = now()",
     1},
    {"login_ok", "DELETE FROM login_failures WHERE account = $1", 1},
    {"login_failures_cleanup",
     "DELETE FROM login_failures WHERE updated_at < now() - interval '1 day'", 0},
    {"policy_get", "SELECT extranet_mfa_required, extranet_public_links_allowed FROM policy", 0},
    {"policy_set",
     "UPDATE policy SET extranet_mfa_required = $1::boolean, "
     "extranet_public_links_allowed = $2::boolean, updated_at = now()",
     2},

    {"mail_enqueue", "INSERT INTO mail_outbox (rcpt, subject, body) VALUES ($1, $2, $3)", 3},
    {"mail_claim",
     "UPDATE mail_outbox SET attempts = attempts + 1, "
     "next_at = now() + least(interval '1 hour', interval '30 seconds' * (attempts + 1) * "
     "(attempts + 1)) "
     "WHERE id IN (SELECT id FROM mail_outbox WHERE next_at <= now() ORDER BY id "
     "             LIMIT $1::integer FOR UPDATE SKIP LOCKED) "
     "RETURNING id::text AS id, rcpt, subject, body, attempts",
     1},
    {"mail_delete", "DELETE FROM mail_outbox WHERE id = $1::bigint", 1},
    /* The user's expires_at as written in the caller's transaction. The tick leaves the row
     * alone for $2 seconds: the request itself sends it right after the commit. */
    {"timer_enqueue",
     "INSERT INTO timer_outbox (user_id, op, due_at, next_attempt_at) "
     "SELECT id, CASE WHEN expires_at IS NULL THEN 'cancel' ELSE 'schedule' END, expires_at, "
     "       now() + make_interval(secs => $2::integer) FROM users WHERE id = $1::uuid "
     "ON CONFLICT (user_id) DO UPDATE SET op = EXCLUDED.op, due_at = EXCLUDED.due_at, "
     "gen = gen_random_uuid(), attempts = 0, next_attempt_at = EXCLUDED.next_attempt_at, "
     "updated_at = now() "
     "RETURNING user_id::text AS user_id, op, coalesce(rfc3339(due_at), '') AS due_at, "
     "gen::text AS gen, attempts",
     2},
    /* Claims due rows and pushes them out by their backoff (2 s doubling, 60 s at most). */
    {"timer_claim",
     "UPDATE timer_outbox SET attempts = attempts + 1, "
     "next_attempt_at = now() + least(interval '60 seconds', "
     "                                interval '2 seconds' * power(2, least(attempts, 5))) "
     "WHERE user_id IN (SELECT user_id FROM timer_outbox WHERE next_attempt_at <= now() "
     "                  ORDER BY next_attempt_at LIMIT $1::integer FOR UPDATE SKIP LOCKED) "
     "RETURNING user_id::text AS user_id, op, coalesce(rfc3339(due_at), '') AS due_at, "
     "gen::text AS gen, attempts",
     1},
    {"timer_done", "DELETE FROM timer_outbox WHERE user_id = $1::uuid AND gen = $2::uuid", 2},
    AUDIT_PG_STMTS, /* audit_record + the relay (extranet/audit.h) */
    {NULL, NULL, 0},
};

/* --- helpers ------------------------------------------------------------------------------ */

static Extranet__Identity__User *s_user_row(arena_t *a, const PGresult *res, int row,
                                            store_user_t *ret) {
    Extranet__Identity__User *u = arena_alloc(a, sizeof *u);
    if (!u)
        return NULL;
    extranet__identity__user__init(u);
    u->id = pg_col_str(a, res, row, "id");
    u->email = pg_col_str(a, res, row, "email");
    u->display_name = pg_col_str(a, res, row, "display_name");
    u->kind = pg_col_str(a, res, row, "kind");
    u->status = pg_col_str(a, res, row, "status");
    u->expires_at = pg_col_str(a, res, row, "expires_at");
    u->mfa_enabled = pg_col_bool(res, row, "mfa_enabled");
    u->created_at = pg_col_str(a, res, row, "created_at");
    u->updated_at = pg_col_str(a, res, row, "updated_at");
    if (!u->id || !u->email || !u->display_name || !u->kind || !u->status || !u->expires_at ||
        !u->created_at || !u->updated_at)
        return NULL;
    if (ret) {
        ret->user = u;
        ret->password_hash = pg_col_str(a, res, row, "password_hash");
        ret->usable = pg_col_bool(res, row, "usable");
        if (!ret->password_hash)
            return NULL;
    }
    return u;
}

static int s_user_one(pg_t *pg, arena_t *a, const char *stmt, const char *arg, store_user_t *ret) {
    PGresult *res = NULL;
    const char *params[] = {arg};
    int rc = pg_exec_row(pg, stmt, params, true, &res);
    if (rc != 0)
        return rc;
    rc = s_user_row(a, res, 0, ret) ? 0 : -ENOMEM;
    PQclear(res);
    return rc;
}

static int s_user_many(pg_t *pg, arena_t *a, const char *stmt, const char *const *params,
                       Extranet__Identity__User ***ret_users, size_t *ret_n) {
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, stmt, params, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    Extranet__Identity__User **v = arena_alloc(a, (n ? n : 1) * sizeof(Extranet__Identity__User *));
    rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!(v[i] = s_user_row(a, res, (int)i, NULL)))
            rc = -ENOMEM;
    PQclear(res);
    if (rc == 0) {
        *ret_users = v;
        *ret_n = n;
    }
    return rc;
}

/* Changes exactly one row or answers -ENOENT. */
static int s_exec_one(pg_t *pg, const char *stmt, const char *const *params) {
    return pg_exec_row(pg, stmt, params, true, NULL);
}

/* --- users -------------------------------------------------------------------------------- */

int store_user_by_email(pg_t *pg, arena_t *a, const char *email, store_user_t *ret) {
    return s_user_one(pg, a, "user_by_email", email, ret);
}

int store_user_by_id(pg_t *pg, arena_t *a, const char *id, store_user_t *ret) {
    return s_user_one(pg, a, "user_by_id", id, ret);
}

int store_user_insert(pg_t *pg, arena_t *a, const char *email, const char *display_name,
                      const char *kind, const char *hash, const char *expires_at,
                      Extranet__Identity__User **ret_user) {
    const char *params[] = {email, display_name, kind, hash, expires_at};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "user_insert", params, true, &res);
    if (rc != 0)
        return rc;
    char *id = pg_col_str(a, res, 0, "id");
    PQclear(res);
    if (!id)
        return -ENOMEM;
    store_user_t u;
    rc = store_user_by_id(pg, a, id, &u);
    if (rc == 0)
        *ret_user = u.user;
    return rc;
}

int store_admin_first(pg_t *pg, const char *email, const char *display_name, const char *hash,
                      char ret_id[37], bool *ret_created) {
    const char *params[] = {email, display_name, hash};
    PGresult *res = NULL;
    ret_id[0] = '\0';
    *ret_created = false;
    int rc = pg_exec(pg, "admin_first_lock", NULL, NULL);
    if (rc != 0)
        return rc;
    rc = pg_exec_row(pg, "admin_first", params, false, &res);
    if (rc != 0)
        return rc;
    if (PQntuples(res) == 1) {
        int col = PQfnumber(res, "id");
        if (col < 0 || !util_uuid_lower(PQgetvalue(res, 0, col), ret_id))
            rc = -EIO;
        else
            *ret_created = true;
    }
    PQclear(res);
    return rc;
}

int store_user_set_password(pg_t *pg, const char *id, const char *hash) {
    const char *params[] = {id, hash};
    return s_exec_one(pg, "user_set_password", params);
}

int store_user_rehash_password(pg_t *pg, const char *id, const char *old_hash,
                               const char *new_hash) {
    const char *params[] = {id, new_hash, old_hash};
    return s_exec_one(pg, "user_rehash_password", params);
}

int store_user_update(pg_t *pg, const char *id, const char *display_name, const char *status,
                      const char *expires_at, bool clear_expires) {
    const char *params[] = {id, display_name, status, expires_at, clear_expires ? "t" : "f"};
    return s_exec_one(pg, "user_update", params);
}

int store_user_deactivate(pg_t *pg, const char *id, bool only_if_expired, bool *ret_changed) {
    const char *params[] = {id, only_if_expired ? "t" : "f"};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "user_deactivate", params, false, &res);
    if (rc != 0)
        return rc;
    *ret_changed = PQntuples(res) > 0;
    PQclear(res);
    return 0;
}

int store_user_transfer(pg_t *pg, const char *id) {
    const char *params[] = {id};
    return s_exec_one(pg, "user_transfer", params);
}

int store_users_list(pg_t *pg, arena_t *a, const char *after, const char *kind, const char *status,
                     const char *q, int limit, Extranet__Identity__User ***ret_users, size_t *ret_n,
                     bool *ret_more) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *params[] = {after, kind, status, q, lim};
    int rc = s_user_many(pg, a, "users_list", params, ret_users, ret_n);
    if (rc == 0) {
        *ret_more = *ret_n > (size_t)limit;
        if (*ret_more)
            *ret_n = (size_t)limit;
    }
    return rc;
}

int store_users_by_ids(pg_t *pg, arena_t *a, const char *ids_array,
                       Extranet__Identity__User ***ret_users, size_t *ret_n) {
    const char *params[] = {ids_array};
    return s_user_many(pg, a, "users_by_ids", params, ret_users, ret_n);
}

/* --- sessions ----------------------------------------------------------------------------- */

int store_session_insert(pg_t *pg, const char *token_hash, const char *user_id,
                         const char *client_ip, long idle_s, long max_s, char ret_id[37]) {
    char idle[24], max[24];
    snprintf(idle, sizeof idle, "%ld", idle_s);
    snprintf(max, sizeof max, "%ld", max_s);
    const char *params[] = {token_hash, user_id, client_ip ? client_ip : "", idle, max};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "session_insert", params, true, &res);
    if (rc != 0)
        return rc;
    snprintf(ret_id, 37, "%s", PQgetvalue(res, 0, PQfnumber(res, "id")));
    PQclear(res);
    return 0;
}

int store_session_auth(pg_t *pg, arena_t *a, const char *token_hash, store_auth_t *ret) {
    const char *params[] = {token_hash};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "session_auth", params, true, &res);
    if (rc != 0)
        return rc;
    ret->session_id = pg_col_str(a, res, 0, "session_id");
    ret->user_id = pg_col_str(a, res, 0, "user_id");
    ret->kind = pg_col_str(a, res, 0, "kind");
    ret->mfa_pending = pg_col_bool(res, 0, "mfa_pending");
    ret->valid_until_ms = pg_col_i64(res, 0, "valid_until_ms");
    ret->stale = pg_col_bool(res, 0, "stale");
    PQclear(res);
    return ret->session_id && ret->user_id && ret->kind ? 0 : -ENOMEM;
}

int store_session_touch(pg_t *pg, const char *session_id, long idle_s,
                        int64_t *ret_valid_until_ms) {
    char idle[24];
    snprintf(idle, sizeof idle, "%ld", idle_s);
    const char *params[] = {session_id, idle};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "session_touch", params, true, &res);
    if (rc != 0)
        return rc;
    *ret_valid_until_ms = pg_col_i64(res, 0, "valid_until_ms");
    PQclear(res);
    return 0;
}

int store_sessions_list(pg_t *pg, arena_t *a, const char *user_id, const char *current_id,
                        Extranet__Identity__Session ***ret, size_t *ret_n) {
    const char *params[] = {user_id};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "sessions_list", params, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    Extranet__Identity__Session **v =
        arena_alloc(a, (n ? n : 1) * sizeof(Extranet__Identity__Session *));
    rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        Extranet__Identity__Session *s = arena_alloc(a, sizeof *s);
        if (!s) {
            rc = -ENOMEM;
            break;
        }
        extranet__identity__session__init(s);
        s->id = pg_col_str(a, res, (int)i, "id");
        s->created_at = pg_col_str(a, res, (int)i, "created_at");
        s->last_seen_at = pg_col_str(a, res, (int)i, "last_seen_at");
        s->expires_at = pg_col_str(a, res, (int)i, "expires_at");
        s->client_ip = pg_col_str(a, res, (int)i, "client_ip");
        s->mfa_pending = pg_col_bool(res, (int)i, "mfa_pending");
        if (!s->id || !s->created_at || !s->last_seen_at || !s->expires_at || !s->client_ip)
            rc = -ENOMEM;
        else
            s->current = current_id && strcmp(s->id, current_id) == 0;
        v[i] = s;
    }
    PQclear(res);
    if (rc == 0) {
        *ret = v;
        *ret_n = n;
    }
    return rc;
}

static int s_hashes(arena_t *a, PGresult *res, store_hashes_t *ret) {
    size_t n = (size_t)PQntuples(res);
    ret->n = 0;
    ret->ids = arena_alloc(a, (n ? n : 1) * sizeof(char *));
    ret->hashes = arena_alloc(a, (n ? n : 1) * sizeof(char *));
    if (!ret->ids || !ret->hashes)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        ret->ids[i] = pg_col_str(a, res, (int)i, "id");
        ret->hashes[i] = pg_col_str(a, res, (int)i, "token_hash");
        if (!ret->ids[i] || !ret->hashes[i])
            return -ENOMEM;
    }
    ret->n = n;
    return 0;
}

static int s_exec_hashes(pg_t *pg, arena_t *a, const char *stmt, const char *const *params,
                         store_hashes_t *ret) {
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, stmt, params, false, &res);
    if (rc != 0)
        return rc;
    rc = s_hashes(a, res, ret);
    PQclear(res);
    return rc;
}

int store_sessions_revoke(pg_t *pg, arena_t *a, store_revoke_t which, const char *user_id,
                          const char *session_id, store_hashes_t *ret) {
    const char *params[] = {user_id, session_id};
    const char *stmt = which == STORE_REVOKE_ONE   ? "session_revoke_one"
                       : which == STORE_REVOKE_ALL ? "session_revoke_all"
                                                   : "session_revoke_others";
    return s_exec_hashes(pg, a, stmt, params, ret);
}

int store_sessions_invalidate_user(pg_t *pg, arena_t *a, const char *user_id, store_hashes_t *ret) {
    const char *params[] = {user_id};
    return s_exec_hashes(pg, a, "session_invalidate_user", params, ret);
}

int store_sessions_invalidate_extranet(pg_t *pg, arena_t *a, store_hashes_t *ret) {
    return s_exec_hashes(pg, a, "session_invalidate_extranet", NULL, ret);
}

int store_pending_done(pg_t *pg, const char *hashes_array) {
    const char *params[] = {hashes_array};
    return pg_exec_row(pg, "pending_done", params, false, NULL);
}

int store_pending_batch(pg_t *pg, arena_t *a, int limit, store_hashes_t *ret) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {lim};
    return s_exec_hashes(pg, a, "pending_batch", params, ret);
}

int store_cleanup(pg_t *pg) {
    int rc = pg_exec_row(pg, "sessions_cleanup", NULL, false, NULL);
    if (rc == 0)
        rc = pg_exec_row(pg, "mfa_tokens_cleanup", NULL, false, NULL);
    if (rc == 0)
        rc = pg_exec_row(pg, "login_failures_cleanup", NULL, false, NULL);
    return rc;
}

/* --- 2FA ---------------------------------------------------------------------------------- */

int store_mfa_token_insert(pg_t *pg, const char *token_hash, const char *user_id,
                           const char *client_ip) {
    const char *params[] = {token_hash, user_id, client_ip ? client_ip : ""};
    return pg_exec_row(pg, "mfa_token_insert", params, false, NULL);
}

int store_mfa_token_try(pg_t *pg, arena_t *a, const char *token_hash, char **ret_user_id,
                        int *ret_tries) {
    const char *params[] = {token_hash};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "mfa_token_try", params, true, &res);
    if (rc != 0)
        return rc;
    *ret_user_id = pg_col_str(a, res, 0, "user_id");
    *ret_tries = (int)pg_col_i64(res, 0, "tries");
    PQclear(res);
    return *ret_user_id ? 0 : -ENOMEM;
}

int store_mfa_token_take(pg_t *pg, const char *token_hash) {
    const char *params[] = {token_hash};
    return s_exec_one(pg, "mfa_token_take", params);
}

int store_mfa_get(pg_t *pg, arena_t *a, const char *user_id, store_mfa_t *ret) {
    const char *params[] = {user_id};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "mfa_get", params, true, &res);
    if (rc != 0)
        return rc;
    ret->secret_enc = pg_col_str(a, res, 0, "secret_enc");
    ret->confirmed = pg_col_bool(res, 0, "confirmed");
    ret->last_step = pg_col_i64(res, 0, "last_step");
    PQclear(res);
    return ret->secret_enc ? 0 : -ENOMEM;
}

int store_mfa_enroll(pg_t *pg, const char *user_id, const char *secret_enc) {
    const char *params[] = {user_id, secret_enc};
    int rc = s_exec_one(pg, "mfa_enroll", params);
    return rc == -ENOENT ? -EEXIST : rc;
}

int store_mfa_use_step(pg_t *pg, const char *user_id, int64_t step) {
    char st[24];
    snprintf(st, sizeof st, "%lld", (long long)step);
    const char *params[] = {user_id, st};
    return s_exec_one(pg, "mfa_use_step", params);
}

int store_mfa_confirm(pg_t *pg, const char *user_id, const char *secret_enc, int64_t step) {
    char st[24];
    snprintf(st, sizeof st, "%lld", (long long)step);
    const char *params[] = {user_id, secret_enc, st};
    return s_exec_one(pg, "mfa_confirm", params);
}

int store_mfa_delete(pg_t *pg, const char *user_id) {
    const char *params[] = {user_id};
    return pg_exec_row(pg, "mfa_delete", params, false, NULL);
}

int store_recovery_replace(pg_t *pg, const char *user_id, const char *salts_array,
                           const char *hashes_array) {
    const char *p1[] = {user_id};
    int rc = pg_exec_row(pg, "recovery_delete", p1, false, NULL);
    if (rc != 0)
        return rc;
    const char *p3[] = {user_id, salts_array, hashes_array};
    return pg_exec_row(pg, "recovery_insert", p3, false, NULL);
}

int store_recovery_unused(pg_t *pg, arena_t *a, const char *user_id, store_recovery_t **ret,
                          size_t *ret_n) {
    const char *params[] = {user_id};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "recovery_unused", params, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    store_recovery_t *v = arena_alloc(a, (n ? n : 1) * sizeof *v);
    rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        v[i].id = pg_col_str(a, res, (int)i, "id");
        v[i].salt = pg_col_str(a, res, (int)i, "salt");
        v[i].hash = pg_col_str(a, res, (int)i, "hash");
        if (!v[i].id || !v[i].salt || !v[i].hash)
            rc = -ENOMEM;
    }
    PQclear(res);
    if (rc == 0) {
        *ret = v;
        *ret_n = n;
    }
    return rc;
}

int store_recovery_use(pg_t *pg, const char *id) {
    const char *params[] = {id};
    return s_exec_one(pg, "recovery_use", params);
}

/* --- login backoff ----------------------------------------------------------------------- */

int store_login_wait(pg_t *pg, const char *account, int *ret_wait_s) {
    const char *params[] = {account};
    PGresult *res = NULL;
    *ret_wait_s = 0;
    int rc = pg_exec_row(pg, "login_wait", params, false, &res);
    if (rc != 0)
        return rc;
    if (PQntuples(res) == 1)
        *ret_wait_s = (int)pg_col_i64(res, 0, "wait");
    PQclear(res);
    return 0;
}

int store_login_failed(pg_t *pg, const char *account) {
    const char *params[] = {account};
    return pg_exec_row(pg, "login_failed", params, false, NULL);
}

int store_login_ok(pg_t *pg, const char *account) {
    const char *params[] = {account};
    return pg_exec_row(pg, "login_ok", params, false, NULL);
}

/* --- policy ------------------------------------------------------------------------------- */

int store_policy_get(pg_t *pg, Extranet__Identity__Policy *ret) {
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "policy_get", NULL, true, &res);
    if (rc != 0)
        return rc;
    ret->extranet_mfa_required = pg_col_bool(res, 0, "extranet_mfa_required");
    ret->extranet_public_links_allowed = pg_col_bool(res, 0, "extranet_public_links_allowed");
    PQclear(res);
    return 0;
}

int store_policy_set(pg_t *pg, const Extranet__Identity__Policy *p) {
    const char *params[] = {p->extranet_mfa_required ? "t" : "f",
                            p->extranet_public_links_allowed ? "t" : "f"};
    return pg_exec_row(pg, "policy_set", params, false, NULL);
}

/* --- mail --------------------------------------------------------------------------------- */

int store_mail_enqueue(pg_t *pg, const uint8_t *key, const char *rcpt, const char *subject,
                       const char *body) {
    char *sealed = totp_text_seal(key, body);
    if (!sealed)
        return -ENOMEM;
    const char *params[] = {rcpt, subject, sealed};
    int rc = pg_exec_row(pg, "mail_enqueue", params, false, NULL);
    free(sealed);
    return rc;
}

/* The opened body of a claimed row into the arena; NULL when it does not open. */
static char *s_mail_body(arena_t *a, const uint8_t *key, const char *id, const char *sealed) {
    char *plain = NULL;
    int rc = totp_text_open(key, sealed, &plain);
    if (rc != 0) {
        log_error("mail %s: the body does not open with EXTRANET_DATA_KEY (%d)", id, rc);
        return NULL;
    }
    char *out = arena_strdup(a, plain);
    sodium_memzero(plain, strlen(plain));
    free(plain);
    return out;
}

int store_mail_claim(pg_t *pg, const uint8_t *key, arena_t *a, int limit, store_mail_t **ret,
                     size_t *ret_n) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {lim};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "mail_claim", params, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    store_mail_t *v = arena_alloc(a, (n ? n : 1) * sizeof *v);
    rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        v[i].id = pg_col_str(a, res, (int)i, "id");
        v[i].rcpt = pg_col_str(a, res, (int)i, "rcpt");
        v[i].subject = pg_col_str(a, res, (int)i, "subject");
        v[i].attempts = (int)pg_col_i64(res, (int)i, "attempts");
        if (!v[i].id || !v[i].rcpt || !v[i].subject) {
            rc = -ENOMEM;
            break;
        }
        int c = PQfnumber(res, "body");
        v[i].body = c < 0 ? NULL : s_mail_body(a, key, v[i].id, PQgetvalue(res, (int)i, c));
    }
    PQclear(res);
    if (rc == 0) {
        *ret = v;
        *ret_n = n;
    }
    return rc;
}

int store_mail_delete(pg_t *pg, const char *id) {
    const char *params[] = {id};
    return pg_exec_row(pg, "mail_delete", params, false, NULL);
}

/* --- expiry timer outbox ------------------------------------------------------------------ */

/* Row i of a timer_outbox result into *ret (strings in the arena). */
static int s_timer_row(arena_t *a, const PGresult *res, int i, store_timer_t *ret) {
    ret->user_id = pg_col_str(a, res, i, "user_id");
    ret->op = pg_col_str(a, res, i, "op");
    ret->due_at = pg_col_str(a, res, i, "due_at");
    ret->gen = pg_col_str(a, res, i, "gen");
    ret->attempts = (int)pg_col_i64(res, i, "attempts");
    return ret->user_id && ret->op && ret->due_at && ret->gen ? 0 : -ENOMEM;
}

int store_timer_enqueue(pg_t *pg, arena_t *a, const char *user_id, int hold_s, store_timer_t *ret) {
    char hold[16];
    snprintf(hold, sizeof hold, "%d", hold_s);
    const char *params[] = {user_id, hold};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "timer_enqueue", params, true, &res);
    if (rc != 0)
        return rc;
    rc = s_timer_row(a, res, 0, ret);
    PQclear(res);
    return rc;
}

int store_timer_claim(pg_t *pg, arena_t *a, int limit, store_timer_t **ret, size_t *ret_n) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {lim};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "timer_claim", params, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    store_timer_t *v = arena_alloc(a, (n ? n : 1) * sizeof *v);
    rc = v ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = s_timer_row(a, res, (int)i, &v[i]);
    PQclear(res);
    if (rc == 0) {
        *ret = v;
        *ret_n = n;
    }
    return rc;
}

int store_timer_done(pg_t *pg, const char *user_id, const char *gen) {
    const char *params[] = {user_id, gen};
    return pg_exec_row(pg, "timer_done", params, false, NULL);
}
