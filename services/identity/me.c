/* identity's methods of the signed-in user about themselves: GetMe, 2FA enrolment and
 * confirmation (recovery codes), own sessions, password change. */
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

/* Loads the actor's user; answers UNAUTHENTICATED when it is gone. */
static int s_me_or_reply(svc_thread_t *t, svc_call_t *call, store_user_t *u) {
    int rc = store_user_by_id(t->pg, call->arena, call_actor(call)->user_id, u);
    if (rc == 0 && u->usable)
        return 0;
    if (rc == 0 || rc == -ENOENT)
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "authentication required");
    else
        call_store_fail(call, rc, "user");
    return -1;
}

void me_get(svc_thread_t *t, svc_call_t *call) {
    store_user_t u;
    if (!call_allowed_or_reply(call, ACCESS_USER_PENDING) || s_me_or_reply(t, call, &u) != 0)
        return;
    svc_reply_ok(call, &u.user->base);
}

void me_mfa_enroll(svc_thread_t *t, svc_call_t *call) {
    store_user_t u;
    if (!call_allowed_or_reply(call, ACCESS_USER_PENDING) || s_me_or_reply(t, call, &u) != 0)
        return;
    uint8_t secret[TOTP_SECRET_LEN];
    char sealed[TOTP_SEALED_HEX_LEN + 1], b32[TOTP_B32_LEN + 1], uri[1024];
    randombytes_buf(secret, sizeof secret);
    totp_secret_seal(identity_cfg.data_key, secret, sealed);
    int rc = totp_secret_base32(secret, b32);
    sodium_memzero(secret, sizeof secret);
    if (rc != 0 || totp_uri(b32, u.user->email, uri, sizeof uri) != 0) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "could not encode the secret");
        return;
    }
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_mfa_enroll(t->pg, u.user->id, sealed)) != 0 ||
        (rc = call_audit(t, call, NULL, "auth.mfa_enrolled", "user", u.user->id, "ok", NULL)) !=
            0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc == -EEXIST) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT,
                 "two-factor authentication is already enabled; an admin can reset it");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "2FA");
        return;
    }
    Extranet__Identity__MfaEnrollReply reply = EXTRANET__IDENTITY__MFA_ENROLL_REPLY__INIT;
    reply.secret = arena_strdup(call->arena, b32);
    reply.otpauth_uri = arena_strdup(call->arena, uri);
    sodium_memzero(b32, sizeof b32);
    sodium_memzero(uri, sizeof uri);
    if (!reply.secret || !reply.otpauth_uri) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

