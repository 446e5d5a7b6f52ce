/* identity's methods: one handler per protobuf method (the table at the end), each checking
 * its actor first (rules.c), then its input, then doing the work through store.c. Anything
 * that revokes sessions commits in PostgreSQL (queuing the Redis deletes in the same
 * transaction), deletes the Redis entries, publishes session.revoked, and only then answers;
 * if Redis could not be reached the caller gets UNAVAILABLE and the tick finishes the job. */
#include "handlers.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "expiry.pb-c.h"
#include "identity.pb-c.h"
#include "password.h"
#include "rules.h"
#include "sessions.h"
#include "store.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

identity_cfg_t identity_cfg;

#define BAD_LOGIN "invalid email or password"

/* --- small helpers ------------------------------------------------------------------------ */

static const Extranet__Actor *s_actor(const svc_call_t *call)
{
    return call->req->actor;
}

/* Checks the actor against the method's access; answers and returns false when refused. */
static bool s_allowed_or_reply(svc_call_t *call, rules_access_t access)
{
    const Extranet__Actor *a = s_actor(call);
    Extranet__Status st = rules_access_check(access, a);
    if (st == EXTRANET__STATUS__OK && (access == ACCESS_USER || access == ACCESS_USER_PENDING ||
                                       access == ACCESS_ADMIN ||
                                       (access == ACCESS_ADMIN_SYSTEM &&
                                        a->kind != EXTRANET__ACTOR_KIND__SYSTEM))) {
        /* A signed-in actor: its ids end up in SQL as uuids. */
        if (!util_uuid_valid(a->user_id) || !util_uuid_valid(a->session_id))
            st = EXTRANET__STATUS__UNAUTHENTICATED;
    }
    switch (st) {
    case EXTRANET__STATUS__OK:
        return true;
    case EXTRANET__STATUS__UNAUTHENTICATED:
        svc_fail(call, st, "authentication required");
        break;
    case EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED:
        svc_fail(call, st, "two-factor authentication must be enrolled first");
        break;
    default:
        svc_fail(call, st, "not allowed");
        break;
    }
    return false;
}

/* Answers a store error: -ENOENT -> NOT_FOUND (what), -EEXIST -> CONFLICT, else INTERNAL. */
static void s_store_fail(svc_call_t *call, int rc, const char *what)
{
    if (rc == -ENOENT)
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, "%s not found", what);
    else if (rc == -EEXIST)
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "%s already exists", what);
    else if (rc == -EAGAIN)
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "conflicting update, please retry");
    else {
        log_error("store failed: %d", rc);
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
    }
}

static bool s_invalid_or_reply(svc_call_t *call, const char *err)
{
    if (!err)
        return false;
    svc_fail(call, EXTRANET__STATUS__INVALID, "%s", err);
    return true;
}

static bool s_uuid_or_reply(svc_call_t *call, const char *field, const char *id)
{
    if (util_uuid_valid(id))
        return true;
    svc_fail(call, EXTRANET__STATUS__INVALID, "%s must be a uuid", field);
    return false;
}

/* "{a,b,c}" from n hex/uuid strings (no quoting needed), in the arena. */
static char *s_array_literal(arena_t *a, char *const *items, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += strlen(items[i]) + 1;
    char *out = arena_alloc(a, len);
    if (!out)
        return NULL;
    char *p = out;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(items[i]);
        if (i)
            *p++ = ',';
        memcpy(p, items[i], k);
        p += k;
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

/* After a commit that queued pending invalidations: deletes the Redis entries, drops the
 * pending rows, publishes session.revoked (when reason is given) and returns 0, or -EIO when
 * Redis could not be reached (the rows stay for the tick to retry). */
static int s_after_revoke(svc_thread_t *t, arena_t *a, const char *user_id,
                          const store_hashes_t *h, const char *reason)
{
    if (h->n == 0)
        return 0;
    int rc = sessions_cache_delete(t->redis, h->hashes, h->n);
    if (rc == 0) {
        char *arr = s_array_literal(a, h->hashes, h->n);
        if (!arr || store_pending_done(t->pg, arr) != 0)
            log_warn("pending invalidations kept; the tick will clear them");
    } else {
        log_warn("redis unreachable: %zu session cache entries queued for invalidation", h->n);
    }
    if (reason) {
        Extranet__Identity__SessionRevoked ev = EXTRANET__IDENTITY__SESSION_REVOKED__INIT;
        ev.user_id = (char *)user_id;
        ev.n_session_ids = h->n;
        ev.session_ids = h->ids;
        ev.reason = (char *)reason;
        if (t->events && ev_publish(t->events, "session.revoked", &ev.base) != 0)
            log_warn("could not publish session.revoked");
    }
    return rc;
}

/* Queues a security notice for user (no-op when mail is disabled). Inside the caller's
 * transaction when there is one, so it goes out only if the change committed. */
static void s_notice(svc_thread_t *t, const Extranet__Identity__User *u, const char *subject,
                     const char *what)
{
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0])
        return;
    char body[1024];
    snprintf(body, sizeof body,
             "Hello %s,\n\n%s\n\nIf this was not you, contact your administrator at once.\n\n"
             "-- extranet\n",
             u->display_name, what);
    if (store_mail_enqueue(t->pg, u->email, subject, body) != 0)
        log_warn("could not queue the security notice \"%s\"", subject);
}

