/* Member handlers: list, add, change role (incl. ownership transfer), remove/leave, and the
 * internal Check. Every change commits in PostgreSQL together with a pending invalidation of
 * the affected users' mem:{user} entries, then deletes those entries before answering (R9). */
#include "cache.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "handlers.h"
#include "store.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static gkind_t s_gkind(const Extranet__Membership__Group *g) {
    return strcmp(g->kind, "extranet") == 0 ? GKIND_EXTRANET : GKIND_INTERNAL;
}

/* The target's current role in gid straight from PostgreSQL (ROLE_NONE when not a member). */
static int s_target_role(svc_thread_t *t, svc_call_t *call, const char *gid, const char *uid,
                         mrole_t *ret) {
    char *role = NULL;
    int rc = store_role(t->pg, call->arena, gid, uid, &role);
    *ret = ROLE_NONE;
    if (rc == -ENOENT)
        return 0;
    if (rc != 0)
        return rc;
    return rules_role_parse(role, ret) ? 0 : -EIO;
}

static void s_identity_fail(svc_call_t *call, int rc) {
    if (rc == -ENOMEM || !ERR_IS_STATUS(rc))
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
    else
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "identity is unavailable, please retry");
}

static Extranet__Membership__Member *s_member(arena_t *a, const muser_t *u, const char *role,
                                              const char *joined_at) {
    Extranet__Membership__Member *m = arena_alloc(a, sizeof *m);
    if (!m)
        return NULL;
    extranet__membership__member__init(m);
    m->user_id = u ? u->id : "";
    m->display_name = u ? u->display_name : "";
    m->kind = u ? u->kind : "";
    m->role = (char *)role;
    m->joined_at = (char *)(joined_at ? joined_at : "");
    return m;
}

void members_list(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__GroupIdRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    if (!call_group_or_reply(t, call, req->gid, &k, &role))
        return;
    store_member_t *rows = NULL;
    size_t n = 0;
    int rc = store_members(t->pg, call->arena, req->gid, &rows, &n);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    char **ids = arena_alloc(call->arena, (n ? n : 1) * sizeof *ids);
    if (!ids) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = rows[i].user_id;
    muser_t *us = NULL;
    size_t nu = 0;
    if ((rc = call_users(t, call, ids, n, &us, &nu)) != 0) {
        s_identity_fail(call, rc);
        return;
    }
    /* Co-members are contacts of each other (R4): every member of a group the caller sees is
     * listed, with the allowlisted fields of Member only. */
    Extranet__Membership__MemberList reply = EXTRANET__MEMBERSHIP__MEMBER_LIST__INIT;
    reply.members = arena_alloc(call->arena, (n ? n : 1) * sizeof *reply.members);
    if (!reply.members) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const muser_t *u = NULL;
        for (size_t j = 0; j < nu && !u; j++)
            if (!strcasecmp(us[j].id, rows[i].user_id))
                u = &us[j];
        if (!u)
            continue; /* deleted from identity: nothing to show */
        Extranet__Membership__Member *m = s_member(call->arena, u, rows[i].role, rows[i].joined_at);
        if (!m) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        reply.members[reply.n_members++] = m;
    }
    svc_reply_ok(call, &reply.base);
}

/* Commits the change done by fn inside a transaction with pending invalidations for users and
 * the audit record `action` (target users[0], its new role in details), then clears the cache.
 * Returns 0 (answered nothing), or answers and returns -1. */
typedef int (*s_change_fn)(svc_thread_t *t, void *ctx);

static int s_commit_change(svc_thread_t *t, svc_call_t *call, const char *gid, s_change_fn fn,
                           void *ctx, char *const *users, const char *const *roles, size_t n,
                           const char *reason, const char *action, bool tightens,
                           const char *conflict_msg) {
    int rc;
    int64_t versions[2] = {0, 0}; /* a change touches at most two users (role transfer) */
    if (n > sizeof versions / sizeof versions[0]) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "internal error");
        return -1;
    }
    if ((rc = pg_begin(t->pg)) != 0 || (rc = fn(t, ctx)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, conflict_msg);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((rc = store_pending_add(t->pg, users[i], &versions[i])) != 0)
            break;
    /* Roles are fixed words, so the details need no JSON escaping. */
    const char *details =
        roles[0][0] ? arena_printf(call->arena, "{\"role\":\"%s\"}", roles[0]) : NULL;
    if (rc == 0)
        rc = call_audit(t, call, action, "user", users[0], gid, details);
    if (rc != 0 || (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, conflict_msg);
        return -1;
    }
    log_info("group %s: %s by %s", gid, reason, call->req->actor->user_id);
    if (call_after_change(t, gid, users, versions, roles, n, reason) != 0 && tightens) {
        /* Committed, but a cached allow may survive until the tick clears it: nobody may
         * believe the change is in force yet (DESIGN.md §5). */
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE,
                 "the change is saved but not yet in force everywhere; retry shortly");
        return -1;
    }
    return 0;
}

typedef struct {
    const char *gid, *uid, *role, *kind, *old_owner;
} s_member_ctx_t;