void me_mfa_confirm(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__MfaConfirmRequest *req = (const void *)call->msg;
    store_user_t u;
    if (!call_allowed_or_reply(call, ACCESS_USER_PENDING))
        return;
    if (!rules_totp_code_shape(req->code)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "code must be 6 digits");
        return;
    }
    if (s_me_or_reply(t, call, &u) != 0)
        return;
    store_mfa_t m;
    int rc = store_mfa_get(t->pg, call->arena, u.user->id, &m);
    if (rc == -ENOENT || (rc == 0 && m.confirmed)) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT,
                 rc ? "no enrollment in progress: call POST /me/mfa/enroll first"
                    : "two-factor authentication is already enabled");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "2FA");
        return;
    }
    uint8_t secret[TOTP_SECRET_LEN];
    int64_t step = 0;
    if (totp_secret_open(identity_cfg.data_key, m.secret_enc, secret) != 0) {
        log_error("the TOTP secret of user %s does not open: wrong EXTRANET_DATA_KEY?", u.user->id);
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
        return;
    }
    rc = totp_verify(secret, sizeof secret, time(NULL), req->code, m.last_step, &step);
    sodium_memzero(secret, sizeof secret);
    if (rc != 0) {
        call_audit_alone(t, call, NULL, "auth.mfa_failed", "user", u.user->id, "fail",
                         "{\"reason\":\"bad_code\",\"step\":\"confirm\"}");
        svc_fail(call, EXTRANET__STATUS__INVALID, "wrong code");
        return;
    }
    Extranet__Identity__MfaConfirmReply reply = EXTRANET__IDENTITY__MFA_CONFIRM_REPLY__INIT;
    char *salts[TOTP_RECOVERY_COUNT], *hashes[TOTP_RECOVERY_COUNT];
    reply.recovery_codes = arena_alloc(call->arena, TOTP_RECOVERY_COUNT * sizeof(char *));
    if (!reply.recovery_codes) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (int i = 0; i < TOTP_RECOVERY_COUNT; i++) {
        char code[TOTP_RECOVERY_DISPLAY_LEN + 1], norm[RULES_RECOVERY_LEN + 1];
        totp_recovery_new(code);
        (void)rules_recovery_normalize(code, norm);
        salts[i] = arena_alloc(call->arena, 33);
        hashes[i] = arena_alloc(call->arena, 65);
        reply.recovery_codes[i] = arena_strdup(call->arena, code);
        if (!salts[i] || !hashes[i] || !reply.recovery_codes[i]) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        totp_recovery_hash(norm, NULL, salts[i], hashes[i]);
    }
    reply.n_recovery_codes = TOTP_RECOVERY_COUNT;
    char *salt_arr = call_array_literal(call->arena, salts, TOTP_RECOVERY_COUNT);
    char *hash_arr = call_array_literal(call->arena, hashes, TOTP_RECOVERY_COUNT);
    store_hashes_t h = {0}, others = {0};
    if (!salt_arr || !hash_arr) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    /* mfa_pending is the user's, not the session's: confirming would lift R10 for every other
     * password-only session too (e.g. someone who had only the password). They are revoked. */
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_mfa_confirm(t->pg, u.user->id, m.secret_enc, step)) != 0 ||
        (rc = store_recovery_replace(t->pg, u.user->id, salt_arr, hash_arr)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_OTHERS, u.user->id,
                                    call_actor(call)->session_id, &others)) != 0 ||
        (rc = store_sessions_invalidate_user(t->pg, call->arena, u.user->id, &h)) != 0 ||
        (rc = call_audit(t, call, NULL, "auth.mfa_confirmed", "user", u.user->id, "ok", NULL)) !=
            0) {
        pg_rollback(t->pg);
        if (rc == -ENOENT)
            svc_fail(call, EXTRANET__STATUS__CONFLICT, "the enrollment changed; enroll again");
        else
            call_store_fail(call, rc, "2FA");
        return;
    }
    /* The revoked sessions' cache entries go before the commit too: without Redis nothing
     * changes and the user retries, rather than 2FA being on while they are still cached
     * (or being on without this answer's recovery codes). The delete after the commit below
     * catches a fill that raced with this one. */
    if (sessions_cache_delete(t->redis, others.hashes, others.n) != 0) {
        pg_rollback(t->pg);
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "the session cache cannot be reached; nothing changed, try again");
        return;
    }
    call_notice(t, u.user, "Two-factor authentication enabled",
                "Two-factor authentication was enabled for your account; your other sessions "
                "were signed out.");
    if ((rc = pg_commit(t->pg)) != 0) {
        call_store_fail(call, rc, "2FA");
        return;
    }
    if (call_after_revoke(t, call->arena, u.user->id, &others, "mfa_confirmed") != 0)
        log_warn("2FA confirmed for user %s: revoked sessions left to the tick", u.user->id);
    /* This session's cached entry says mfa_pending=1: a stale one only restricts (up to 60 s),
     * so a Redis failure here is left to the tick instead of failing the confirmation. */
    (void)call_after_revoke(t, call->arena, u.user->id, &h, NULL);
    log_info("2FA confirmed for user %s", u.user->id);
    svc_reply_ok(call, &reply.base);
}