/* Registers (due_at != NULL) or cancels the user.expire timer. The expiry service is the
 * clean-up, not the guard (authentication compares expires_at itself, R9), so a failure is
 * logged and the caller still answers OK. */
static void s_expiry(svc_thread_t *t, svc_call_t *call, const char *user_id, const char *due_at)
{
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    int64_t left = svc_call_remaining_ms(call) - 300;
    int64_t deadline = util_now_ms() + (left < 2000 ? (left > 100 ? left : 100) : 2000);
    char err[160] = "";
    int rc;
    if (due_at) {
        Extranet__Expiry__Timer timer = EXTRANET__EXPIRY__TIMER__INIT;
        timer.kind = "user.expire";
        timer.subject = (char *)user_id;
        timer.due_at = (char *)due_at;
        Extranet__Expiry__ScheduleRequest req = EXTRANET__EXPIRY__SCHEDULE_REQUEST__INIT;
        req.timer = &timer;
        rc = rpc_call(t->rpc, "expiry.Schedule", &sys, call->req->request_id, deadline, &req.base,
                      NULL, NULL, err, sizeof err);
    } else {
        Extranet__Expiry__CancelRequest req = EXTRANET__EXPIRY__CANCEL_REQUEST__INIT;
        req.kind = "user.expire";
        req.subject = (char *)user_id;
        rc = rpc_call(t->rpc, "expiry.Cancel", &sys, call->req->request_id, deadline, &req.base,
                      NULL, NULL, err, sizeof err);
    }
    if (rc != 0)
        log_warn("expiry.%s for user %s failed (%d: %s); authentication still enforces "
                 "expires_at",
                 due_at ? "Schedule" : "Cancel", user_id, rc, err);
}

