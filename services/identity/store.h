/* Every SQL statement of identity, prepared by name on each connection (identity_statements),
 * and typed wrappers around them. Strings handed back are copied into the caller's arena
 * (borrowed from it; they live until the arena is dropped); PGresults never escape. Lookups
 * that find no row return -ENOENT; other errors are pg_exec's (-EEXIST, -EAGAIN, -EIO). */
#ifndef IDENTITY_STORE_H
#define IDENTITY_STORE_H
#include "extranet/arena.h"
#include "extranet/common.h"
#include "extranet/pg.h"
#include "identity.pb-c.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

extern const pg_stmt_t identity_statements[];

typedef struct {
    Extranet__Identity__User *user; /* in the arena */
    char *password_hash;            /* in the arena */
    bool usable;                    /* active and not expired (PostgreSQL's now()) */
} store_user_t;

int store_user_by_email(pg_t *pg, arena_t *a, const char *email, store_user_t *ret) WUR;
int store_user_by_id(pg_t *pg, arena_t *a, const char *id, store_user_t *ret) WUR;
/* expires_at may be NULL (never). -EEXIST when the email is taken. */
int store_user_insert(pg_t *pg, arena_t *a, const char *email, const char *display_name,
                      const char *kind, const char *hash, const char *expires_at,
                      Extranet__Identity__User **ret_user) WUR;
/* Inside a transaction (it takes a lock held until the end): creates the admin only while no
 * admin exists; *ret_created says whether it did, and then ret_id holds its id (else ""). */
int store_admin_first(pg_t *pg, const char *email, const char *display_name, const char *hash,
                      char ret_id[37], bool *ret_created) WUR;
int store_user_set_password(pg_t *pg, const char *id, const char *hash) WUR;
/* Replaces the hash (a stronger one of the same password) only while it is still old_hash:
 * -ENOENT when the password was changed meanwhile (nothing to do then). */
int store_user_rehash_password(pg_t *pg, const char *id, const char *old_hash,
                               const char *new_hash) WUR;
/* NULL arguments leave a column unchanged; clear_expires wins over expires_at. */
int store_user_update(pg_t *pg, const char *id, const char *display_name, const char *status,
                      const char *expires_at, bool clear_expires) WUR;
/* Sets status deactivated. only_if_expired: only when expires_at has passed (a timer firing
 * late for a cleared or moved expires_at must not deactivate). *ret_changed: a row changed. */
int store_user_deactivate(pg_t *pg, const char *id, bool only_if_expired, bool *ret_changed) WUR;
/* kind extranet -> employee; -ENOENT when the user is not an extranet user. */
int store_user_transfer(pg_t *pg, const char *id) WUR;
/* Page of users ordered by lower(email) after `after` ("" = first page); limit+1 rows are read
 * so *ret_more says whether another page exists. */
int store_users_list(pg_t *pg, arena_t *a, const char *after, const char *kind, const char *status,
                     const char *q, int limit, Extranet__Identity__User ***ret_users, size_t *ret_n,
                     bool *ret_more) WUR;
/* ids_array: a PostgreSQL array literal of valid uuids ("{a,b}"). */
int store_users_by_ids(pg_t *pg, arena_t *a, const char *ids_array,
                       Extranet__Identity__User ***ret_users, size_t *ret_n) WUR;

/* --- sessions --- */
typedef struct {
    char *session_id, *user_id, *kind; /* in the arena */
    bool mfa_pending;
    int64_t valid_until_ms;
    bool stale; /* last_seen_at older than 30 s: touch it */
} store_auth_t;

int store_session_insert(pg_t *pg, const char *token_hash, const char *user_id,
                         const char *client_ip, long idle_s, long max_s, char ret_id[37]) WUR;
/* The live session of token_hash whose user is active and not expired; -ENOENT otherwise. */
int store_session_auth(pg_t *pg, arena_t *a, const char *token_hash, store_auth_t *ret) WUR;
int store_session_touch(pg_t *pg, const char *session_id, long idle_s,
                        int64_t *ret_valid_until_ms) WUR;
int store_sessions_list(pg_t *pg, arena_t *a, const char *user_id, const char *current_id,
                        Extranet__Identity__Session ***ret, size_t *ret_n) WUR;

typedef struct {
    size_t n;
    char **ids;    /* session ids (empty strings for cache-only invalidations) */
    char **hashes; /* token hashes whose Redis entries must go (queued as pending) */
} store_hashes_t;

typedef enum { STORE_REVOKE_ONE, STORE_REVOKE_ALL, STORE_REVOKE_OTHERS } store_revoke_t;
/* Deletes sessions of user_id (ONE: session_id only; OTHERS: all but session_id) and, in the
 * same statement, queues their token hashes in pending_invalidations. */
int store_sessions_revoke(pg_t *pg, arena_t *a, store_revoke_t which, const char *user_id,
                          const char *session_id, store_hashes_t *ret) WUR;
/* Queues the token hashes of every session of user_id (their cached entries are stale). */
int store_sessions_invalidate_user(pg_t *pg, arena_t *a, const char *user_id,
                                   store_hashes_t *ret) WUR;