void me_list_sessions(svc_thread_t *t, svc_call_t *call) {
    if (!call_allowed_or_reply(call, ACCESS_USER))
        return;
    const Extranet__Actor *a = call_actor(call);
    Extranet__Identity__SessionList reply = EXTRANET__IDENTITY__SESSION_LIST__INIT;
    int rc = store_sessions_list(t->pg, call->arena, a->user_id, a->session_id, &reply.sessions,
                                 &reply.n_sessions);
    if (rc != 0) {
        call_store_fail(call, rc, "sessions");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

static void s_revoke(svc_thread_t *t, svc_call_t *call, store_revoke_t which, const char *sid) {
    const Extranet__Actor *a = call_actor(call);
    store_hashes_t h;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, which, a->user_id, sid, &h)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "session");
        return;
    }
    if (which == STORE_REVOKE_ONE && h.n == 0) {
        pg_rollback(t->pg);
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, "session not found");
        return;
    }
    char details[64];
    snprintf(details, sizeof details, "{\"which\":\"%s\",\"count\":%zu}",
             which == STORE_REVOKE_ONE ? "one" : "others", h.n);
    if ((rc = call_audit(t, call, NULL, "session.revoked",
                         which == STORE_REVOKE_ONE ? "session" : "user",
                         which == STORE_REVOKE_ONE ? sid : a->user_id, "ok", details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "session");
        return;
    }
    if (call_after_revoke(t, call->arena, a->user_id, &h, "revoked") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "revoked, but the session cache is not cleared yet; retry");
        return;
    }
    if (which == STORE_REVOKE_ONE) {
        svc_reply_ok(call, NULL);
        return;
    }
    Extranet__Identity__RevokeReply reply = EXTRANET__IDENTITY__REVOKE_REPLY__INIT;
    reply.revoked = (int32_t)h.n;
    svc_reply_ok(call, &reply.base);
}

void me_revoke_session(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__SessionIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_USER) || !call_uuid_or_reply(call, "id", req->id))
        return;
    s_revoke(t, call, STORE_REVOKE_ONE, req->id);
}

void me_revoke_other_sessions(svc_thread_t *t, svc_call_t *call) {
    if (!call_allowed_or_reply(call, ACCESS_USER))
        return;
    s_revoke(t, call, STORE_REVOKE_OTHERS, call_actor(call)->session_id);
}

void me_change_password(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__ChangePasswordRequest *req = (const void *)call->msg;
    store_user_t u;
    if (!call_allowed_or_reply(call, ACCESS_USER))
        return;
    if (!req->old_password[0]) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "old_password is required");
        return;
    }
    if (strlen(req->old_password) > 1024) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "old_password is too long");
        return;
    }
    const char *err = rules_password_check(req->new_password);
    if (err) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "new_password: %s", err);
        return;
    }
    if (s_me_or_reply(t, call, &u) != 0)
        return;
    /* The old password is a password guess like a sign-in's (a stolen session must not make
     * it an oracle): the same per-account backoff, keyed like Login's (emails are stored
     * lower-cased). */
    char account[SESSIONS_HASH_LEN + 1];
    sessions_token_hash(u.user->email, account);
    int wait = 0;
    if (store_login_wait(t->pg, account, &wait) == 0 && wait > 0) {
        call_audit_alone(t, call, NULL, "user.password_changed", "user", u.user->id, "denied",
                         "{\"reason\":\"rate_limited\"}");
        svc_fail(call, EXTRANET__STATUS__RATE_LIMITED,
                 "too many wrong passwords; try again in %d seconds", wait);
        call->retry_after_s = wait;
        return;
    }
    if (!password_verify(u.password_hash, req->old_password)) {
        if (store_login_failed(t->pg, account) != 0)
            log_warn("could not count a wrong old password of user %s", u.user->id);
        call_audit_alone(t, call, NULL, "user.password_changed", "user", u.user->id, "fail",
                         "{\"reason\":\"bad_old_password\"}");
        svc_fail(call, EXTRANET__STATUS__INVALID, "old_password is wrong");
        return;
    }
    char hash[PASSWORD_HASH_LEN];
    if (password_hash(req->new_password, hash) != 0) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "could not hash the password");
        return;
    }
    store_hashes_t h = {0};
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_user_set_password(t->pg, u.user->id, hash)) ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_OTHERS, u.user->id,
                                    call_actor(call)->session_id, &h)) != 0 ||
        (rc = call_audit(t, call, NULL, "user.password_changed", "user", u.user->id, "ok", NULL)) !=
            0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "user");
        return;
    }
    call_notice(t, u.user, "Your password was changed",
                "The password of your account was changed; your other sessions were signed out.");
    if ((rc = pg_commit(t->pg)) != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    if (store_login_ok(t->pg, account) != 0)
        log_warn("could not reset the sign-in backoff of user %s", u.user->id);
    log_info("password changed by user %s", u.user->id);
    if (call_after_revoke(t, call->arena, u.user->id, &h, "password") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "password changed, but other sessions are not cleared from the cache yet");
        return;
    }
    svc_reply_ok(call, NULL);
}