/* Creates a session for u and fills reply->token. Returns 0 or answers and returns -1. */
static int s_session_or_reply(svc_thread_t *t, svc_call_t *call, const char *user_id,
                              char **ret_token)
{
    char token[SESSIONS_TOKEN_LEN + 1], hash[SESSIONS_HASH_LEN + 1], sid[37];
    const Extranet__Actor *a = s_actor(call);
    char ip[65] = "";
    if (a && a->client_ip)
        snprintf(ip, sizeof ip, "%s", a->client_ip);
    sessions_token_new(token, hash);
    int rc = store_session_insert(t->pg, hash, user_id, ip, identity_cfg.idle_s,
                                  identity_cfg.max_s, sid);
    if (rc != 0) {
        sodium_memzero(token, sizeof token);
        s_store_fail(call, rc, "session");
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
                             bool *ret)
{
    *ret = false;
    if (strcmp(u->kind, "extranet") != 0 || u->mfa_enabled)
        return 0;
    Extranet__Identity__Policy p = EXTRANET__IDENTITY__POLICY__INIT;
    int rc = store_policy_get(t->pg, &p);
    if (rc != 0) {
        s_store_fail(call, rc, "policy");
        return -1;
    }
    *ret = p.extranet_mfa_required;
    return 0;
}

static void s_reply_login(svc_thread_t *t, svc_call_t *call, Extranet__Identity__User *u)
{
    Extranet__Identity__LoginReply reply = EXTRANET__IDENTITY__LOGIN_REPLY__INIT;
    bool pending = false;
    if (s_enroll_required(t, call, u, &pending) != 0)
        return;
    if (s_session_or_reply(t, call, u->id, &reply.token) != 0)
        return;
    reply.user = u;
    reply.mfa_enrollment_required = pending;
    svc_reply_ok(call, &reply.base);
}

/* --- auth --------------------------------------------------------------------------------- */

static void h_login(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__LoginRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ANY) ||
        s_invalid_or_reply(call, rules_email_check(req->email)) ||
        s_invalid_or_reply(call, rules_login_password_check(req->password)))
        return;
    store_user_t u;
    int rc = store_user_by_email(t->pg, call->arena, req->email, &u);
    if (rc == -ENOENT) {
        password_verify_dummy(req->password);  /* same time as a known email */
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, BAD_LOGIN);
        return;
    }
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    if (!password_verify(u.password_hash, req->password) || !u.usable) {
        log_info("login refused for user %s", u.user->id);
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, BAD_LOGIN);
        return;
    }
    if (password_needs_rehash(u.password_hash)) {
        char hash[PASSWORD_HASH_LEN];
        if (password_hash(req->password, hash) != 0 ||
            store_user_set_password(t->pg, u.user->id, hash) != 0)
            log_warn("could not upgrade the password hash of user %s", u.user->id);
    }
    if (u.user->mfa_enabled) {
        char token[SESSIONS_TOKEN_LEN + 1], hash[SESSIONS_HASH_LEN + 1];
        const Extranet__Actor *a = s_actor(call);
        sessions_token_new(token, hash);
        rc = store_mfa_token_insert(t->pg, hash, u.user->id, a ? a->client_ip : "");
        if (rc != 0) {
            sodium_memzero(token, sizeof token);
            s_store_fail(call, rc, "mfa token");
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
    log_info("login of user %s", u.user->id);
    s_reply_login(t, call, u.user);
}

/* Checks a recovery code against the user's unused ones; true when one matched and was
 * used up by this call. */
static bool s_recovery_use(svc_thread_t *t, arena_t *a, const char *user_id, const char *code)
{
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
static bool s_totp_use(svc_thread_t *t, arena_t *a, const char *user_id, const char *code)
{
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
static void s_mfa_token_drop(svc_thread_t *t, const char *hash)
{
    int rc = store_mfa_token_take(t->pg, hash);
    if (rc != 0 && rc != -ENOENT)
        log_warn("could not delete an mfa token (%d); it expires within 5 minutes", rc);
}

static void h_login_mfa(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__LoginMfaRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ANY))
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
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    if (rc != 0) {
        s_store_fail(call, rc, "mfa token");
        return;
    }
    store_user_t u;
    rc = store_user_by_id(t->pg, call->arena, user_id, &u);
    if (rc != 0 || !u.usable) {
        s_mfa_token_drop(t, hash);
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    bool recovery = false, ok;
    if (rules_totp_code_shape(req->code)) {
        ok = s_totp_use(t, call->arena, user_id, req->code);
    } else {
        ok = recovery = s_recovery_use(t, call->arena, user_id, req->code);
    }
    if (!ok) {
        if (tries >= 5)
            s_mfa_token_drop(t, hash);  /* used up: log in again */
        log_info("2FA code refused for user %s (try %d)", user_id, tries);
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid code");
        return;
    }
    /* Taking the token is what makes it single-use when two requests race with it. */
    if (store_mfa_token_take(t->pg, hash) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "invalid or expired mfa_token");
        return;
    }
    if (recovery)
        s_notice(t, u.user, "A recovery code was used",
                 "One of your 2FA recovery codes was just used to sign in to your account.");
    log_info("login with 2FA of user %s%s", user_id, recovery ? " (recovery code)" : "");
    s_reply_login(t, call, u.user);
}

static void h_logout(svc_thread_t *t, svc_call_t *call)
{
    if (!s_allowed_or_reply(call, ACCESS_USER_PENDING))
        return;
    const Extranet__Actor *a = s_actor(call);
    store_hashes_t h;
    int rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ONE, a->user_id,
                                   a->session_id, &h);
    if (rc != 0) {
        s_store_fail(call, rc, "session");
        return;
    }
    if (s_after_revoke(t, call->arena, a->user_id, &h, "logout") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "logged out, but the session cache is not cleared yet; retry");
        return;
    }
    svc_reply_ok(call, NULL);
}

static void h_authenticate(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__AuthenticateRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ANY))
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
        s_store_fail(call, rc, "session");
        return;
    }
    if (s.stale && store_session_touch(t->pg, s.session_id, identity_cfg.idle_s,
                                       &s.valid_until_ms) != 0)
        log_warn("could not touch session %s", s.session_id);
    Extranet__Identity__AuthenticateReply reply = EXTRANET__IDENTITY__AUTHENTICATE_REPLY__INIT;
    reply.user_id = s.user_id;
    reply.kind = s.kind;
    reply.session_id = s.session_id;
    reply.mfa_pending = s.mfa_pending;
    reply.valid_until_ms = s.valid_until_ms;
    int64_t ttl = rules_session_cache_ttl_ms(util_now_ms(), s.valid_until_ms);
    if (leased && ttl > 0) {
        sessions_entry_t e = {s.user_id, s.kind, s.session_id, s.mfa_pending, s.valid_until_ms};
        (void)sessions_cache_fill(t->redis, req->token_sha256, lease, &e, ttl);
    }
    svc_reply_ok(call, &reply.base);
}

/* --- me ----------------------------------------------------------------------------------- */

