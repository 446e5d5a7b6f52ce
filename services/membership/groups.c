/* Group handlers: create, list, get, update settings, archive. A group the caller cannot see
 * answers NOT_FOUND "not found", exactly like one that does not exist (R1). */
#include "extranet/log.h"
#include "extranet/util.h"
#include "handlers.h"
#include "store.h"
#include <errno.h>
#include <string.h>

void groups_create(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__CreateGroupRequest *in = (const void *)call->msg;
    ukind_t k;
    gkind_t gk;
    if (!call_user_or_reply(call, &k) ||
        !call_verdict_or_deny(t, call, rules_group_create(k), "group.created", "group", NULL, NULL))
        return;
    Extranet__Membership__CreateGroupRequest req = *in;
    if (!req.task_visibility[0])
        req.task_visibility = "all";
    if (!req.external_file_access[0])
        req.external_file_access = "view";
    const char *err = rules_group_name_check(req.name);
    if (!err)
        err = rules_description_check(req.description);
    if (!err)
        err = rules_group_kind_check(req.kind, &gk);
    if (!err)
        err = rules_task_visibility_check(req.task_visibility);
    if (!err)
        err = rules_file_access_check(req.external_file_access);
    if (err) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "%s", err);
        return;
    }
    const char *me = call->req->actor->user_id;
    char *id = NULL;
    int64_t version = 0;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_group_insert(t->pg, call->arena, &req, me,
                                 k == UKIND_ADMIN ? "admin" : "employee", &id)) != 0 ||
        (rc = store_pending_add(t->pg, me, &version)) != 0 ||
        (rc = call_audit(t, call, "group.created", "group", id, id, NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, "conflict");
        return;
    }
    log_info("group %s created by %s", id, me);
    char *users[] = {(char *)me};
    const char *roles[] = {"owner"};
    if (call_after_change(t, id, users, &version, roles, 1, "added") != 0)
        log_warn("group %s: owner's cache entry not cleared yet (tick retries)", id);
    Extranet__Membership__Group *g = NULL;
    if ((rc = store_group_get(t->pg, call->arena, id, me, &g)) != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    svc_reply_ok(call, &g->base);
}

void groups_list(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__ListGroupsRequest *req = (const void *)call->msg;
    ukind_t k;
    if (!call_user_or_reply(call, &k))
        return;
    int limit = req->limit == 0 ? 50 : req->limit;
    if (limit < 1 || limit > 200) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "limit must be 1 to 200");
        return;
    }
    if (req->cursor[0] && !util_uuid_valid(req->cursor)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "cursor is not valid");
        return;
    }
    Extranet__Membership__GroupList reply = EXTRANET__MEMBERSHIP__GROUP_LIST__INIT;
    bool more = false;
    /* The list comes from PostgreSQL joined with the caller's own memberships: nothing outside
     * them is read, so nothing outside them can be counted or hinted at (R1). */
    int rc = store_groups_list(t->pg, call->arena, call->req->actor->user_id, k == UKIND_ADMIN,
                               req->cursor, req->include_archived, limit, &reply.groups,
                               &reply.n_groups, &more);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    reply.next_cursor = (more && reply.n_groups) ? reply.groups[reply.n_groups - 1]->id : "";
    svc_reply_ok(call, &reply.base);
}

void groups_get(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__GroupIdRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    Extranet__Membership__Group *g = call_group_or_reply(t, call, req->gid, &k, &role);
    if (g)
        svc_reply_ok(call, &g->base);
}

void groups_update(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__UpdateGroupRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    Extranet__Membership__Group *g =
        call_group_for_change_or_reply(t, call, req->gid, "group.updated", &k, &role);
    if (!g || !call_verdict_or_deny(t, call, rules_group_settings(k, role, g->archived),
                                    "group.updated", "group", req->gid, req->gid))
        return;
    const char *err = NULL;
    if (req->name[0])
        err = rules_group_name_check(req->name);
    if (!err && req->description[0])
        err = rules_description_check(req->description);
    if (!err && req->task_visibility[0])
        err = rules_task_visibility_check(req->task_visibility);
    if (!err && req->external_file_access[0])
        err = rules_file_access_check(req->external_file_access);
    if (err) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "%s", err);
        return;
    }
    const char *desc =
        req->clear_description ? "" : (req->description[0] ? req->description : NULL);
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_group_update(t->pg, req->gid, req->name[0] ? req->name : NULL, desc,
                                 req->task_visibility[0] ? req->task_visibility : NULL,
                                 req->external_file_access[0] ? req->external_file_access
                                                              : NULL)) != 0 ||
        (rc = call_audit(t, call, "group.updated", "group", req->gid, req->gid, NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc == 0)
        rc = store_group_get(t->pg, call->arena, req->gid, call->req->actor->user_id, &g);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    log_info("group %s settings changed by %s", req->gid, call->req->actor->user_id);
    svc_reply_ok(call, &g->base);
}

void groups_archive(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__GroupIdRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    Extranet__Membership__Group *g =
        call_group_for_change_or_reply(t, call, req->gid, "group.archived", &k, &role);
    /* Archiving twice is fine (idempotent DELETE). */
    if (!g || !call_verdict_or_deny(t, call, rules_group_settings(k, role, false), "group.archived",
                                    "group", req->gid, req->gid))
        return;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_group_archive(t->pg, req->gid)) != 0 ||
        (rc = call_audit(t, call, "group.archived", "group", req->gid, req->gid, NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    log_info("group %s archived by %s", req->gid, call->req->actor->user_id);
    svc_reply_ok(call, NULL);
}