/* Queues the token hashes of every extranet user's session (the policy decides mfa_pending). */
int store_sessions_invalidate_extranet(pg_t *pg, arena_t *a, store_hashes_t *ret) WUR;
int store_pending_done(pg_t *pg, const char *hashes_array) WUR;
int store_pending_batch(pg_t *pg, arena_t *a, int limit, store_hashes_t *ret) WUR;
int store_cleanup(pg_t *pg) WUR; /* expired sessions and mfa tokens */

/* --- 2FA --- */
int store_mfa_token_insert(pg_t *pg, const char *token_hash, const char *user_id,
                           const char *client_ip) WUR;
/* Counts one try of a live token with tries left; -ENOENT when there is none. */
int store_mfa_token_try(pg_t *pg, arena_t *a, const char *token_hash, char **ret_user_id,
                        int *ret_tries) WUR;
/* Deletes the token; -ENOENT when someone else took it first. */
int store_mfa_token_take(pg_t *pg, const char *token_hash) WUR;

typedef struct {
    char *secret_enc; /* in the arena */
    bool confirmed;
    int64_t last_step;
} store_mfa_t;
int store_mfa_get(pg_t *pg, arena_t *a, const char *user_id, store_mfa_t *ret) WUR;
/* A new unconfirmed secret; -EEXIST when 2FA is already confirmed. */
int store_mfa_enroll(pg_t *pg, const char *user_id, const char *secret_enc) WUR;
/* Records step as used if it is newer than the last one; -ENOENT when it is not. */
int store_mfa_use_step(pg_t *pg, const char *user_id, int64_t step) WUR;
/* Confirms the secret secret_enc (still the enrolled one) at step; -ENOENT otherwise. */
int store_mfa_confirm(pg_t *pg, const char *user_id, const char *secret_enc, int64_t step) WUR;
int store_mfa_delete(pg_t *pg, const char *user_id) WUR; /* secret + recovery codes */
/* Replaces the user's recovery codes: salts and hashes are array literals of equal length. */
int store_recovery_replace(pg_t *pg, const char *user_id, const char *salts_array,
                           const char *hashes_array) WUR;
typedef struct {
    char *id, *salt, *hash;
} store_recovery_t;
int store_recovery_unused(pg_t *pg, arena_t *a, const char *user_id, store_recovery_t **ret,
                          size_t *ret_n) WUR;
int store_recovery_use(pg_t *pg, const char *id) WUR; /* -ENOENT when already used */

/* --- login backoff (account = sha256 hex of the lower-cased email) --- */
/* Seconds before the next login attempt of account is allowed (0 = now). */
int store_login_wait(pg_t *pg, const char *account, int *ret_wait_s) WUR;
int store_login_failed(pg_t *pg, const char *account) WUR;
int store_login_ok(pg_t *pg, const char *account) WUR;

/* --- policy --- */
int store_policy_get(pg_t *pg, Extranet__Identity__Policy *ret) WUR;
int store_policy_set(pg_t *pg, const Extranet__Identity__Policy *p) WUR;

/* --- mail outbox --- */
/* The body is stored sealed with key (totp_text_seal: it may carry an invitation token, which
 * must not sit readable in the database while SMTP is down); -ENOMEM when sealing fails. */
int store_mail_enqueue(pg_t *pg, const uint8_t *key, const char *rcpt, const char *subject,
                       const char *body) WUR;
typedef struct {
    char *id, *rcpt, *subject, *body;
    int attempts;
} store_mail_t;
/* Claims up to limit due mails (pushes their next_at out, counts the attempt) and opens their
 * bodies with key; a body that does not open (another key) comes back as NULL. */
int store_mail_claim(pg_t *pg, const uint8_t *key, arena_t *a, int limit, store_mail_t **ret,
                     size_t *ret_n) WUR;
int store_mail_delete(pg_t *pg, const char *id) WUR;

/* --- expiry timer outbox (migrations/004_timer_outbox.sql) --- */
typedef struct {
    char *user_id; /* in the arena */
    char *op;      /* "schedule" | "cancel" */
    char *due_at;  /* RFC 3339 UTC; "" for cancel */
    char *gen;     /* uuid of this version of the row: timer_done deletes only it */
    int attempts;  /* tick attempts so far (claim counts one) */
} store_timer_t;
/* Inside the caller's transaction: queues schedule (the user's expires_at as now stored) or
 * cancel (expires_at NULL) for user_id, replacing a pending row; the tick leaves it for
 * hold_s seconds (the caller's own attempt after the commit). -ENOENT: no such user. */
int store_timer_enqueue(pg_t *pg, arena_t *a, const char *user_id, int hold_s,
                        store_timer_t *ret) WUR;
/* Claims up to limit due rows (counts the attempt, pushes next_attempt_at out by the backoff). */
int store_timer_claim(pg_t *pg, arena_t *a, int limit, store_timer_t **ret, size_t *ret_n) WUR;
/* Deletes the row only while it is still version gen (a newer change stays queued). */
int store_timer_done(pg_t *pg, const char *user_id, const char *gen) WUR;
#endif