/* Loads the actor's user; answers UNAUTHENTICATED when it is gone. */
static int s_me_or_reply(svc_thread_t *t, svc_call_t *call, store_user_t *u)
{
    int rc = store_user_by_id(t->pg, call->arena, s_actor(call)->user_id, u);
    if (rc == 0 && u->usable)
        return 0;
    if (rc == 0 || rc == -ENOENT)
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "authentication required");
    else
        s_store_fail(call, rc, "user");
    return -1;
}

static void h_get_me(svc_thread_t *t, svc_call_t *call)
{
    store_user_t u;
    if (!s_allowed_or_reply(call, ACCESS_USER_PENDING) || s_me_or_reply(t, call, &u) != 0)
        return;
    svc_reply_ok(call, &u.user->base);
}

static void h_mfa_enroll(svc_thread_t *t, svc_call_t *call)
{
    store_user_t u;
    if (!s_allowed_or_reply(call, ACCESS_USER_PENDING) || s_me_or_reply(t, call, &u) != 0)
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
    rc = store_mfa_enroll(t->pg, u.user->id, sealed);
    if (rc == -EEXIST) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT,
                 "two-factor authentication is already enabled; an admin can reset it");
        return;
    }
    if (rc != 0) {
        s_store_fail(call, rc, "2FA");
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

static void h_mfa_confirm(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__MfaConfirmRequest *req = (const void *)call->msg;
    store_user_t u;
    if (!s_allowed_or_reply(call, ACCESS_USER_PENDING))
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
        s_store_fail(call, rc, "2FA");
        return;
    }
    uint8_t secret[TOTP_SECRET_LEN];
    int64_t step = 0;
    if (totp_secret_open(identity_cfg.data_key, m.secret_enc, secret) != 0) {
        log_error("the TOTP secret of user %s does not open: wrong EXTRANET_DATA_KEY?",
                  u.user->id);
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
        return;
    }
    rc = totp_verify(secret, sizeof secret, time(NULL), req->code, m.last_step, &step);
    sodium_memzero(secret, sizeof secret);
    if (rc != 0) {
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
    char *salt_arr = s_array_literal(call->arena, salts, TOTP_RECOVERY_COUNT);
    char *hash_arr = s_array_literal(call->arena, hashes, TOTP_RECOVERY_COUNT);
    store_hashes_t h = {0};
    if (!salt_arr || !hash_arr) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_mfa_confirm(t->pg, u.user->id, m.secret_enc, step)) != 0 ||
        (rc = store_recovery_replace(t->pg, u.user->id, salt_arr, hash_arr)) != 0 ||
        (rc = store_sessions_invalidate_user(t->pg, call->arena, u.user->id, &h)) != 0) {
        pg_rollback(t->pg);
        if (rc == -ENOENT)
            svc_fail(call, EXTRANET__STATUS__CONFLICT, "the enrollment changed; enroll again");
        else
            s_store_fail(call, rc, "2FA");
        return;
    }
    s_notice(t, u.user, "Two-factor authentication enabled",
             "Two-factor authentication was enabled for your account.");
    if ((rc = pg_commit(t->pg)) != 0) {
        s_store_fail(call, rc, "2FA");
        return;
    }
    /* The cached entries say mfa_pending=1: a stale one only restricts (up to 60 s), so a
     * Redis failure here is left to the tick instead of failing the confirmation. */
    (void)s_after_revoke(t, call->arena, u.user->id, &h, NULL);
    log_info("2FA confirmed for user %s", u.user->id);
    svc_reply_ok(call, &reply.base);
}

static void h_list_sessions(svc_thread_t *t, svc_call_t *call)
{
    if (!s_allowed_or_reply(call, ACCESS_USER))
        return;
    const Extranet__Actor *a = s_actor(call);
    Extranet__Identity__SessionList reply = EXTRANET__IDENTITY__SESSION_LIST__INIT;
    int rc = store_sessions_list(t->pg, call->arena, a->user_id, a->session_id,
                                 &reply.sessions, &reply.n_sessions);
    if (rc != 0) {
        s_store_fail(call, rc, "sessions");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

static void s_revoke(svc_thread_t *t, svc_call_t *call, store_revoke_t which, const char *sid)
{
    const Extranet__Actor *a = s_actor(call);
    store_hashes_t h;
    int rc = store_sessions_revoke(t->pg, call->arena, which, a->user_id, sid, &h);
    if (rc != 0) {
        s_store_fail(call, rc, "session");
        return;
    }
    if (which == STORE_REVOKE_ONE && h.n == 0) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, "session not found");
        return;
    }
    if (s_after_revoke(t, call->arena, a->user_id, &h, "revoked") != 0) {
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

static void h_revoke_session(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__SessionIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_USER) || !s_uuid_or_reply(call, "id", req->id))
        return;
    s_revoke(t, call, STORE_REVOKE_ONE, req->id);
}

