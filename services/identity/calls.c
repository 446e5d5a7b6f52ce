/* What every identity handler does around its work: actor and input checks that answer on
 * refusal (the *_or_reply helpers), store errors as statuses, and the effects after a commit:
 * Redis invalidation + session.revoked, security notices, expiry timers. */
#include "calls.h"
#include "expiry.pb-c.h"
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

const Extranet__Actor *call_actor(const svc_call_t *call) {
    return call->req->actor;
}

/* Checks the actor against the method's access; answers and returns false when refused. */
bool call_allowed_or_reply(svc_call_t *call, rules_access_t access) {
    const Extranet__Actor *a = call_actor(call);
    Extranet__Status st = rules_access_check(access, a);
    if (st == EXTRANET__STATUS__OK &&
        (access == ACCESS_USER || access == ACCESS_USER_PENDING || access == ACCESS_ADMIN ||
         (access == ACCESS_ADMIN_SYSTEM && a->kind != EXTRANET__ACTOR_KIND__SYSTEM))) {
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
void call_store_fail(svc_call_t *call, int rc, const char *what) {
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

bool call_invalid_or_reply(svc_call_t *call, const char *err) {
    if (!err)
        return false;
    svc_fail(call, EXTRANET__STATUS__INVALID, "%s", err);
    return true;
}

bool call_uuid_or_reply(svc_call_t *call, const char *field, const char *id) {
    if (util_uuid_valid(id))
        return true;
    svc_fail(call, EXTRANET__STATUS__INVALID, "%s must be a uuid", field);
    return false;
}

/* "{a,b,c}" from n hex/uuid strings (no quoting needed), in the arena. */
char *call_array_literal(arena_t *a, char *const *items, size_t n) {
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
int call_after_revoke(svc_thread_t *t, arena_t *a, const char *user_id, const store_hashes_t *h,
                      const char *reason) {
    if (h->n == 0)
        return 0;
    int rc = sessions_cache_delete(t->redis, h->hashes, h->n);
    if (rc == 0) {
        char *arr = call_array_literal(a, h->hashes, h->n);
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
void call_notice(svc_thread_t *t, const Extranet__Identity__User *u, const char *subject,
                 const char *what) {
    if (!identity_cfg.mail.smtp_url || !identity_cfg.mail.smtp_url[0])
        return;
    char body[1024];
    snprintf(body, sizeof body,
             "Hello %s,\n\n%s\n\nIf this was not you, contact your administrator at once.\n\n"
             "-- extranet\n",
             u->display_name, what);
    if (store_mail_enqueue(t->pg, identity_cfg.data_key, u->email, subject, body) != 0)
        log_warn("could not queue the security notice \"%s\"", subject);
}

/* Sends one queued timer row to expiry as SYSTEM: expiry.Schedule{user.expire, user_id,
 * due_at} or expiry.Cancel{user.expire, user_id}. Returns rpc_call's code. */
int call_expiry_send(svc_thread_t *t, const char *request_id, const store_timer_t *tm,
                     int64_t deadline_ms, char *err, size_t errlen) {
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    if (!strcmp(tm->op, "schedule")) {
        Extranet__Expiry__Timer timer = EXTRANET__EXPIRY__TIMER__INIT;
        timer.kind = "user.expire";
        timer.subject = tm->user_id;
        timer.due_at = tm->due_at;
        Extranet__Expiry__ScheduleRequest req = EXTRANET__EXPIRY__SCHEDULE_REQUEST__INIT;
        req.timer = &timer;
        return rpc_call(t->rpc, "expiry.Schedule", &sys, request_id, deadline_ms, &req.base, NULL,
                        NULL, err, errlen);
    }
    Extranet__Expiry__CancelRequest req = EXTRANET__EXPIRY__CANCEL_REQUEST__INIT;
    req.kind = "user.expire";
    req.subject = tm->user_id;
    return rpc_call(t->rpc, "expiry.Cancel", &sys, request_id, deadline_ms, &req.base, NULL, NULL,
                    err, errlen);
}

/* The fast path after the commit that queued tm: sends it at once (deadline: the call's
 * remaining time, 2 s at most) and deletes the row on OK. On failure the row stays for the
 * tick; the caller still answers OK (authentication enforces expires_at itself, R9). */
void call_expiry(svc_thread_t *t, svc_call_t *call, const store_timer_t *tm) {
    int64_t deadline = svc_call_nested_deadline_ms(call, 300, 2000);
    char err[160] = "";
    int rc = call_expiry_send(t, call->req->request_id, tm, deadline, err, sizeof err);
    if (rc != 0) {
        log_warn("expiry %s for user %s failed (%d: %s); queued, the tick retries", tm->op,
                 tm->user_id, rc, err);
        return;
    }
    if (store_timer_done(t->pg, tm->user_id, tm->gen) != 0)
        log_warn("expiry %s for user %s sent; its outbox row stays and is sent again", tm->op,
                 tm->user_id);
}

/* Creates a session for u and fills reply->token. Returns 0 or answers and returns -1. */

int call_audit(svc_thread_t *t, const svc_call_t *call, const Extranet__Actor *actor,
               const char *action, const char *target_type, const char *target_id,
               const char *outcome, const char *details) {
    return audit_record(t->pg, actor ? actor : call->req->actor, action, target_type, target_id,
                        NULL, outcome, call->req->request_id, details);
}

void call_audit_alone(svc_thread_t *t, const svc_call_t *call, const Extranet__Actor *actor,
                      const char *action, const char *target_type, const char *target_id,
                      const char *outcome, const char *details) {
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = call_audit(t, call, actor, action, target_type, target_id, outcome, details)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        log_error("audit record %s not written (%d)", action, rc);
    }
}

void call_actor_as(const svc_call_t *call, const char *user_id, const char *kind,
                   const char *session_id, Extranet__Actor *out) {
    const Extranet__Actor *a = call->req->actor;
    extranet__actor__init(out);
    out->user_id = (char *)user_id;
    out->session_id = (char *)(session_id ? session_id : "");
    out->client_ip = a && a->client_ip ? a->client_ip : "";
    out->kind = !strcmp(kind, "admin")      ? EXTRANET__ACTOR_KIND__ADMIN
                : !strcmp(kind, "employee") ? EXTRANET__ACTOR_KIND__EMPLOYEE
                                            : EXTRANET__ACTOR_KIND__EXTRANET;
}
