/* identity's sign-in methods: Login, LoginMfa (TOTP or recovery code), Logout, and
 * Authenticate (the gateway's cache miss: reads PostgreSQL, fills sess:{h} under the lease). */
#include "calls.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "password.h"
#include "rules.h"
#include "sessions.h"
#include "store.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define BAD_LOGIN "invalid email or password"

/* Creates the session of a completed sign-in and its audit record (action, details) in one
 * transaction; fills *ret_token (arena) or answers and returns -1. */
static int s_session_or_reply(svc_thread_t *t, svc_call_t *call, const Extranet__Identity__User *u,
                              const char *action, const char *details, char **ret_token) {
    const char *user_id = u->id;
    char token[SESSIONS_TOKEN_LEN + 1], hash[SESSIONS_HASH_LEN + 1], sid[37];
    const Extranet__Actor *a = call_actor(call);
    char ip[65] = "";
    if (a && a->client_ip)
        snprintf(ip, sizeof ip, "%s", a->client_ip);
    sessions_token_new(token, hash);
    Extranet__Actor as;
    int rc;
    call_actor_as(call, user_id, u->kind, sid, &as);
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_session_insert(t->pg, hash, user_id, ip, identity_cfg.idle_s,
                                   identity_cfg.max_s, sid)) != 0 ||
        (rc = call_audit(t, call, &as, action, "user", user_id, "ok", details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        sodium_memzero(token, sizeof token);
        call_store_fail(call, rc, "session");
        return -1;
    }
    *ret_token = arena_strdup(call->arena, token);
    sodium_memzero(token, sizeof token);
    if (!*ret_token) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return -1;
    }
    return 0;
}

/* Whether a fresh session of u would be mfa_pending (R10). -1 answered on error. */
static int s_enroll_required(svc_thread_t *t, svc_call_t *call, const Extranet__Identity__User *u,
                             bool *ret) {
    *ret = false;
    if (strcmp(u->kind, "extranet") != 0 || u->mfa_enabled)
        return 0;
    Extranet__Identity__Policy p = EXTRANET__IDENTITY__POLICY__INIT;
    int rc = store_policy_get(t->pg, &p);
    if (rc != 0) {
        call_store_fail(call, rc, "policy");
        return -1;
    }
    *ret = p.extranet_mfa_required;
    return 0;
}

static void s_reply_login(svc_thread_t *t, svc_call_t *call, Extranet__Identity__User *u,
                          const char *action, const char *details) {
    Extranet__Identity__LoginReply reply = EXTRANET__IDENTITY__LOGIN_REPLY__INIT;
    bool pending = false;
    if (s_enroll_required(t, call, u, &pending) != 0)
        return;
    if (s_session_or_reply(t, call, u, action, details, &reply.token) != 0)
        return;
    reply.user = u;
    reply.mfa_enrollment_required = pending;
    svc_reply_ok(call, &reply.base);
}

/* The backoff key of an email: sha256 hex of its lower-cased text (known or not). */
static void s_account_key(const char *email, char out[65]) {
    char lower[256];
    size_t n = 0;
    for (; email[n] && n < sizeof lower - 1; n++)
        lower[n] = (char)((email[n] >= 'A' && email[n] <= 'Z') ? email[n] + 32 : email[n]);
    lower[n] = '\0';
    sessions_token_hash(lower, out);
}

/* Answers RATE_LIMITED with Retry-After while the account's backoff runs; true then. */
static bool s_backoff_or_reply(svc_thread_t *t, svc_call_t *call, const char *account) {
    int wait = 0;
    if (store_login_wait(t->pg, account, &wait) != 0 || wait <= 0)
        return false; /* the gateway's limiter still holds if the table cannot be read */
    call_audit_alone(t, call, NULL, "auth.login_failed", NULL, NULL, "denied",
                     "{\"reason\":\"rate_limited\"}");
    svc_fail(call, EXTRANET__STATUS__RATE_LIMITED,
             "too many failed sign-ins; try again in %d seconds", wait);
    call->retry_after_s = wait;
    return true;
}

/* Counts a failed sign-in, audits it (action; user_id NULL for an unknown email) in the same
 * transaction and answers UNAUTHENTICATED. */
static void s_fail_login(svc_thread_t *t, svc_call_t *call, const char *account,
                         const char *message, const char *action, const char *user_id,
                         const char *details) {
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_login_failed(t->pg, account)) != 0 ||
        (rc = call_audit(t, call, NULL, action, user_id ? "user" : NULL, user_id, "fail",
                         details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        log_warn("could not record a failed sign-in (%d)", rc);
    }
    svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "%s", message);
}