static void h_revoke_other_sessions(svc_thread_t *t, svc_call_t *call)
{
    if (!s_allowed_or_reply(call, ACCESS_USER))
        return;
    s_revoke(t, call, STORE_REVOKE_OTHERS, s_actor(call)->session_id);
}

static void h_change_password(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__ChangePasswordRequest *req = (const void *)call->msg;
    store_user_t u;
    if (!s_allowed_or_reply(call, ACCESS_USER))
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
    if (!password_verify(u.password_hash, req->old_password)) {
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
                                    s_actor(call)->session_id, &h)) != 0) {
        pg_rollback(t->pg);
        s_store_fail(call, rc, "user");
        return;
    }
    s_notice(t, u.user, "Your password was changed",
             "The password of your account was changed; your other sessions were signed out.");
    if ((rc = pg_commit(t->pg)) != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    log_info("password changed by user %s", u.user->id);
    if (s_after_revoke(t, call->arena, u.user->id, &h, "password") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "password changed, but other sessions are not cleared from the cache yet");
        return;
    }
    svc_reply_ok(call, NULL);
}

/* --- admin -------------------------------------------------------------------------------- */

static void h_list_users(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__ListUsersRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    int limit = req->limit ? req->limit : 50;
    if (limit < 1 || limit > 200) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "limit must be 1..200");
        return;
    }
    if ((req->kind[0] && s_invalid_or_reply(call, rules_kind_check(req->kind, true))) ||
        (req->status[0] && s_invalid_or_reply(call, rules_status_check(req->status))))
        return;
    if (strlen(req->q) > 200) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "q must be at most 200 bytes");
        return;
    }
    /* The cursor is the hex of the last email of the previous page (emails are stored in
     * lower case and unique). */
    char after[256] = "";
    size_t n = 0;
    if (req->cursor[0] && (strlen(req->cursor) > 2 * 254 ||
                           sodium_hex2bin((unsigned char *)after, sizeof after - 1, req->cursor,
                                          strlen(req->cursor), NULL, &n, NULL) != 0 ||
                           n == 0 || memchr(after, '\0', n))) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "invalid cursor");
        return;
    }
    after[n] = '\0';
    Extranet__Identity__UserList reply = EXTRANET__IDENTITY__USER_LIST__INIT;
    bool more = false;
    int rc = store_users_list(t->pg, call->arena, after, req->kind, req->status, req->q, limit,
                              &reply.users, &reply.n_users, &more);
    if (rc != 0) {
        s_store_fail(call, rc, "users");
        return;
    }
    if (more && reply.n_users > 0) {
        const char *last = reply.users[reply.n_users - 1]->email;
        reply.next_cursor = arena_alloc(call->arena, 2 * strlen(last) + 1);
        if (!reply.next_cursor) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        sodium_bin2hex(reply.next_cursor, 2 * strlen(last) + 1, (const unsigned char *)last,
                       strlen(last));
    }
    svc_reply_ok(call, &reply.base);
}

/* Inserts a user after validating the fields; answers either way. */
static void s_create_user(svc_thread_t *t, svc_call_t *call, const char *email,
                          const char *display_name, const char *kind, const char *password,
                          const char *expires_at)
{
    if (s_invalid_or_reply(call, rules_email_check(email)))
        return;
    char local[65];
    if (!display_name[0]) {
        /* Default to the local part of the address, something people recognise. */
        snprintf(local, sizeof local, "%.*s", (int)(strchr(email, '@') - email), email);
        display_name = local;
    }
    if (s_invalid_or_reply(call, rules_display_name_check(display_name)) ||
        s_invalid_or_reply(call, rules_password_check(password)) ||
        (expires_at[0] && s_invalid_or_reply(call, rules_rfc3339_check(expires_at))))
        return;
    char hash[PASSWORD_HASH_LEN];
    if (password_hash(password, hash) != 0) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "could not hash the password");
        return;
    }
    Extranet__Identity__User *u = NULL;
    int rc = store_user_insert(t->pg, call->arena, email, display_name, kind, hash,
                               expires_at[0] ? expires_at : NULL, &u);
    if (rc == -EEXIST) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "a user with this email already exists");
        return;
    }
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s created (%s)", u->id, kind);
    if (u->expires_at[0])
        s_expiry(t, call, u->id, u->expires_at);
    svc_reply_ok(call, &u->base);
}

static void h_create_user(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__CreateUserRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    /* Admins may create extranet users directly too (e.g. without an invitation). */
    const char *kind = req->kind[0] ? req->kind : "employee";
    if (s_invalid_or_reply(call, rules_kind_check(kind, true)))
        return;
    s_create_user(t, call, req->email, req->display_name, kind, req->password, req->expires_at);
}

static void h_get_user(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM) || !s_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    svc_reply_ok(call, &u.user->base);
}

