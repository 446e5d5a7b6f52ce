/* People handlers (R4): the contact list (everyone sharing at least one group with the caller)
 * and profiles. A profile the caller may not see answers NOT_FOUND "not found", like an id
 * that does not exist; the fields shown are the Person allowlist, never identity's User. */
#include "extranet/util.h"
#include "handlers.h"
#include "store.h"
#include <errno.h>
#include <string.h>
#include <strings.h>

static Extranet__Membership__Person *s_person(arena_t *a, const muser_t *u) {
    Extranet__Membership__Person *p = arena_alloc(a, sizeof *p);
    if (!p)
        return NULL;
    extranet__membership__person__init(p);
    p->id = u->id;
    p->display_name = u->display_name;
    p->kind = u->kind;
    p->email = u->email;
    return p;
}

void people_contacts(svc_thread_t *t, svc_call_t *call) {
    ukind_t k;
    if (!call_user_or_reply(call, &k))
        return;
    char **ids = NULL;
    size_t n = 0;
    int rc = store_contacts(t->pg, call->arena, call->req->actor->user_id, &ids, &n);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    muser_t *us = NULL;
    size_t nu = 0;
    if ((rc = call_users(t, call, ids, n, &us, &nu)) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "identity is unavailable, please retry");
        return;
    }
    Extranet__Membership__PersonList reply = EXTRANET__MEMBERSHIP__PERSON_LIST__INIT;
    reply.people = arena_alloc(call->arena, (nu ? nu : 1) * sizeof *reply.people);
    if (!reply.people) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < nu; i++) {
        /* Everyone here shares a group with the caller, so R4 shows them to every kind; a
         * deactivated account is nobody to contact any more. */
        if (!rules_person_visible(k, false, rules_ukind_parse(us[i].kind), true) ||
            strcmp(us[i].status, "active") != 0)
            continue;
        if (!(reply.people[reply.n_people] = s_person(call->arena, &us[i]))) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        reply.n_people++;
    }
    svc_reply_ok(call, &reply.base);
}

void people_get(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__UserIdRequest *req = (const void *)call->msg;
    ukind_t k;
    if (!call_user_or_reply(call, &k) || !call_gid_or_reply(call, req->id))
        return;
    const char *me = call->req->actor->user_id;
    bool self = !strcasecmp(req->id, me), shares = false;
    int rc;
    /* Whether the two share a group is read before identity is asked, so an unknown id and a
     * hidden one take the same path for an extranet viewer. */
    if (!self && k != UKIND_ADMIN && (rc = store_shares_group(t->pg, me, req->id, &shares)) != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if (k == UKIND_EXTRANET && !self && !shares) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    muser_t *u = NULL;
    if ((rc = call_user(t, call, req->id, &u)) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "identity is unavailable, please retry");
        return;
    }
    if (!u || !rules_person_visible(k, self, rules_ukind_parse(u->kind), shares)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    Extranet__Membership__Person *p = s_person(call->arena, u);
    if (!p) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    svc_reply_ok(call, &p->base);
}