void auth_login(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__LoginRequest *req = (const void *)call->msg;
    char account[65];
    if (!call_allowed_or_reply(call, ACCESS_ANY) ||
        call_invalid_or_reply(call, rules_email_check(req->email)) ||
        call_invalid_or_reply(call, rules_login_password_check(req->password)))
        return;
    s_account_key(req->email, account);
    if (s_backoff_or_reply(t, call, account))
        return;
    store_user_t u;
    int rc = store_user_by_email(t->pg, call->arena, req->email, &u);
    if (rc == -ENOENT) {
        password_verify_dummy(req->password); /* same time as a known email */
        s_fail_login(t, call, account, BAD_LOGIN, "auth.login_failed", NULL,
                     "{\"reason\":\"unknown_account\"}");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    if (!password_verify(u.password_hash, req->password) || !u.usable) {
        log_info("login refused for user %s", u.user->id);
        s_fail_login(t, call, account, BAD_LOGIN, "auth.login_failed", u.user->id,
                     u.usable ? "{\"reason\":\"bad_password\"}" : "{\"reason\":\"not_usable\"}");
        return;
    }
    if (password_needs_rehash(u.password_hash)) {
        char hash[PASSWORD_HASH_LEN];
        int r = password_hash(req->password, hash) != 0
                    ? -EIO
                    : store_user_rehash_password(t->pg, u.user->id, u.password_hash, hash);
        if (r != 0 && r != -ENOENT) /* -ENOENT: changed meanwhile, the new one stays */
            log_warn("could not upgrade the password hash of user %s", u.user->id);
    }
    if (u.user->mfa_enabled) {
        char token[SESSIONS_TOKEN_LEN + 1], hash[SESSIONS_HASH_LEN + 1];
        const Extranet__Actor *a = call_actor(call);
        sessions_token_new(token, hash);
        Extranet__Actor as;
        call_actor_as(call, u.user->id, u.user->kind, NULL, &as);
        if ((rc = pg_begin(t->pg)) != 0 ||
            (rc = store_mfa_token_insert(t->pg, hash, u.user->id, a ? a->client_ip : "")) != 0 ||
            (rc = call_audit(t, call, &as, "auth.login", "user", u.user->id, "mfa_required",
                             NULL)) != 0 ||
            (rc = pg_commit(t->pg)) != 0) {
            pg_rollback(t->pg);
            sodium_memzero(token, sizeof token);
            call_store_fail(call, rc, "mfa token");
            return;
        }
        Extranet__Identity__LoginReply reply = EXTRANET__IDENTITY__LOGIN_REPLY__INIT;
        reply.mfa_required = true;
        reply.mfa_token = arena_strdup(call->arena, token);
        sodium_memzero(token, sizeof token);
        if (!reply.mfa_token) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        svc_reply_ok(call, &reply.base);
        return;
    }
    /* Without a second factor the sign-in is complete: the backoff starts over. */
    if (store_login_ok(t->pg, account) != 0)
        log_warn("could not reset the sign-in backoff of user %s", u.user->id);
    log_info("login of user %s", u.user->id);
    s_reply_login(t, call, u.user, "auth.login", NULL);
}

/* Checks a recovery code against the user's unused ones; true when one matched and was
 * used up by this call. */
static bool s_recovery_use(svc_thread_t *t, arena_t *a, const char *user_id, const char *code) {
    char norm[RULES_RECOVERY_LEN + 1];
    if (!rules_recovery_normalize(code, norm))
        return false;
    store_recovery_t *codes = NULL;
    size_t n = 0;
    if (store_recovery_unused(t->pg, a, user_id, &codes, &n) != 0)
        return false;
    const char *match = NULL;
    for (size_t i = 0; i < n; i++) {
        char hash[65];
        totp_recovery_hash(norm, codes[i].salt, NULL, hash);
        if (sodium_memcmp(hash, codes[i].hash, 64) == 0 && !match)
            match = codes[i].id;
    }
    return match && store_recovery_use(t->pg, match) == 0;
}

/* Checks a TOTP code for a confirmed 2FA and records its step; true on success. */
static bool s_totp_use(svc_thread_t *t, arena_t *a, const char *user_id, const char *code) {
    store_mfa_t m;
    uint8_t secret[TOTP_SECRET_LEN];
    int64_t step = 0;
    if (store_mfa_get(t->pg, a, user_id, &m) != 0 || !m.confirmed)
        return false;
    if (totp_secret_open(identity_cfg.data_key, m.secret_enc, secret) != 0) {
        log_error("the TOTP secret of user %s does not open: wrong EXTRANET_DATA_KEY?", user_id);
        return false;
    }
    int rc = totp_verify(secret, sizeof secret, time(NULL), code, m.last_step, &step);
    sodium_memzero(secret, sizeof secret);
    /* The conditional update is the replay guard between concurrent logins too. */
    return rc == 0 && store_mfa_use_step(t->pg, user_id, step) == 0;
}

/* Deletes an mfa token that may no longer be used (best effort: it expires anyway). */
static void s_mfa_token_drop(svc_thread_t *t, const char *hash) {
    int rc = store_mfa_token_take(t->pg, hash);
    if (rc != 0 && rc != -ENOENT)
        log_warn("could not delete an mfa token (%d); it expires within 5 minutes", rc);
}

void auth_login_mfa(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__LoginMfaRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ANY))
        return;
    if (!req->mfa_token[0] || strlen(req->mfa_token) > 128) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "mfa_token is required");
        return;
    }
    if (!req->code[0] || strlen(req->code) > 64) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "code is required");
        return;
    }
    char hash[SESSIONS_HASH_LEN + 1];
    char *user_id = NULL;
    int tries = 0;
    sessions_token_hash(req->mfa_token, hash);
    int rc = store_mfa_token_try(t->pg, call->arena, hash, &user_id, &tries);
    if (rc == -ENOENT) {
        call_audit_alone(t, call, NULL, "auth.mfa_failed", NULL, NULL, "fail",
                         "{\"reason\":\"bad_mfa_token\"}");
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "mfa token");
        return;
    }
    store_user_t u;
    rc = store_user_by_id(t->pg, call->arena, user_id, &u);
    if (rc != 0 || !u.usable) {
        s_mfa_token_drop(t, hash);
        call_audit_alone(t, call, NULL, "auth.mfa_failed", "user", user_id, "fail",
                         "{\"reason\":\"not_usable\"}");
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    char account[65];
    s_account_key(u.user->email, account);
    if (s_backoff_or_reply(t, call, account))
        return;
    bool recovery = false, ok;
    if (rules_totp_code_shape(req->code)) {
        ok = s_totp_use(t, call->arena, user_id, req->code);
    } else {
        ok = recovery = s_recovery_use(t, call->arena, user_id, req->code);
    }
    if (!ok) {
        if (tries >= 5)
            s_mfa_token_drop(t, hash); /* used up: log in again */
        log_info("2FA code refused for user %s (try %d)", user_id, tries);
        s_fail_login(t, call, account, "invalid code", "auth.mfa_failed", user_id,
                     "{\"reason\":\"bad_code\"}");
        return;
    }
    /* Taking the token is what makes it single-use when two requests race with it. */
    if (store_mfa_token_take(t->pg, hash) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    if (store_login_ok(t->pg, account) != 0)
        log_warn("could not reset the sign-in backoff of user %s", user_id);
    if (recovery)
        call_notice(t, u.user, "A recovery code was used",
                    "One of your 2FA recovery codes was just used to sign in to your account.");
    log_info("login with 2FA of user %s%s", user_id, recovery ? " (recovery code)" : "");
    s_reply_login(t, call, u.user, recovery ? "auth.mfa_recovery_used" : "auth.login",
                  recovery ? "{\"mfa\":\"recovery\"}" : "{\"mfa\":\"totp\"}");
}

void auth_logout(svc_thread_t *t, svc_call_t *call) {
    if (!call_allowed_or_reply(call, ACCESS_USER_PENDING))
        return;
    const Extranet__Actor *a = call_actor(call);
    store_hashes_t h;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ONE, a->user_id, a->session_id,
                                    &h)) != 0 ||
        (rc = call_audit(t, call, NULL, "auth.logout", "session", a->session_id, "ok", NULL)) !=
            0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "session");
        return;
    }
    if (call_after_revoke(t, call->arena, a->user_id, &h, "logout") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "logged out, but the session cache is not cleared yet; retry");
        return;
    }
    svc_reply_ok(call, NULL);
}