/* Revokes (all sessions) or only invalidates the cache of a user inside an open transaction,
 * commits, clears Redis and answers: OK with the reloaded user, or UNAVAILABLE. */
static void s_commit_and_reply(svc_thread_t *t, svc_call_t *call, const char *id,
                               store_hashes_t *h, const char *reason)
{
    int rc = pg_commit(t->pg);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    if (s_after_revoke(t, call->arena, id, h, reason) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "saved, but the session cache is not cleared yet; retry");
        return;
    }
    store_user_t u;
    rc = store_user_by_id(t->pg, call->arena, id, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    svc_reply_ok(call, &u.user->base);
}

static void h_update_user(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UpdateUserRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN) || !s_uuid_or_reply(call, "id", req->id))
        return;
    if ((req->display_name[0] &&
         s_invalid_or_reply(call, rules_display_name_check(req->display_name))) ||
        (req->status[0] && s_invalid_or_reply(call, rules_status_check(req->status))) ||
        (req->expires_at[0] && s_invalid_or_reply(call, rules_rfc3339_check(req->expires_at))))
        return;
    if (req->expires_at[0] && req->clear_expires_at) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "expires_at and clear_expires_at exclude "
                                                  "each other");
        return;
    }
    store_user_t before;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &before);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    bool deactivate = !strcmp(req->status, "deactivated") &&
                      strcmp(before.user->status, "deactivated") != 0;
    if (deactivate && !strcmp(req->id, s_actor(call)->user_id)) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "you cannot deactivate your own account");
        return;
    }
    bool expiry_changed = req->expires_at[0] || (req->clear_expires_at && before.user->expires_at[0]);
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_user_update(t->pg, req->id, req->display_name[0] ? req->display_name : NULL,
                                req->status[0] ? req->status : NULL,
                                req->expires_at[0] ? req->expires_at : NULL,
                                req->clear_expires_at)) != 0 ||
        (deactivate && (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id,
                                                   NULL, &h)) != 0) ||
        (!deactivate && expiry_changed &&
         (rc = store_sessions_invalidate_user(t->pg, call->arena, req->id, &h)) != 0)) {
        pg_rollback(t->pg);
        s_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s updated by %s%s", req->id, s_actor(call)->user_id,
             deactivate ? " (deactivated)" : "");
    if (expiry_changed) {
        /* Reload for the normalized (UTC) time, then tell expiry after the commit below. */
        s_commit_and_reply(t, call, req->id, &h, deactivate ? "deactivated" : NULL);
        if (call->status == EXTRANET__STATUS__OK || call->status == EXTRANET__STATUS__UNAVAILABLE) {
            store_user_t after;
            if (store_user_by_id(t->pg, call->arena, req->id, &after) == 0)
                s_expiry(t, call, req->id, after.user->expires_at[0] ? after.user->expires_at
                                                                     : NULL);
        }
        return;
    }
    s_commit_and_reply(t, call, req->id, &h, deactivate ? "deactivated" : NULL);
}

static void h_deactivate(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM) || !s_uuid_or_reply(call, "id", req->id))
        return;
    const Extranet__Actor *a = s_actor(call);
    /* expiry fires for user.expire timers: act only when expires_at really passed, so a
     * timer that outlived a cleared or moved expires_at does nothing (and is acked). */
    bool by_timer = a->kind == EXTRANET__ACTOR_KIND__SYSTEM;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    if (!by_timer && !strcmp(req->id, a->user_id)) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "you cannot deactivate your own account");
        return;
    }
    bool changed = false;
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_user_deactivate(t->pg, req->id, by_timer, &changed)) != 0) {
        pg_rollback(t->pg);
        s_store_fail(call, rc, "user");
        return;
    }
    bool revoke = changed || !strcmp(u.user->status, "deactivated") || !u.usable;
    if (revoke && (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL,
                                              &h)) != 0) {
        pg_rollback(t->pg);
        s_store_fail(call, rc, "user");
        return;
    }
    if ((rc = pg_commit(t->pg)) != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    if (changed)
        log_info("user %s deactivated%s", req->id, by_timer ? " (expired)" : "");
    if (s_after_revoke(t, call->arena, req->id, &h, by_timer ? "expired" : "deactivated") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "deactivated, but the session cache is not cleared yet; retry");
        return;
    }
    svc_reply_ok(call, NULL);
}

static void h_reactivate(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN) || !s_uuid_or_reply(call, "id", req->id))
        return;
    int rc = store_user_update(t->pg, req->id, NULL, "active", NULL, false);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s reactivated", req->id);
    svc_reply_ok(call, NULL);
}

