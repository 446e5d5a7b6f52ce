/* identity's admin methods (users, expiry, deactivation, transfer R12, 2FA reset, policy) and
 * the internal ones other services call as SYSTEM (accounts for invitations, lookups, mail). */
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

void admin_list_users(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__ListUsersRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    int limit = req->limit ? req->limit : 50;
    if (limit < 1 || limit > 200) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "limit must be 1..200");
        return;
    }
    if ((req->kind[0] && call_invalid_or_reply(call, rules_kind_check(req->kind, true))) ||
        (req->status[0] && call_invalid_or_reply(call, rules_status_check(req->status))))
        return;
    if (strlen(req->q) > 200) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "q must be at most 200 bytes");
        return;
    }
    /* The cursor is the hex of the last email of the previous page (emails are stored in
     * lower case and unique). */
    char after[256] = "";
    size_t n = 0;
    if (req->cursor[0] && (strlen(req->cursor) > (size_t)2 * 254 ||
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
        call_store_fail(call, rc, "users");
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
                          const char *expires_at) {
    if (call_invalid_or_reply(call, rules_email_check(email)))
        return;
    char local[65];
    if (!display_name[0]) {
        /* Default to the local part of the address, something people recognise. */
        snprintf(local, sizeof local, "%.*s", (int)(strchr(email, '@') - email), email);
        display_name = local;
    }
    if (call_invalid_or_reply(call, rules_display_name_check(display_name)) ||
        call_invalid_or_reply(call, rules_password_check(password)) ||
        (expires_at[0] && call_invalid_or_reply(call, rules_rfc3339_check(expires_at))))
        return;
    char hash[PASSWORD_HASH_LEN];
    if (password_hash(password, hash) != 0) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "could not hash the password");
        return;
    }
    Extranet__Identity__User *u = NULL;
    char details[64];
    snprintf(details, sizeof details, "{\"kind\":\"%s\"}", kind);
    store_timer_t timer = {0};
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_user_insert(t->pg, call->arena, email, display_name, kind, hash,
                                expires_at[0] ? expires_at : NULL, &u)) != 0 ||
        (u->expires_at[0] &&
         (rc = store_timer_enqueue(t->pg, call->arena, u->id, CALL_EXPIRY_HOLD_S, &timer)) != 0) ||
        (rc = call_audit(t, call, NULL, "user.created", "user", u->id, "ok", details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc == -EEXIST) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "a user with this email already exists");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s created (%s)", u->id, kind);
    if (u->expires_at[0])
        call_expiry(t, call, &timer);
    svc_reply_ok(call, &u->base);
}

void admin_create_user(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__CreateUserRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    /* Admins may create extranet users directly too (e.g. without an invitation). */
    const char *kind = req->kind[0] ? req->kind : "employee";
    if (call_invalid_or_reply(call, rules_kind_check(kind, true)))
        return;
    s_create_user(t, call, req->email, req->display_name, kind, req->password, req->expires_at);
}

void admin_get_user(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM) ||
        !call_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    svc_reply_ok(call, &u.user->base);
}

/* Revokes (all sessions) or only invalidates the cache of a user inside an open transaction,
 * commits, clears Redis and answers: OK with the reloaded user, or UNAVAILABLE. Returns
 * whether the transaction committed. */
static bool s_commit_and_reply(svc_thread_t *t, svc_call_t *call, const char *id, store_hashes_t *h,
                               const char *reason) {
    int rc = pg_commit(t->pg);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return false;
    }
    if (call_after_revoke(t, call->arena, id, h, reason) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "saved, but the session cache is not cleared yet; retry");
        return true;
    }
    store_user_t u;
    rc = store_user_by_id(t->pg, call->arena, id, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return true;
    }
    svc_reply_ok(call, &u.user->base);
    return true;
}

