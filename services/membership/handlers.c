/* membership's dispatch table (one handler per protobuf method, in groups.c, members.c,
 * invitations.c and people.c) and its tick: retrying the mem:{user} cache invalidations that
 * could not be done when a change committed (Redis was unreachable). */
#include "handlers.h"
#include "cache.h"
#include "extranet/audit.h"
#include "extranet/log.h"
#include "store.h"

membership_cfg_t membership_cfg;

void membership_tick(svc_thread_t *t) {
    arena_t *a = arena_new(1 << 20);
    if (!a)
        return;
    char **ids = NULL;
    int64_t *versions = NULL;
    size_t n = 0;
    if (store_pending_batch(t->pg, a, 100, &ids, &versions, &n) == 0 && n > 0 &&
        mcache_invalidate(t, ids, n) == 0) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += store_pending_done(t->pg, ids[i], versions[i]) == 0;
        log_info("%zu pending membership cache invalidations done", done);
    }
    arena_destroy(&a);
    (void)audit_relay_tick(t); /* logs its own failures; rows wait in the outbox */
}

#define M(name, fn, req)                                                                           \
    { "membership." name, fn, &req##__descriptor }
const svc_method_t membership_methods[] = {
    M("CreateGroup", groups_create, extranet__membership__create_group_request),
    M("ListGroups", groups_list, extranet__membership__list_groups_request),
    M("GetGroup", groups_get, extranet__membership__group_id_request),
    M("UpdateGroup", groups_update, extranet__membership__update_group_request),
    M("ArchiveGroup", groups_archive, extranet__membership__group_id_request),
    M("ListMembers", members_list, extranet__membership__group_id_request),
    M("AddMember", members_add, extranet__membership__add_member_request),
    M("UpdateMember", members_update, extranet__membership__update_member_request),
    M("RemoveMember", members_remove, extranet__membership__member_request),
    M("Check", members_check, extranet__membership__check_request),
    M("GroupsOf", members_groups_of, extranet__membership__groups_of_request),
    M("Invite", invitations_create, extranet__membership__invite_request),
    M("ListInvitations", invitations_list, extranet__membership__group_id_request),
    M("RevokeInvitation", invitations_revoke, extranet__membership__invitation_id_request),
    M("LookupInvitation", invitations_lookup, extranet__membership__token_request),
    M("AcceptInvitation", invitations_accept, extranet__membership__accept_request),
    M("JoinInvitation", invitations_join, extranet__membership__token_request),
    M("ExpireInvitation", invitations_expire, extranet__membership__invitation_id_request),
    M("ListContacts", people_contacts, extranet__empty),
    M("GetPerson", people_get, extranet__membership__user_id_request),
    {NULL, NULL, NULL},
};