static void h_transfer(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN) || !s_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    if (strcmp(u.user->kind, "extranet") != 0) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "only extranet users can be transferred");
        return;
    }
    /* Memberships live in membership and stay (R12); sessions go so the new kind applies. */
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_user_transfer(t->pg, req->id)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL, &h))) {
        pg_rollback(t->pg);
        if (rc == -ENOENT)
            svc_fail(call, EXTRANET__STATUS__CONFLICT, "only extranet users can be transferred");
        else
            s_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s transferred to the intranet by %s", req->id, s_actor(call)->user_id);
    s_commit_and_reply(t, call, req->id, &h, "transfer");
}

static void h_reset_mfa(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN) || !s_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    /* A reset usually means a lost or compromised device: every session goes too. */
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_mfa_delete(t->pg, req->id)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL, &h))) {
        pg_rollback(t->pg);
        s_store_fail(call, rc, "user");
        return;
    }
    s_notice(t, u.user, "Two-factor authentication was reset",
             "An administrator reset the two-factor authentication of your account. "
             "You will be asked to enroll it again.");
    log_info("2FA of user %s reset by %s", req->id, s_actor(call)->user_id);
    s_commit_and_reply(t, call, req->id, &h, "mfa_reset");
}

static void h_get_policy(svc_thread_t *t, svc_call_t *call)
{
    if (!s_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM))
        return;
    Extranet__Identity__Policy p = EXTRANET__IDENTITY__POLICY__INIT;
    int rc = store_policy_get(t->pg, &p);
    if (rc != 0) {
        s_store_fail(call, rc, "policy");
        return;
    }
    svc_reply_ok(call, &p.base);
}

static void h_set_policy(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__Policy *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    int rc = store_policy_set(t->pg, req);
    if (rc != 0) {
        s_store_fail(call, rc, "policy");
        return;
    }
    log_info("policy changed by %s: extranet_mfa_required=%d extranet_public_links_allowed=%d",
             s_actor(call)->user_id, req->extranet_mfa_required,
             req->extranet_public_links_allowed);
    h_get_policy(t, call);
}

/* --- internal ----------------------------------------------------------------------------- */

static void h_create_extranet_account(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__CreateExtranetAccountRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_SYSTEM))
        return;
    s_create_user(t, call, req->email, req->display_name, "extranet", req->password, "");
}

static void h_lookup_email(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__EmailRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_SYSTEM) ||
        s_invalid_or_reply(call, rules_email_check(req->email)))
        return;
    store_user_t u;
    int rc = store_user_by_email(t->pg, call->arena, req->email, &u);
    if (rc != 0) {
        s_store_fail(call, rc, "user");
        return;
    }
    svc_reply_ok(call, &u.user->base);
}

static void h_get_users(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__UserIdsRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM))
        return;
    if (req->n_ids > 500) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "at most 500 ids");
        return;
    }
    for (size_t i = 0; i < req->n_ids; i++)
        if (!s_uuid_or_reply(call, "ids", req->ids[i]))
            return;
    Extranet__Identity__UserList reply = EXTRANET__IDENTITY__USER_LIST__INIT;
    char *arr = s_array_literal(call->arena, req->ids, req->n_ids);
    if (!arr) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    int rc = store_users_by_ids(t->pg, call->arena, arr, &reply.users, &reply.n_users);
    if (rc != 0) {
        s_store_fail(call, rc, "users");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

static void h_send_mail(svc_thread_t *t, svc_call_t *call)
{
    const Extranet__Identity__SendMailRequest *req = (const void *)call->msg;
    if (!s_allowed_or_reply(call, ACCESS_SYSTEM))
        return;
    if (!mail_address_valid(req->to)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "to must be a plain email address");
        return;
    }
    if (!req->subject[0] || strlen(req->subject) > 998 || strchr(req->subject, '\r') ||
        strchr(req->subject, '\n')) {
        svc_fail(call, EXTRANET__STATUS__INVALID,
                 "subject must be 1..998 bytes on one line");
        return;
    }
    if (strlen(req->body) > 256 * 1024) {
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "body must be at most 256 KiB");
        return;
    }
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0]) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "mail is not configured");
        return;
    }
    /* Queued, sent by the tick within a second and retried with backoff: a short SMTP
     * outage loses nothing. */
    int rc = store_mail_enqueue(t->pg, req->to, req->subject, req->body);
    if (rc != 0) {
        s_store_fail(call, rc, "mail");
        return;
    }
    svc_reply_ok(call, NULL);
}

/* --- start and tick ----------------------------------------------------------------------- */

