/* Every SQL statement of membership, prepared by name on each connection
 * (membership_statements), and typed wrappers. Strings handed back are copied into the caller's
 * arena (borrowed from it); PGresults never escape. Lookups that find no row return -ENOENT;
 * other errors are pg_exec's (-EEXIST, -EAGAIN, -EIO). */
#ifndef MEMBERSHIP_STORE_H
#define MEMBERSHIP_STORE_H
#include "extranet/arena.h"
#include "extranet/common.h"
#include "extranet/iso.h"
#include "extranet/pg.h"
#include "membership.pb-c.h"
#include <stdbool.h>
#include <stddef.h>

extern const pg_stmt_t membership_statements[];

/* --- groups --- */
/* Inserts the group and its owner row (call inside a transaction). *ret_id: new, in arena. */
int store_group_insert(pg_t *pg, arena_t *a, const Extranet__Membership__CreateGroupRequest *g,
                       const char *owner_id, const char *owner_kind, char **ret_id) WUR;
/* The group with `viewer`'s role in my_role ("" when not a member). */
int store_group_get(pg_t *pg, arena_t *a, const char *gid, const char *viewer,
                    Extranet__Membership__Group **ret) WUR;
/* A page of groups ordered by id after `after` ("" = first): all groups when all is true
 * (admins), else only viewer's. limit+1 rows are read so *ret_more tells whether more exist. */
int store_groups_list(pg_t *pg, arena_t *a, const char *viewer, bool all, const char *after,
                      bool include_archived, int limit, Extranet__Membership__Group ***ret,
                      size_t *ret_n, bool *ret_more) WUR;
/* NULL leaves a column unchanged. */
int store_group_update(pg_t *pg, const char *gid, const char *name, const char *description,
                       const char *task_visibility, const char *file_access) WUR;
int store_group_archive(pg_t *pg, const char *gid) WUR;

/* --- members --- */
/* user's role in gid ("" and -ENOENT when not a member), new in the arena. */
int store_role(pg_t *pg, arena_t *a, const char *gid, const char *user_id, char **ret_role) WUR;
typedef iso_grole_t store_grole_t; /* {group_id, role}, what the mem:{user} fill writes */
/* Every (group, role) of user_id (for the mem:{user} cache fill). */
int store_roles_of(pg_t *pg, arena_t *a, const char *user_id, store_grole_t **ret,
                   size_t *ret_n) WUR;
typedef struct {
    char *user_id, *role, *joined_at;
} store_member_t;
int store_members(pg_t *pg, arena_t *a, const char *gid, store_member_t **ret, size_t *ret_n) WUR;
/* -EEXIST when already a member. */
int store_member_insert(pg_t *pg, const char *gid, const char *user_id, const char *role,
                        const char *kind) WUR;
/* Like store_member_insert, but an existing membership is kept as it is (*ret_added false). */
int store_member_ensure(pg_t *pg, const char *gid, const char *user_id, const char *kind,
                        bool *ret_added) WUR;
int store_member_set_role(pg_t *pg, const char *gid, const char *user_id, const char *role,
                          const char *kind) WUR;
/* Never deletes the owner's row (-ENOENT then). */
int store_member_delete(pg_t *pg, const char *gid, const char *user_id) WUR;
/* The distinct users sharing at least one group with user_id (not user_id itself). */
int store_contacts(pg_t *pg, arena_t *a, const char *user_id, char ***ret_ids, size_t *ret_n) WUR;
/* Whether a and b share at least one group. */
int store_shares_group(pg_t *pg, const char *a_id, const char *b_id, bool *ret) WUR;

/* --- invalidation outbox --- */
/* Queues user_id's cache entry for deletion (inside the change's transaction) and bumps its
 * version, returned in *ret_version: what store_pending_done needs once the DEL succeeded. */
int store_pending_add(pg_t *pg, const char *user_id, int64_t *ret_version) WUR;
/* Deletes the queued row of user_id only at this version: a later change that queued the same
 * user (and whose own DEL may have failed) keeps its row for the tick. */
int store_pending_done(pg_t *pg, const char *user_id, int64_t version) WUR;
/* Up to limit queued user ids and their versions (attempts counted), in the arena. */
int store_pending_batch(pg_t *pg, arena_t *a, int limit, char ***ret_ids, int64_t **ret_versions,
                        size_t *ret_n) WUR;

/* --- invitations --- */
int store_invitation_insert(pg_t *pg, arena_t *a, const char *gid, const char *email,
                            const char *token_hash, const char *invited_by, long ttl_s,
                            Extranet__Membership__Invitation **ret) WUR;
int store_invitations_list(pg_t *pg, arena_t *a, const char *gid,
                           Extranet__Membership__Invitation ***ret, size_t *ret_n) WUR;
/* The group of invitation id (any state). */
int store_invitation_group(pg_t *pg, arena_t *a, const char *id, char **ret_gid) WUR;
/* pending/accepting -> revoked; -ENOENT when it was not pending. */
int store_invitation_revoke(pg_t *pg, const char *id) WUR;
/* Marks invitation id of group gid 'expired' when it is past expires_at and still pending (or
 * its accepting claim lapsed). -EAGAIN when it is not expired yet or a redeemer's claim still
 * runs (the timer retries); -ENOENT when nothing is left to change (accepted, revoked, expired). */
int store_invitation_expire(pg_t *pg, const char *gid, const char *id) WUR;
/* A live (pending, unexpired, group not archived) invitation by token hash. */
int store_invitation_lookup(pg_t *pg, arena_t *a, const char *token_hash,
                            Extranet__Membership__InvitationInfo **ret) WUR;
typedef struct {
    char *id, *group_id, *email;
} store_claim_t;
/* Claims a live invitation for one redeemer (state accepting for 30 s). email: when not NULL,
 * only an invitation for this address (case-insensitive). -ENOENT when there is none (used,
 * revoked, expired, claimed by a concurrent redeemer, or another email). */
int store_invitation_claim(pg_t *pg, arena_t *a, const char *token_hash, const char *email,
                           store_claim_t *ret) WUR;
int store_invitation_unclaim(pg_t *pg, const char *id) WUR;
/* accepting -> accepted by user_id; -ENOENT when the claim was lost (revoked meanwhile). */
int store_invitation_finish(pg_t *pg, const char *id, const char *user_id) WUR;
#endif
