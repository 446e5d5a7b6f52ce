/* What every membership handler does around its work: actor and input checks that answer on
 * refusal (*_or_reply), store errors as statuses, calls to identity as SYSTEM, and the effects
 * after a commit (cache invalidation + membership.changed). */
#include "cache.h"
#include "extranet/audit.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "handlers.h"
#include "store.h"
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

bool call_user_or_reply(svc_call_t *call, ukind_t *ret_kind) {
    const Extranet__Actor *a = call->req->actor;
    ukind_t k = a ? rules_actor_ukind(a->kind) : UKIND_UNKNOWN;
    if (k == UKIND_UNKNOWN || !util_uuid_valid(a->user_id) || !util_uuid_valid(a->session_id)) {
        svc_fail(call, EXTRANET__STATUS__UNAUTHENTICATED, "authentication required");
        return false;
    }
    if (a->mfa_pending) {
        svc_fail(call, EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED,
                 "two-factor authentication must be enrolled first");
        return false;
    }
    *ret_kind = k;
    return true;
}

bool call_system_or_reply(svc_call_t *call) {
    const Extranet__Actor *a = call->req->actor;
    if (a && a->kind == EXTRANET__ACTOR_KIND__SYSTEM)
        return true;
    svc_fail(call,
             a && a->user_id && a->user_id[0] ? EXTRANET__STATUS__FORBIDDEN
                                              : EXTRANET__STATUS__UNAUTHENTICATED,
             "not allowed");
    return false;
}

bool call_verdict_or_reply(svc_call_t *call, rules_verdict_t v) {
    if (v.status == EXTRANET__STATUS__OK)
        return true;
    svc_fail(call, v.status, "%s", v.message ? v.message : "not allowed");
    return false;
}

bool call_gid_or_reply(svc_call_t *call, const char *gid) {
    if (util_uuid_valid(gid))
        return true;
    svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
    return false;
}

bool call_role_or_reply(svc_thread_t *t, svc_call_t *call, const char *gid, mrole_t *ret_role) {
    int rc = mcache_role(t, call->arena, call->req->actor->user_id, gid, ret_role);
    if (rc == 0)
        return true;
    log_warn("membership check failed: %d", rc);
    svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "membership store unavailable, please retry");
    return false;
}

void call_store_fail(svc_call_t *call, int rc, const char *conflict_msg) {
    if (rc == -ENOENT)
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
    else if (rc == -EEXIST)
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "%s", conflict_msg ? conflict_msg : "conflict");
    else if (rc == -EAGAIN)
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "conflicting update, please retry");
    else if (rc == -EIO)
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "membership store unavailable, please retry");
    else {
        log_error("store failed: %d", rc);
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
    }
}

int call_audit(svc_thread_t *t, svc_call_t *call, const char *action, const char *target_type,
               const char *target_id, const char *gid, const char *details) {
    return audit_record(t->pg, call->req->actor, action, target_type, target_id, gid, "ok",
                        call->req->request_id, details);
}

void call_audit_denied(svc_thread_t *t, svc_call_t *call, const char *action,
                       const char *target_type, const char *target_id, const char *gid,
                       const char *reason) {
    /* Ids as the producers write them (lower-case uuids); anything else the caller typed is
     * not a target that can exist and is left out rather than copied into the log. */
    char tid[37] = "", g[37] = "";
    if (target_id && !util_uuid_lower(target_id, tid))
        tid[0] = '\0';
    if (gid && !util_uuid_lower(gid, g))
        g[0] = '\0';
    json_t *o = json_pack("{s:s}", "reason", reason ? reason : "not allowed");
    char *details = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int rc = -ENOMEM;
    /* Its own transaction: the refused action never ran, but its record must commit. */
    if (details && (rc = pg_begin(t->pg)) == 0 &&
        (rc = audit_record(t->pg, call->req->actor, action, target_type, tid, g, "denied",
                           call->req->request_id, details)) == 0)
        rc = pg_commit(t->pg);
    if (rc != 0) {
        pg_rollback(t->pg);
        log_error("audit record %s (denied) not written (%d)", action, rc);
    }
    free(details);
}

bool call_verdict_or_deny(svc_thread_t *t, svc_call_t *call, rules_verdict_t v, const char *action,
                          const char *target_type, const char *target_id, const char *gid) {
    if (v.status == EXTRANET__STATUS__FORBIDDEN)
        call_audit_denied(t, call, action, target_type, target_id, gid, v.message);
    return call_verdict_or_reply(call, v);
}

int call_identity(svc_thread_t *t, svc_call_t *call, const char *method,
                  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *reply_desc,
                  ProtobufCMessage **ret_reply, char *errbuf, size_t errlen) {
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    return rpc_call(t->rpc, method, &sys, call->req->request_id,
                    svc_call_nested_deadline_ms(call, 200, 0), req, reply_desc, ret_reply, errbuf,
                    errlen);
}

#define USERS_CHUNK 500