void admin_update_user(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UpdateUserRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN) || !call_uuid_or_reply(call, "id", req->id))
        return;
    if ((req->display_name[0] &&
         call_invalid_or_reply(call, rules_display_name_check(req->display_name))) ||
        (req->status[0] && call_invalid_or_reply(call, rules_status_check(req->status))) ||
        (req->expires_at[0] && call_invalid_or_reply(call, rules_rfc3339_check(req->expires_at))))
        return;
    if (req->expires_at[0] && req->clear_expires_at) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "give expires_at or clear_expires_at, not both");
        return;
    }
    store_user_t before;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &before);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    bool deactivate =
        !strcmp(req->status, "deactivated") && strcmp(before.user->status, "deactivated") != 0;
    if (deactivate && !strcmp(req->id, call_actor(call)->user_id)) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "you cannot deactivate your own account");
        return;
    }
    bool expiry_changed =
        req->expires_at[0] || (req->clear_expires_at && before.user->expires_at[0]);
    bool reactivate = !strcmp(req->status, "active") && !strcmp(before.user->status, "deactivated");
    const char *action = deactivate   ? "user.deactivated"
                         : reactivate ? "user.reactivated"
                                      : "user.updated";
    /* which fields changed, never their values (names and dates stay in identity) */
    char details[160];
    snprintf(details, sizeof details, "{\"display_name\":%s,\"status\":%s,\"expires_at\":%s}",
             req->display_name[0] ? "true" : "false", req->status[0] ? "true" : "false",
             expiry_changed ? "true" : "false");
    store_hashes_t h = {0};
    store_timer_t timer = {0};
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_user_update(t->pg, req->id, req->display_name[0] ? req->display_name : NULL,
                                req->status[0] ? req->status : NULL,
                                req->expires_at[0] ? req->expires_at : NULL,
                                req->clear_expires_at)) != 0 ||
        /* the timer change is queued with the expires_at change (the tick ships it when
         * expiry cannot take it right after the commit) */
        (expiry_changed && (rc = store_timer_enqueue(t->pg, call->arena, req->id,
                                                     CALL_EXPIRY_HOLD_S, &timer)) != 0) ||
        (deactivate && (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id,
                                                   NULL, &h)) != 0) ||
        (!deactivate && expiry_changed &&
         (rc = store_sessions_invalidate_user(t->pg, call->arena, req->id, &h)) != 0) ||
        (rc = call_audit(t, call, NULL, action, "user", req->id, "ok", details)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s updated by %s%s", req->id, call_actor(call)->user_id,
             deactivate ? " (deactivated)" : "");
    if (s_commit_and_reply(t, call, req->id, &h, deactivate ? "deactivated" : NULL) &&
        expiry_changed)
        call_expiry(t, call, &timer); /* the fast path; the outbox row covers a failure */
}

void admin_deactivate(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM) ||
        !call_uuid_or_reply(call, "id", req->id))
        return;
    const Extranet__Actor *a = call_actor(call);
    /* expiry fires for user.expire timers: act only when expires_at really passed, so a
     * timer that outlived a cleared or moved expires_at does nothing (and is acked). */
    bool by_timer = a->kind == EXTRANET__ACTOR_KIND__SYSTEM;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
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
        call_store_fail(call, rc, "user");
        return;
    }
    bool revoke = changed || !strcmp(u.user->status, "deactivated") || !u.usable;
    /* A timer that finds nothing to do (expires_at moved or cleared) leaves no record. */
    if ((revoke && (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL,
                                               &h)) != 0) ||
        ((changed || !by_timer) &&
         (rc = call_audit(t, call, NULL, by_timer ? "user.expired" : "user.deactivated", "user",
                          req->id, "ok", changed ? NULL : "{\"changed\":false}")) != 0)) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "user");
        return;
    }
    if ((rc = pg_commit(t->pg)) != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    if (changed)
        log_info("user %s deactivated%s", req->id, by_timer ? " (expired)" : "");
    if (call_after_revoke(t, call->arena, req->id, &h, by_timer ? "expired" : "deactivated") != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "deactivated, but the session cache is not cleared yet; retry");
        return;
    }
    svc_reply_ok(call, NULL);
}

void admin_reactivate(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN) || !call_uuid_or_reply(call, "id", req->id))
        return;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_user_update(t->pg, req->id, NULL, "active", NULL, false)) != 0 ||
        (rc = call_audit(t, call, NULL, "user.reactivated", "user", req->id, "ok", NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s reactivated", req->id);
    svc_reply_ok(call, NULL);
}

void admin_transfer(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN) || !call_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    if (strcmp(u.user->kind, "extranet") != 0) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "only extranet users can be transferred");
        return;
    }
    /* Memberships live in membership and stay (R12); sessions go so the new kind applies. */
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_user_transfer(t->pg, req->id)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL, &h)) ||
        (rc = call_audit(t, call, NULL, "user.transferred", "user", req->id, "ok", NULL))) {
        pg_rollback(t->pg);
        if (rc == -ENOENT)
            svc_fail(call, EXTRANET__STATUS__CONFLICT, "only extranet users can be transferred");
        else
            call_store_fail(call, rc, "user");
        return;
    }
    log_info("user %s transferred to the intranet by %s", req->id, call_actor(call)->user_id);
    s_commit_and_reply(t, call, req->id, &h, "transfer");
}

void admin_reset_mfa(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN) || !call_uuid_or_reply(call, "id", req->id))
        return;
    store_user_t u;
    int rc = store_user_by_id(t->pg, call->arena, req->id, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    /* A reset usually means a lost or compromised device: every session goes too. */
    store_hashes_t h = {0};
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_mfa_delete(t->pg, req->id)) != 0 ||
        (rc = store_sessions_revoke(t->pg, call->arena, STORE_REVOKE_ALL, req->id, NULL, &h)) ||
        (rc = call_audit(t, call, NULL, "user.mfa_reset", "user", req->id, "ok", NULL))) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "user");
        return;
    }
    call_notice(t, u.user, "Two-factor authentication was reset",
                "An administrator reset the two-factor authentication of your account. "
                "You will be asked to enroll it again.");
    log_info("2FA of user %s reset by %s", req->id, call_actor(call)->user_id);
    s_commit_and_reply(t, call, req->id, &h, "mfa_reset");
}