int identity_start(svc_thread_t *t)
{
    const char *email = identity_cfg.admin_email, *pw = identity_cfg.admin_password;
    if (!email || !email[0])
        return 0;
    const char *err = rules_email_check(email);
    if (!err && (!pw || !pw[0]))
        err = "EXTRANET_ADMIN_PASSWORD is not set";
    if (!err)
        err = rules_password_check(pw);
    if (err) {
        log_error("first admin not created: %s", err);
        return -EINVAL;
    }
    char hash[PASSWORD_HASH_LEN];
    bool created = false;
    if (password_hash(pw, hash) != 0)
        return -ENOMEM;
    int rc = store_admin_first(t->pg, email, "Administrator", hash, &created);
    if (rc != 0) {
        log_error("first admin not created: database error %d", rc);
        return rc;
    }
    if (created)
        log_info("first admin created for EXTRANET_ADMIN_EMAIL");
    return 0;
}

static void s_tick_invalidations(svc_thread_t *t, arena_t *a)
{
    store_hashes_t h;
    if (store_pending_batch(t->pg, a, 100, &h) != 0 || h.n == 0)
        return;
    if (sessions_cache_delete(t->redis, h.hashes, h.n) != 0)
        return;  /* still unreachable; next tick */
    char *arr = s_array_literal(a, h.hashes, h.n);
    if (!arr || store_pending_done(t->pg, arr) != 0)
        log_warn("could not clear %zu pending invalidations", h.n);
    else
        log_info("%zu pending session cache invalidations done", h.n);
}

static void s_tick_mail(svc_thread_t *t, arena_t *a)
{
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0])
        return;
    store_mail_t *m = NULL;
    size_t n = 0;
    if (store_mail_claim(t->pg, a, 20, &m, &n) != 0)
        return;
    for (size_t i = 0; i < n && !svc_stopping(); i++) {
        char err[256];
        int rc = mail_send(&identity_cfg.mail, m[i].rcpt, m[i].subject, m[i].body, err,
                           sizeof err);
        if (rc == 0 || rc == -EINVAL || m[i].attempts >= 30) {
            if (rc != 0)
                log_error("mail %s dropped after %d attempts (%d)", m[i].id, m[i].attempts, rc);
            if (store_mail_delete(t->pg, m[i].id) != 0)
                log_warn("could not delete sent mail %s", m[i].id);
        } else {
            log_warn("mail %s not sent (attempt %d): %s", m[i].id, m[i].attempts,
                     rc == -EIO ? err : "error");
        }
    }
}

void identity_tick(svc_thread_t *t)
{
    static __thread unsigned ticks;
    arena_t *a = arena_new(4 * 1024 * 1024);
    if (!a || !t->pg) {
        arena_destroy(&a);
        return;
    }
    s_tick_invalidations(t, a);
    arena_reset(a);
    s_tick_mail(t, a);
    if (ticks++ % 60 == 0 && store_cleanup(t->pg) != 0)
        log_warn("clean-up of expired sessions failed");
    arena_destroy(&a);
}

/* --- the dispatch table ------------------------------------------------------------------- */

#define M(name, fn, req) {"identity." name, fn, &req##__descriptor}
const svc_method_t identity_methods[] = {
    M("Login", h_login, extranet__identity__login_request),
    M("LoginMfa", h_login_mfa, extranet__identity__login_mfa_request),
    M("Logout", h_logout, extranet__empty),
    M("Authenticate", h_authenticate, extranet__identity__authenticate_request),
    M("GetMe", h_get_me, extranet__empty),
    M("MfaEnroll", h_mfa_enroll, extranet__empty),
    M("MfaConfirm", h_mfa_confirm, extranet__identity__mfa_confirm_request),
    M("ListSessions", h_list_sessions, extranet__empty),
    M("RevokeSession", h_revoke_session, extranet__identity__session_id_request),
    M("RevokeOtherSessions", h_revoke_other_sessions, extranet__empty),
    M("ChangePassword", h_change_password, extranet__identity__change_password_request),
    M("ListUsers", h_list_users, extranet__identity__list_users_request),
    M("CreateUser", h_create_user, extranet__identity__create_user_request),
    M("GetUser", h_get_user, extranet__identity__user_id_request),
    M("UpdateUser", h_update_user, extranet__identity__update_user_request),
    M("TransferToIntranet", h_transfer, extranet__identity__user_id_request),
    M("ResetMfa", h_reset_mfa, extranet__identity__user_id_request),
    M("GetPolicy", h_get_policy, extranet__empty),
    M("SetPolicy", h_set_policy, extranet__identity__policy),
    M("Deactivate", h_deactivate, extranet__identity__user_id_request),
    M("Reactivate", h_reactivate, extranet__identity__user_id_request),
    M("CreateExtranetAccount", h_create_extranet_account,
      extranet__identity__create_extranet_account_request),
    M("LookupEmail", h_lookup_email, extranet__identity__email_request),
    M("GetUsers", h_get_users, extranet__identity__user_ids_request),
    M("SendMail", h_send_mail, extranet__identity__send_mail_request),
    {NULL, NULL, NULL},
};
