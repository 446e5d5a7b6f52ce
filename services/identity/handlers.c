/* identity's dispatch table (one handler per protobuf method, in auth.c, me.c and admin.c),
 * the start hook (first admin) and the tick (pending invalidations, mail and timer outboxes,
 * clean-up). */
#include "calls.h"
#include "extranet/audit.h"
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

identity_cfg_t identity_cfg;

/* --- start and tick ----------------------------------------------------------------------- */

int identity_start(svc_thread_t *t) {
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
    char hash[PASSWORD_HASH_LEN], id[37];
    bool created = false;
    if (password_hash(pw, hash) != 0)
        return -ENOMEM;
    /* The account and its user.created record (actor system: no request made it) commit
     * together, like every other creation (R11). Several starting copies: one inserts, the
     * others find an admin and write nothing. */
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_admin_first(t->pg, email, "Administrator", hash, id, &created)) != 0 ||
        (created && (rc = audit_record(t->pg, &sys, "user.created", "user", id, NULL, "ok", NULL,
                                       "{\"kind\":\"admin\"}")) != 0) ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        log_error("first admin not created: database error %d", rc);
        return rc;
    }
    if (created)
        log_info("first admin created for EXTRANET_ADMIN_EMAIL");
    return 0;
}

static void s_tick_invalidations(svc_thread_t *t, arena_t *a) {
    store_hashes_t h;
    if (store_pending_batch(t->pg, a, 100, &h) != 0 || h.n == 0)
        return;
    if (sessions_cache_delete(t->redis, h.hashes, h.n) != 0)
        return; /* still unreachable; next tick */
    char *arr = call_array_literal(a, h.hashes, h.n);
    if (!arr || store_pending_done(t->pg, arr) != 0)
        log_warn("could not clear %zu pending invalidations", h.n);
    else
        log_info("%zu pending session cache invalidations done", h.n);
}

static void s_tick_mail(svc_thread_t *t, arena_t *a) {
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0])
        return;
    store_mail_t *m = NULL;
    size_t n = 0;
    if (store_mail_claim(t->pg, identity_cfg.data_key, a, 20, &m, &n) != 0)
        return;
    for (size_t i = 0; i < n && !svc_stopping(); i++) {
        if (!m[i].body) { /* sealed with another EXTRANET_DATA_KEY: no retry can send it */
            if (store_mail_delete(t->pg, m[i].id) != 0)
                log_warn("could not delete unreadable mail %s", m[i].id);
            continue;
        }
        char err[256];
        int rc = mail_send(&identity_cfg.mail, m[i].rcpt, m[i].subject, m[i].body, err, sizeof err);
        if (rc == -EIO && m[i].attempts < 30) {
            /* The server is unreachable or refusing: the rest of the batch waits its
             * backoff instead of each costing another timeout now. */
            log_warn("mail %s not sent (attempt %d): %s", m[i].id, m[i].attempts, err);
            break;
        }
        if (rc == 0 || rc == -EINVAL || m[i].attempts >= 30) {
            if (rc != 0)
                log_error("mail %s dropped after %d attempts (%d)", m[i].id, m[i].attempts, rc);
            if (store_mail_delete(t->pg, m[i].id) != 0)
                log_warn("could not delete sent mail %s", m[i].id);
        } else {
            log_warn("mail %s not sent (attempt %d): error %d", m[i].id, m[i].attempts, rc);
        }
    }
}

/* Ships the expiry timer outbox: rows whose request could not reach expiry right after its
 * commit. OK (or INVALID, which no retry can fix) deletes the row (only its version: a newer
 * change stays); anything else leaves it to its backoff and ends the batch, so a down expiry
 * costs the tick one short call. */
static void s_tick_timers(svc_thread_t *t, arena_t *a) {
    store_timer_t *v = NULL;
    size_t n = 0;
    if (store_timer_claim(t->pg, a, 20, &v, &n) != 0)
        return;
    for (size_t i = 0; i < n && !svc_stopping(); i++) {
        char err[160] = "";
        int rc = call_expiry_send(t, NULL, &v[i], util_now_ms() + 1500, err, sizeof err);
        if (rc == -(1000 + EXTRANET__STATUS__INVALID))
            log_error("expiry refused %s for user %s (%s); dropped", v[i].op, v[i].user_id, err);
        else if (rc != 0) {
            log_warn("expiry %s for user %s failed (attempt %d, %d: %s); retried later", v[i].op,
                     v[i].user_id, v[i].attempts, rc, err);
            break;
        } else
            log_info("expiry %s for user %s sent from the outbox (attempt %d)", v[i].op,
                     v[i].user_id, v[i].attempts);
        if (store_timer_done(t->pg, v[i].user_id, v[i].gen) != 0)
            log_warn("could not delete the timer outbox row of user %s", v[i].user_id);
    }
}

void identity_tick(svc_thread_t *t) {
    static __thread unsigned ticks;
    arena_t *a = arena_new((size_t)4 * 1024 * 1024);
    if (!a || !t->pg) {
        arena_destroy(&a);
        return;
    }
    s_tick_invalidations(t, a);
    arena_reset(a);
    s_tick_mail(t, a);
    arena_reset(a);
    s_tick_timers(t, a);
    (void)audit_relay_tick(t); /* logs its own failures; rows wait in the outbox */
    if (ticks++ % 60 == 0 && store_cleanup(t->pg) != 0)
        log_warn("clean-up of expired sessions failed");
    arena_destroy(&a);
}

/* --- the dispatch table ------------------------------------------------------------------- */

#define M(name, fn, req)                                                                           \
    { "identity." name, fn, &req##__descriptor }
const svc_method_t identity_methods[] = {
    M("Login", auth_login, extranet__identity__login_request),
    M("LoginMfa", auth_login_mfa, extranet__identity__login_mfa_request),
    M("Logout", auth_logout, extranet__empty),
    M("Authenticate", auth_authenticate, extranet__identity__authenticate_request),
    M("GetMe", me_get, extranet__empty),
    M("MfaEnroll", me_mfa_enroll, extranet__empty),
    M("MfaConfirm", me_mfa_confirm, extranet__identity__mfa_confirm_request),
    M("ListSessions", me_list_sessions, extranet__empty),
    M("RevokeSession", me_revoke_session, extranet__identity__session_id_request),
    M("RevokeOtherSessions", me_revoke_other_sessions, extranet__empty),
    M("ChangePassword", me_change_password, extranet__identity__change_password_request),
    M("ListUsers", admin_list_users, extranet__identity__list_users_request),
    M("CreateUser", admin_create_user, extranet__identity__create_user_request),
    M("GetUser", admin_get_user, extranet__identity__user_id_request),
    M("UpdateUser", admin_update_user, extranet__identity__update_user_request),
    M("TransferToIntranet", admin_transfer, extranet__identity__user_id_request),
    M("ResetMfa", admin_reset_mfa, extranet__identity__user_id_request),
    M("GetPolicy", admin_get_policy, extranet__empty),
    M("SetPolicy", admin_set_policy, extranet__identity__policy),
    M("Deactivate", admin_deactivate, extranet__identity__user_id_request),
    M("Reactivate", admin_reactivate, extranet__identity__user_id_request),
    M("CreateExtranetAccount", admin_create_extranet_account,
      extranet__identity__create_extranet_account_request),
    M("LookupEmail", admin_lookup_email, extranet__identity__email_request),
    M("GetUsers", admin_get_users, extranet__identity__user_ids_request),
    M("SendMail", admin_send_mail, extranet__identity__send_mail_request),
    {NULL, NULL, NULL},
};