void auth_authenticate(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__AuthenticateRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ANY))
        return;
    if (!sessions_hash_valid(req->token_sha256)) {
        svc_fail(call, EXTRANET__STATUS__INVALID,
                 "token_sha256 must be 64 lower-case hex characters");
        return;
    }
    /* Lease first, then PostgreSQL: a revocation committed after our read deletes the lease,
     * and the fill below then writes nothing. */
    char lease[SESSIONS_LEASE_LEN + 1];
    bool leased = t->redis && sessions_cache_lease(t->redis, req->token_sha256, lease);
    store_auth_t s;
    int rc = store_session_auth(t->pg, call->arena, req->token_sha256, &s);
    if (rc == -ENOENT) {
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "session expired or revoked");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "session");
        return;
    }
    if (s.stale &&
        store_session_touch(t->pg, s.session_id, identity_cfg.idle_s, &s.valid_until_ms) != 0)
        log_warn("could not touch session %s", s.session_id);
    Extranet__Identity__AuthenticateReply reply = EXTRANET__IDENTITY__AUTHENTICATE_REPLY__INIT;
    reply.user_id = s.user_id;
    reply.kind = s.kind;
    reply.session_id = s.session_id;
    reply.mfa_pending = s.mfa_pending;
    reply.valid_until_ms = s.valid_until_ms;
    int64_t ttl = rules_session_cache_ttl_ms(util_now_ms(), s.valid_until_ms);
    if (leased && ttl > 0) {
        if (identity_cfg.fill_delay_ms > 0) { /* tests: widen the read -> write window */
            struct timespec ts = {identity_cfg.fill_delay_ms / 1000,
                                  (identity_cfg.fill_delay_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
        sessions_entry_t e = {s.user_id, s.kind, s.session_id, s.mfa_pending, s.valid_until_ms};
        (void)sessions_cache_fill(t->redis, req->token_sha256, lease, &e, ttl);
    }
    svc_reply_ok(call, &reply.base);
}