void admin_get_policy(svc_thread_t *t, svc_call_t *call) {
    if (!call_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM))
        return;
    Extranet__Identity__Policy p = EXTRANET__IDENTITY__POLICY__INIT;
    int rc = store_policy_get(t->pg, &p);
    if (rc != 0) {
        call_store_fail(call, rc, "policy");
        return;
    }
    svc_reply_ok(call, &p.base);
}

void admin_set_policy(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__Policy *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN))
        return;
    Extranet__Identity__Policy before = EXTRANET__IDENTITY__POLICY__INIT;
    store_hashes_t h = {0};
    int rc;
    if ((rc = store_policy_get(t->pg, &before)) != 0) {
        call_store_fail(call, rc, "policy");
        return;
    }
    /* Cached sessions carry mfa_pending, which follows extranet_mfa_required: when it
     * changes, every extranet session's cache entry goes, in the same transaction. */
    bool mfa_changed = before.extranet_mfa_required != req->extranet_mfa_required;
    char details[128];
    snprintf(details, sizeof details,
             "{\"extranet_mfa_required\":%s,\"extranet_public_links_allowed\":%s}",
             req->extranet_mfa_required ? "true" : "false",
             req->extranet_public_links_allowed ? "true" : "false");
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_policy_set(t->pg, req)) != 0 ||
        (mfa_changed && (rc = store_sessions_invalidate_extranet(t->pg, call->arena, &h)) != 0) ||
        (rc = call_audit(t, call, NULL, "policy.changed", "policy", NULL, "ok", details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "policy");
        return;
    }
    log_info("policy changed by %s: extranet_mfa_required=%d extranet_public_links_allowed=%d",
             call_actor(call)->user_id, req->extranet_mfa_required,
             req->extranet_public_links_allowed);
    /* Tightening must be in force before we answer; loosening may lag (the tick retries). */
    if (call_after_revoke(t, call->arena, NULL, &h, NULL) != 0 && req->extranet_mfa_required) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "policy saved, but the session cache is not cleared yet; retry");
        return;
    }
    admin_get_policy(t, call);
}

/* --- internal ----------------------------------------------------------------------------- */

void admin_create_extranet_account(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__CreateExtranetAccountRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_SYSTEM))
        return;
    s_create_user(t, call, req->email, req->display_name, "extranet", req->password, "");
}

void admin_lookup_email(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__EmailRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_SYSTEM) ||
        call_invalid_or_reply(call, rules_email_check(req->email)))
        return;
    store_user_t u;
    int rc = store_user_by_email(t->pg, call->arena, req->email, &u);
    if (rc != 0) {
        call_store_fail(call, rc, "user");
        return;
    }
    svc_reply_ok(call, &u.user->base);
}

void admin_get_users(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__UserIdsRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_ADMIN_SYSTEM))
        return;
    if (req->n_ids > 500) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "at most 500 ids");
        return;
    }
    for (size_t i = 0; i < req->n_ids; i++)
        if (!call_uuid_or_reply(call, "ids", req->ids[i]))
            return;
    Extranet__Identity__UserList reply = EXTRANET__IDENTITY__USER_LIST__INIT;
    char *arr = call_array_literal(call->arena, req->ids, req->n_ids);
    if (!arr) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    int rc = store_users_by_ids(t->pg, call->arena, arr, &reply.users, &reply.n_users);
    if (rc != 0) {
        call_store_fail(call, rc, "users");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

void admin_send_mail(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Identity__SendMailRequest *req = (const void *)call->msg;
    if (!call_allowed_or_reply(call, ACCESS_SYSTEM))
        return;
    if (!mail_address_valid(req->to)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "to must be a plain email address");
        return;
    }
    if (!req->subject[0] || strlen(req->subject) > 998 || strchr(req->subject, '\r') ||
        strchr(req->subject, '\n')) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "subject must be 1..998 bytes on one line");
        return;
    }
    if (strlen(req->body) > (size_t)256 * 1024) {
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "body must be at most 256 KiB");
        return;
    }
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0]) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "mail is not configured");
        return;
    }
    /* Queued, sent by the tick within a second and retried with backoff: a short SMTP
     * outage loses nothing. */
    int rc = store_mail_enqueue(t->pg, identity_cfg.data_key, req->to, req->subject, req->body);
    if (rc != 0) {
        call_store_fail(call, rc, "mail");
        return;
    }
    svc_reply_ok(call, NULL);
}