static int s_do_add(svc_thread_t *t, void *ctx) {
    s_member_ctx_t *c = ctx;
    return store_member_insert(t->pg, c->gid, c->uid, c->role, c->kind);
}

static int s_do_set_role(svc_thread_t *t, void *ctx) {
    s_member_ctx_t *c = ctx;
    int rc = 0;
    /* A transfer demotes the current owner first: the unique index allows one owner only. */
    if (c->old_owner)
        rc = store_member_set_role(t->pg, c->gid, c->old_owner, "moderator", NULL);
    return rc ? rc : store_member_set_role(t->pg, c->gid, c->uid, c->role, c->kind);
}

static int s_do_remove(svc_thread_t *t, void *ctx) {
    s_member_ctx_t *c = ctx;
    return store_member_delete(t->pg, c->gid, c->uid);
}

void members_add(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__AddMemberRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role, target_role = ROLE_NONE, new_role = ROLE_MEMBER;
    Extranet__Membership__Group *g =
        call_group_for_change_or_reply(t, call, req->gid, "member.added", &k, &role);
    if (!g)
        return;
    if (req->role[0] && !rules_role_parse(req->role, &new_role)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "role must be owner, moderator or member");
        return;
    }
    if (!util_uuid_valid(req->user_id)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "user_id must be a uuid");
        return;
    }
    muser_t *u = NULL;
    int rc = call_user(t, call, req->user_id, &u);
    if (rc != 0) {
        s_identity_fail(call, rc);
        return;
    }
    ukind_t tk = u ? rules_ukind_parse(u->kind) : UKIND_UNKNOWN;
    /* A deactivated or expired account is never added (R9). To everyone but an admin it is
     * exactly a missing id (same path, same NOT_FOUND); an admin, who sees every account, is
     * told why (below, after the other checks). */
    bool unusable = u && !call_account_usable(u->status, u->expires_at);
    if (unusable && k != UKIND_ADMIN)
        tk = UKIND_UNKNOWN;
    /* R4: a user the caller may not see does not exist for them. Whether they share a group
     * matters only for extranet targets seen by employees. */
    bool shares = false;
    if (tk == UKIND_EXTRANET && k == UKIND_EMPLOYEE &&
        (rc = store_shares_group(t->pg, call->req->actor->user_id, req->user_id, &shares)) != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if (!rules_person_visible(k, !strcasecmp(req->user_id, call->req->actor->user_id), tk, shares))
        tk = UKIND_UNKNOWN;
    if (tk != UKIND_UNKNOWN &&
        (rc = s_target_role(t, call, req->gid, req->user_id, &target_role)) != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    /* A refusal names the target only when every reader of the group's records may see it
     * (R4): the group's owner, an employee, sees every employee and admin, and an extranet
     * user only when they share a group, which this one is sure to be only when already a
     * member of it. */
    bool nameable = tk != UKIND_UNKNOWN && (tk != UKIND_EXTRANET || target_role != ROLE_NONE);
    if (!call_verdict_or_deny(
            t, call, rules_member_add(k, role, s_gkind(g), g->archived, tk, target_role, new_role),
            "member.added", "user", nameable ? req->user_id : NULL, req->gid))
        return;
    if (!u) { /* unreachable: an unknown target is refused by the rules */
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    if (unusable) { /* only an admin gets here */
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "the user is deactivated or expired");
        return;
    }
    s_member_ctx_t c = {req->gid, u->id, rules_role_name(new_role), u->kind, NULL};
    char *users[] = {u->id};
    const char *roles[] = {c.role};
    if (s_commit_change(t, call, req->gid, s_do_add, &c, users, roles, 1, "added", "member.added",
                        false, "already a member of the group") != 0)
        return;
    Extranet__Membership__Member *m = s_member(call->arena, u, c.role, "");
    if (!m) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    svc_reply_ok(call, &m->base);
}

void members_update(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__UpdateMemberRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role, target_role = ROLE_NONE, new_role = ROLE_NONE, asked = ROLE_NONE;
    /* The action attempted, also for a refusal's record: role owner is a transfer. */
    const char *action = rules_role_parse(req->role, &asked) && asked == ROLE_OWNER
                             ? "group.ownership_transferred"
                             : "member.role_changed";
    Extranet__Membership__Group *g =
        call_group_for_change_or_reply(t, call, req->gid, action, &k, &role);
    if (!g)
        return;
    if (!call_gid_or_reply(call, req->uid))
        return;
    int rc = s_target_role(t, call, req->gid, req->uid, &target_role);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if (target_role == ROLE_NONE) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    if (!rules_role_parse(req->role, &new_role)) {
        /* Checked after visibility: a stranger learns nothing from the validation. */
        rules_verdict_t v = rules_member_set_role(k, role, false, s_gkind(g), g->archived,
                                                  UKIND_EMPLOYEE, target_role, ROLE_MEMBER);
        if (call_verdict_or_deny(t, call, v, action, "user", req->uid, req->gid))
            svc_fail(call, EXTRANET__STATUS__INVALID, "role must be owner, moderator or member");
        return;
    }
    muser_t *u = NULL;
    if ((rc = call_user(t, call, req->uid, &u)) != 0) {
        s_identity_fail(call, rc);
        return;
    }
    ukind_t tk = u ? rules_ukind_parse(u->kind) : UKIND_UNKNOWN;
    bool self = !strcasecmp(req->uid, call->req->actor->user_id);
    if (!call_verdict_or_deny(t, call,
                              rules_member_set_role(k, role, self, s_gkind(g), g->archived, tk,
                                                    target_role, new_role),
                              action, "user", req->uid, req->gid))
        return;
    if (!u) { /* unreachable: an unknown target is refused by the rules */
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    Extranet__Membership__Member *m = s_member(call->arena, u, rules_role_name(new_role), "");
    if (!m) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    if (new_role == target_role) {
        svc_reply_ok(call, &m->base);
        return;
    }
    s_member_ctx_t c = {req->gid, u->id, rules_role_name(new_role), u->kind, NULL};
    char *users[2] = {u->id, NULL};
    const char *roles[2] = {c.role, "moderator"};
    size_t n = 1;
    if (new_role == ROLE_OWNER) {
        c.old_owner = g->owner_id;
        users[1] = g->owner_id;
        n = 2;
    }
    if (s_commit_change(t, call, req->gid, s_do_set_role, &c, users, roles, n,
                        new_role == ROLE_OWNER ? "ownership" : "role", action, true,
                        "conflict") != 0)
        return;
    svc_reply_ok(call, &m->base);
}

void members_remove(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__MemberRequest *req = (const void *)call->msg;
    const Extranet__Actor *a = call->req->actor;
    bool system = a && a->kind == EXTRANET__ACTOR_KIND__SYSTEM;
    ukind_t k = UKIND_ADMIN;
    mrole_t role = ROLE_NONE, target_role = ROLE_NONE;
    bool self = !system && a && !strcasecmp(req->uid, a->user_id);
    const char *action = self ? "member.left" : "member.removed";
    if (system) {
        /* expiry (membership expiry timers): idempotent, a missing member is done. */
        if (!util_uuid_valid(req->gid) || !util_uuid_valid(req->uid)) {
            svc_fail(call, EXTRANET__STATUS__INVALID, "gid and uid must be uuids");
            return;
        }
    } else if (!call_group_for_change_or_reply(t, call, req->gid, action, &k, &role) ||
               !call_gid_or_reply(call, req->uid)) {
        return;
    }
    int rc = s_target_role(t, call, req->gid, req->uid, &target_role);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if (system && target_role == ROLE_NONE) {
        svc_reply_ok(call, NULL);
        return;
    }
    if (!call_verdict_or_deny(t, call, rules_member_remove(k, role, self, target_role), action,
                              "user", req->uid, req->gid))
        return;
    char uid[37];
    snprintf(uid, sizeof uid, "%s", req->uid);
    for (char *p = uid; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    s_member_ctx_t c = {req->gid, uid, NULL, NULL, NULL};
    char *users[] = {uid};
    const char *roles[] = {""};
    if (s_commit_change(t, call, req->gid, s_do_remove, &c, users, roles, 1, "removed", action,
                        true, NULL) != 0)
        return;
    svc_reply_ok(call, NULL);
}

void members_check(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__CheckRequest *req = (const void *)call->msg;
    if (!call_system_or_reply(call))
        return;
    /* Lower-cased: the cache key must be the one every invalidation deletes. */
    char user[37], gid[37];
    if (!util_uuid_lower(req->user_id, user) || !util_uuid_lower(req->group_id, gid)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    mrole_t role = ROLE_NONE;
    int rc = mcache_role(t, call->arena, user, gid, &role);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if (role == ROLE_NONE) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    Extranet__Membership__CheckReply reply = EXTRANET__MEMBERSHIP__CHECK_REPLY__INIT;
    reply.role = (char *)rules_role_name(role);
    svc_reply_ok(call, &reply.base);
}

void members_groups_of(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__GroupsOfRequest *req = (const void *)call->msg;
    if (!call_system_or_reply(call))
        return;
    Extranet__Membership__GroupsOfReply reply = EXTRANET__MEMBERSHIP__GROUPS_OF_REPLY__INIT;
    char user[37]; /* lower-cased: the cache key every invalidation deletes */
    if (!util_uuid_lower(req->user_id, user)) {
        svc_reply_ok(call, &reply.base); /* nobody: no groups */
        return;
    }
    store_grole_t *rows = NULL;
    size_t n = 0;
    int rc = mcache_groups(t, call->arena, user, &rows, &n);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    Extranet__Membership__GroupRole *items = arena_alloc(call->arena, (n + 1) * sizeof *items);
    Extranet__Membership__GroupRole **ptrs = arena_alloc(call->arena, (n + 1) * sizeof *ptrs);
    if (!items || !ptrs) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        extranet__membership__group_role__init(&items[i]);
        items[i].group_id = rows[i].group_id;
        items[i].role = rows[i].role;
        ptrs[i] = &items[i];
    }
    reply.n_groups = n;
    reply.groups = ptrs;
    svc_reply_ok(call, &reply.base);
}