int call_users(svc_thread_t *t, svc_call_t *call, char *const *ids, size_t n, muser_t **ret,
               size_t *ret_n) {
    muser_t *out = arena_alloc(call->arena, (n ? n : 1) * sizeof *out);
    if (!out)
        return -ENOMEM;
    size_t got = 0;
    for (size_t off = 0; off < n; off += USERS_CHUNK) {
        Extranet__Identity__UserIdsRequest req = EXTRANET__IDENTITY__USER_IDS_REQUEST__INIT;
        req.n_ids = n - off < USERS_CHUNK ? n - off : USERS_CHUNK;
        req.ids = (char **)ids + off;
        ProtobufCMessage *rep = NULL;
        char err[160] = "";
        int rc = call_identity(t, call, "identity.GetUsers", &req.base,
                               &extranet__identity__user_list__descriptor, &rep, err, sizeof err);
        if (rc != 0) {
            log_warn("identity.GetUsers failed (%d: %s)", rc, err);
            return ERR_IS_STATUS(rc) ? rc : ERR_STATUS(EXTRANET__STATUS__UNAVAILABLE);
        }
        Extranet__Identity__UserList *ul = (Extranet__Identity__UserList *)rep;
        for (size_t i = 0; i < ul->n_users && got < n; i++) {
            const Extranet__Identity__User *u = ul->users[i];
            muser_t *m = &out[got];
            m->id = arena_strdup(call->arena, u->id);
            m->email = arena_strdup(call->arena, u->email);
            m->display_name = arena_strdup(call->arena, u->display_name);
            m->kind = arena_strdup(call->arena, u->kind);
            m->status = arena_strdup(call->arena, u->status);
            m->expires_at = arena_strdup(call->arena, u->expires_at);
            if (!m->id || !m->email || !m->display_name || !m->kind || !m->status ||
                !m->expires_at) {
                protobuf_c_message_free_unpacked(rep, NULL);
                return -ENOMEM;
            }
            got++;
        }
        protobuf_c_message_free_unpacked(rep, NULL);
    }
    *ret = out;
    *ret_n = got;
    return 0;
}

bool call_account_usable(const char *status, const char *expires_at) {
    if (!status || strcmp(status, "active") != 0)
        return false;
    if (!expires_at || !expires_at[0])
        return true;
    /* identity prints YYYY-MM-DDTHH:MI:SSZ (UTC), so the text order is the time order. If
     * expiry's timer has not deactivated the account yet, it is still expired here. */
    char now[32];
    struct tm tm;
    time_t secs = (time_t)(util_now_ms() / 1000);
    if (!gmtime_r(&secs, &tm) || strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return false; /* fail closed */
    return strcmp(expires_at, now) > 0;
}

int call_user(svc_thread_t *t, svc_call_t *call, const char *id, muser_t **ret) {
    char *ids[] = {(char *)id};
    muser_t *us = NULL;
    size_t n = 0;
    int rc = call_users(t, call, ids, 1, &us, &n);
    if (rc != 0)
        return rc;
    *ret = (n == 1 && !strcasecmp(us[0].id, id)) ? &us[0] : NULL;
    return 0;
}

int call_after_change(svc_thread_t *t, const char *gid, char *const *users,
                      const int64_t *versions, const char *const *roles, size_t n,
                      const char *reason) {
    int rc = mcache_invalidate(t, users, n);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            if (store_pending_done(t->pg, users[i], versions[i]) != 0)
                log_warn("pending invalidation kept; the tick will clear it");
    } else {
        log_warn("redis unreachable: %zu membership cache entries queued for invalidation", n);
    }
    for (size_t i = 0; i < n && t->events; i++) {
        Extranet__Membership__MembershipChanged ev = EXTRANET__MEMBERSHIP__MEMBERSHIP_CHANGED__INIT;
        ev.group_id = (char *)gid;
        ev.user_id = users[i];
        ev.role = (char *)(roles ? roles[i] : "");
        ev.reason = (char *)reason;
        if (ev_publish(t->events, "membership.changed", &ev.base) != 0)
            log_warn("could not publish membership.changed");
    }
    return rc;
}

/* call_group_or_reply; with deny_action, a signed-in caller refused because the group is
 * hidden from them (or missing: the two are one answer, R1) leaves the denied record of that
 * attempt, without group_id: the group's owner reads records by group_id and must not learn
 * who probed their group. The target is the group id they tried. */
static Extranet__Membership__Group *s_group_or_reply(svc_thread_t *t, svc_call_t *call,
                                                     const char *gid, const char *deny_action,
                                                     ukind_t *ret_kind, mrole_t *ret_role) {
    if (!call_user_or_reply(call, ret_kind) || !call_gid_or_reply(call, gid) ||
        !call_role_or_reply(t, call, gid, ret_role))
        return NULL;
    rules_verdict_t v = rules_group_view(*ret_kind, *ret_role);
    if (v.status != EXTRANET__STATUS__OK && deny_action)
        call_audit_denied(t, call, deny_action, "group", gid, NULL,
                          "the group does not exist or is not visible to the caller");
    if (!call_verdict_or_reply(call, v))
        return NULL;
    Extranet__Membership__Group *g = NULL;
    int rc = store_group_get(t->pg, call->arena, gid, call->req->actor->user_id, &g);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return NULL;
    }
    return g;
}

Extranet__Membership__Group *call_group_or_reply(svc_thread_t *t, svc_call_t *call, const char *gid,
                                                 ukind_t *ret_kind, mrole_t *ret_role) {
    return s_group_or_reply(t, call, gid, NULL, ret_kind, ret_role);
}

Extranet__Membership__Group *call_group_for_change_or_reply(svc_thread_t *t, svc_call_t *call,
                                                            const char *gid, const char *action,
                                                            ukind_t *ret_kind, mrole_t *ret_role) {
    return s_group_or_reply(t, call, gid, action, ret_kind, ret_role);
}
