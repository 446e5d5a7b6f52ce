/* membership's SQL: the statement table prepared on every connection, and the typed wrappers
 * of store.h. Columns are read by name (PQfnumber); every result is PQclear'ed here. */
#include "store.h"
#include "extranet/audit.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP_COLS                                                                                 \
    "g.id::text AS id, g.name, g.description, g.kind, "                                            \
    "(SELECT o.user_id::text FROM members o WHERE o.group_id = g.id AND o.role = 'owner') "        \
    "  AS owner_id, g.task_visibility, g.external_file_access, g.archived, "                       \
    "rfc3339(g.created_at) AS created_at, rfc3339(g.updated_at) AS updated_at "

#define INVITATION_COLS                                                                            \
    "i.id::text AS id, i.group_id::text AS group_id, i.email, "                                    \
    "CASE WHEN i.state IN ('pending', 'accepting') AND i.expires_at <= now() THEN 'expired' "      \
    "     WHEN i.state = 'accepting' THEN 'pending' ELSE i.state END AS state, "                   \
    "rfc3339(i.expires_at) AS expires_at, i.invited_by::text AS invited_by, "                      \
    "rfc3339(i.created_at) AS created_at "

/* A claim lives 30 s: long enough for identity to create the account, short enough that a
 * redeemer that died mid-way does not burn the invitation. */
#define LIVE_INVITATION                                                                            \
    "i.expires_at > now() AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.id = i.group_id AND "     \
    "g.archived) "

const pg_stmt_t membership_statements[] = {
    {"group_insert",
     "INSERT INTO groups (name, description, kind, task_visibility, external_file_access) "
     "VALUES ($1, $2, $3, $4, $5) RETURNING id::text AS id",
     5},
    {"group_get",
     "SELECT " GROUP_COLS ", coalesce(m.role, '') AS my_role FROM groups g "
     "LEFT JOIN members m ON m.group_id = g.id AND m.user_id = $2::uuid WHERE g.id = $1::uuid",
     2},
    {"groups_mine",
     "SELECT " GROUP_COLS ", m.role AS my_role FROM groups g "
     "JOIN members m ON m.group_id = g.id AND m.user_id = $1::uuid "
     "WHERE ($2 = '' OR g.id > $2::uuid) AND ($3::boolean OR NOT g.archived) "
     "ORDER BY g.id LIMIT $4::integer",
     4},
    {"groups_all",
     "SELECT " GROUP_COLS ", coalesce(m.role, '') AS my_role FROM groups g "
     "LEFT JOIN members m ON m.group_id = g.id AND m.user_id = $1::uuid "
     "WHERE ($2 = '' OR g.id > $2::uuid) AND ($3::boolean OR NOT g.archived) "
     "ORDER BY g.id LIMIT $4::integer",
     4},
    {"group_update",
     "UPDATE groups SET name = coalesce($2, name), description = coalesce($3, description), "
     "task_visibility = coalesce($4, task_visibility), "
     "external_file_access = coalesce($5, external_file_access), updated_at = now() "
     "WHERE id = $1::uuid RETURNING id",
     5},
    {"group_archive",
     "UPDATE groups SET archived = true, updated_at = now() WHERE id = $1::uuid RETURNING id", 1},

    {"role_of", "SELECT role FROM members WHERE group_id = $1::uuid AND user_id = $2::uuid", 2},
    {"roles_of", "SELECT group_id::text AS group_id, role FROM members WHERE user_id = $1::uuid",
     1},
    {"members_of",
     "SELECT user_id::text AS user_id, role, rfc3339(joined_at) AS joined_at FROM members "
     "WHERE group_id = $1::uuid ORDER BY joined_at, user_id LIMIT 5000",
     1},
    {"member_insert",
     "INSERT INTO members (group_id, user_id, role, user_kind) VALUES ($1::uuid, $2::uuid, $3, $4)",
     4},
    {"member_ensure",
     "INSERT INTO members (group_id, user_id, role, user_kind) "
     "VALUES ($1::uuid, $2::uuid, 'member', $3) ON CONFLICT DO NOTHING RETURNING user_id",
     3},
    {"member_set_role",
     "UPDATE members SET role = $3, user_kind = coalesce($4, user_kind) WHERE group_id = $1::uuid "
     "AND user_id = "
     "$2::uuid RETURNING user_id",
     4},
    {"member_delete",
     "DELETE FROM members WHERE group_id = $1::uuid AND user_id = $2::uuid AND role <> 'owner' "
     "RETURNING user_id",
     2},
    {"contacts",
     "SELECT DISTINCT o.user_id::text AS user_id FROM members m "
     "JOIN members o ON o.group_id = m.group_id "
     "WHERE m.user_id = $1::uuid AND o.user_id <> $1::uuid LIMIT 5000",
     1},
    {"shares_group",
     "SELECT EXISTS (SELECT 1 FROM members a JOIN members b ON b.group_id = a.group_id "
     "WHERE a.user_id = $1::uuid AND b.user_id = $2::uuid) AS shares",
     2},

    {"pending_add",
     "INSERT INTO pending_invalidations (user_id) VALUES ($1::uuid) ON CONFLICT (user_id) DO "
     "UPDATE SET version = pending_invalidations.version + 1 RETURNING version",
     1},
    {"pending_done",
     "DELETE FROM pending_invalidations WHERE user_id = $1::uuid AND version = $2::bigint", 2},
    {"pending_batch",
     "UPDATE pending_invalidations SET attempts = attempts + 1 WHERE user_id IN "
     "(SELECT user_id FROM pending_invalidations ORDER BY created_at LIMIT $1::integer "
     " FOR UPDATE SKIP LOCKED) RETURNING user_id::text AS user_id, version",
     1},

    {"invitation_insert",
     "INSERT INTO invitations AS i (group_id, email, token_hash, invited_by, expires_at) "
     "VALUES ($1::uuid, lower($2), $3, $4::uuid, now() + make_interval(secs => $5::integer)) "
     "RETURNING " INVITATION_COLS,
     5},
    {"invitations_of",
     "SELECT " INVITATION_COLS "FROM invitations i WHERE i.group_id = $1::uuid "
     "ORDER BY i.created_at DESC LIMIT 500",
     1},
    {"invitation_group", "SELECT group_id::text AS group_id FROM invitations WHERE id = $1::uuid",
     1},
    {"invitation_revoke",
     "UPDATE invitations SET state = 'revoked', updated_at = now() "
     "WHERE id = $1::uuid AND state IN ('pending', 'accepting') RETURNING id",
     1},
    {"invitation_expire",
     "UPDATE invitations SET state = 'expired', claimed_until = NULL, updated_at = now() "
     "WHERE id = $1::uuid AND group_id = $2::uuid AND state IN ('pending', 'accepting') "
     "AND expires_at <= now() AND (state = 'pending' OR claimed_until <= now()) RETURNING id",
     2},
    {"invitation_expire_early",
     "SELECT 1 FROM invitations WHERE id = $1::uuid AND group_id = $2::uuid AND "
     "((state IN ('pending', 'accepting') AND expires_at > now()) OR "
     " (state = 'accepting' AND claimed_until > now()))",
     2},
    {"invitation_lookup",
     "SELECT i.email, g.name AS group_name, rfc3339(i.expires_at) AS expires_at "
     "FROM invitations i JOIN groups g ON g.id = i.group_id "
     "WHERE i.token_hash = $1 AND i.state IN ('pending', 'accepting') AND " LIVE_INVITATION,
     1},
    /* One statement: of twenty concurrent redeemers, the row lock lets one through; the
     * others re-check the WHERE clause against the committed row (READ COMMITTED) and find
     * it no longer pending. */
    {"invitation_claim",
     "UPDATE invitations i SET state = 'accepting', claimed_until = now() + interval '30 seconds', "
     "updated_at = now() "
     "WHERE i.token_hash = $1 AND ($2 = '' OR i.email = lower($2)) AND "
     "(i.state = 'pending' OR (i.state = 'accepting' AND i.claimed_until < now())) "
     "AND " LIVE_INVITATION "RETURNING i.id::text AS id, i.group_id::text AS group_id, i.email",
     2},
    {"invitation_unclaim",
     "UPDATE invitations SET state = 'pending', claimed_until = NULL, updated_at = now() "
     "WHERE id = $1::uuid AND state = 'accepting' RETURNING id",
     1},
    {"invitation_finish",
     "UPDATE invitations SET state = 'accepted', accepted_by = $2::uuid, updated_at = now() "
     "WHERE id = $1::uuid AND state = 'accepting' RETURNING id",
     2},
    AUDIT_PG_STMTS, /* audit_record + the relay (extranet/audit.h) */
    {NULL, NULL, 0},
};

/* --- helpers ------------------------------------------------------------------------------ */

static Extranet__Membership__Group *s_group_row(arena_t *a, const PGresult *res, int row) {
    Extranet__Membership__Group *g = arena_alloc(a, sizeof *g);
    if (!g)
        return NULL;
    extranet__membership__group__init(g);
    g->id = pg_col_str(a, res, row, "id");
    g->name = pg_col_str(a, res, row, "name");
    g->description = pg_col_str(a, res, row, "description");
    g->kind = pg_col_str(a, res, row, "kind");
    g->owner_id = pg_col_str(a, res, row, "owner_id");
    g->task_visibility = pg_col_str(a, res, row, "task_visibility");
    g->external_file_access = pg_col_str(a, res, row, "external_file_access");
    g->archived = pg_col_bool(res, row, "archived");
    g->created_at = pg_col_str(a, res, row, "created_at");
    g->updated_at = pg_col_str(a, res, row, "updated_at");
    g->my_role = pg_col_str(a, res, row, "my_role");
    if (!g->id || !g->name || !g->description || !g->kind || !g->owner_id || !g->task_visibility ||
        !g->external_file_access || !g->created_at || !g->updated_at || !g->my_role)
        return NULL;
    return g;
}

static Extranet__Membership__Invitation *s_invitation_row(arena_t *a, const PGresult *res,
                                                          int row) {
    Extranet__Membership__Invitation *i = arena_alloc(a, sizeof *i);
    if (!i)
        return NULL;
    extranet__membership__invitation__init(i);
    i->id = pg_col_str(a, res, row, "id");
    i->group_id = pg_col_str(a, res, row, "group_id");
    i->email = pg_col_str(a, res, row, "email");
    i->state = pg_col_str(a, res, row, "state");
    i->expires_at = pg_col_str(a, res, row, "expires_at");
    i->invited_by = pg_col_str(a, res, row, "invited_by");
    i->created_at = pg_col_str(a, res, row, "created_at");
    if (!i->id || !i->group_id || !i->email || !i->state || !i->expires_at || !i->invited_by ||
        !i->created_at)
        return NULL;
    return i;
}

/* One text column of every row as a new arena array. */
static int s_column_list(arena_t *a, PGresult *res, const char *col, char ***ret, size_t *ret_n) {
    size_t n = (size_t)PQntuples(res);
    char **ids = arena_alloc(a, (n ? n : 1) * sizeof *ids);
    if (!ids)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!(ids[i] = pg_col_str(a, res, (int)i, col)))
            return -ENOMEM;
    *ret = ids;
    *ret_n = n;
    return 0;
}

/* --- groups ------------------------------------------------------------------------------- */

int store_group_insert(pg_t *pg, arena_t *a, const Extranet__Membership__CreateGroupRequest *g,
                       const char *owner_id, const char *owner_kind, char **ret_id) {
    const char *p[] = {g->name, g->description, g->kind, g->task_visibility,
                       g->external_file_access};
    PGresult *res;
    int rc = pg_exec_row(pg, "group_insert", p, true, &res);
    if (rc != 0)
        return rc;
    char *id = pg_col_str(a, res, 0, "id");
    PQclear(res);
    if (!id)
        return -ENOMEM;
    if ((rc = store_member_insert(pg, id, owner_id, "owner", owner_kind)) != 0)
        return rc;
    *ret_id = id;
    return 0;
}

int store_group_get(pg_t *pg, arena_t *a, const char *gid, const char *viewer,
                    Extranet__Membership__Group **ret) {
    const char *p[] = {gid, viewer};
    PGresult *res;
    int rc = pg_exec_row(pg, "group_get", p, true, &res);
    if (rc != 0)
        return rc;
    *ret = s_group_row(a, res, 0);
    PQclear(res);
    return *ret ? 0 : -ENOMEM;
}

int store_groups_list(pg_t *pg, arena_t *a, const char *viewer, bool all, const char *after,
                      bool include_archived, int limit, Extranet__Membership__Group ***ret,
                      size_t *ret_n, bool *ret_more) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *p[] = {viewer, after, include_archived ? "true" : "false", lim};
    PGresult *res;
    int rc = pg_exec_row(pg, all ? "groups_all" : "groups_mine", p, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    *ret_more = n > (size_t)limit;
    if (*ret_more)
        n = (size_t)limit;
    Extranet__Membership__Group **gs = arena_alloc(a, (n ? n : 1) * sizeof *gs);
    rc = gs ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!(gs[i] = s_group_row(a, res, (int)i)))
            rc = -ENOMEM;
    PQclear(res);
    if (rc == 0) {
        *ret = gs;
        *ret_n = n;
    }
    return rc;
}

int store_group_update(pg_t *pg, const char *gid, const char *name, const char *description,
                       const char *task_visibility, const char *file_access) {
    const char *p[] = {gid, name, description, task_visibility, file_access};
    return pg_exec_row(pg, "group_update", p, true, NULL);
}

int store_group_archive(pg_t *pg, const char *gid) {
    const char *p[] = {gid};
    return pg_exec_row(pg, "group_archive", p, true, NULL);
}

/* --- members ------------------------------------------------------------------------------ */

int store_role(pg_t *pg, arena_t *a, const char *gid, const char *user_id, char **ret_role) {
    const char *p[] = {gid, user_id};
    PGresult *res;
    int rc = pg_exec_row(pg, "role_of", p, true, &res);
    if (rc != 0)
        return rc;
    *ret_role = pg_col_str(a, res, 0, "role");
    PQclear(res);
    return *ret_role ? 0 : -ENOMEM;
}

int store_roles_of(pg_t *pg, arena_t *a, const char *user_id, store_grole_t **ret, size_t *ret_n) {
    const char *p[] = {user_id};
    PGresult *res;
    int rc = pg_exec_row(pg, "roles_of", p, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    store_grole_t *r = arena_alloc(a, (n ? n : 1) * sizeof *r);
    rc = r ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        r[i].group_id = pg_col_str(a, res, (int)i, "group_id");
        r[i].role = pg_col_str(a, res, (int)i, "role");
        if (!r[i].group_id || !r[i].role)
            rc = -ENOMEM;
    }
    PQclear(res);
    if (rc == 0) {
        *ret = r;
        *ret_n = n;
    }
    return rc;
}

int store_members(pg_t *pg, arena_t *a, const char *gid, store_member_t **ret, size_t *ret_n) {
    const char *p[] = {gid};
    PGresult *res;
    int rc = pg_exec_row(pg, "members_of", p, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    store_member_t *m = arena_alloc(a, (n ? n : 1) * sizeof *m);
    rc = m ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        m[i].user_id = pg_col_str(a, res, (int)i, "user_id");
        m[i].role = pg_col_str(a, res, (int)i, "role");
        m[i].joined_at = pg_col_str(a, res, (int)i, "joined_at");
        if (!m[i].user_id || !m[i].role || !m[i].joined_at)
            rc = -ENOMEM;
    }
    PQclear(res);
    if (rc == 0) {
        *ret = m;
        *ret_n = n;
    }
    return rc;
}

int store_member_insert(pg_t *pg, const char *gid, const char *user_id, const char *role,
                        const char *kind) {
    const char *p[] = {gid, user_id, role, kind};
    return pg_exec_row(pg, "member_insert", p, false, NULL);
}

int store_member_ensure(pg_t *pg, const char *gid, const char *user_id, const char *kind,
                        bool *ret_added) {
    const char *p[] = {gid, user_id, kind};
    PGresult *res;
    int rc = pg_exec_row(pg, "member_ensure", p, false, &res);
    if (rc != 0)
        return rc;
    *ret_added = PQntuples(res) > 0;
    PQclear(res);
    return 0;
}

int store_member_set_role(pg_t *pg, const char *gid, const char *user_id, const char *role,
                          const char *kind) {
    const char *p[] = {gid, user_id, role, kind};
    return pg_exec_row(pg, "member_set_role", p, true, NULL);
}

int store_member_delete(pg_t *pg, const char *gid, const char *user_id) {
    const char *p[] = {gid, user_id};
    return pg_exec_row(pg, "member_delete", p, true, NULL);
}

int store_contacts(pg_t *pg, arena_t *a, const char *user_id, char ***ret_ids, size_t *ret_n) {
    const char *p[] = {user_id};
    PGresult *res;
    int rc = pg_exec_row(pg, "contacts", p, false, &res);
    if (rc != 0)
        return rc;
    rc = s_column_list(a, res, "user_id", ret_ids, ret_n);
    PQclear(res);
    return rc;
}

int store_shares_group(pg_t *pg, const char *a_id, const char *b_id, bool *ret) {
    const char *p[] = {a_id, b_id};
    PGresult *res;
    int rc = pg_exec_row(pg, "shares_group", p, true, &res);
    if (rc != 0)
        return rc;
    *ret = pg_col_bool(res, 0, "shares");
    PQclear(res);
    return 0;
}

/* --- invalidation outbox ------------------------------------------------------------------ */

int store_pending_add(pg_t *pg, const char *user_id, int64_t *ret_version) {
    const char *p[] = {user_id};
    PGresult *res = NULL;
    int rc = pg_exec_row(pg, "pending_add", p, true, &res);
    if (rc != 0)
        return rc;
    *ret_version = pg_col_i64(res, 0, "version");
    PQclear(res);
    return 0;
}

int store_pending_done(pg_t *pg, const char *user_id, int64_t version) {
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)version);
    const char *p[] = {user_id, v};
    return pg_exec_row(pg, "pending_done", p, false, NULL);
}

int store_pending_batch(pg_t *pg, arena_t *a, int limit, char ***ret_ids, int64_t **ret_versions,
                        size_t *ret_n) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *p[] = {lim};
    PGresult *res;
    int rc = pg_exec_row(pg, "pending_batch", p, false, &res);
    if (rc != 0)
        return rc;
    rc = s_column_list(a, res, "user_id", ret_ids, ret_n);
    int64_t *v = rc == 0 ? arena_alloc(a, (*ret_n ? *ret_n : 1) * sizeof *v) : NULL;
    if (rc == 0 && !v)
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < *ret_n; i++)
        v[i] = pg_col_i64(res, (int)i, "version");
    PQclear(res);
    if (rc == 0)
        *ret_versions = v;
    return rc;
}

/* --- invitations -------------------------------------------------------------------------- */

int store_invitation_insert(pg_t *pg, arena_t *a, const char *gid, const char *email,
                            const char *token_hash, const char *invited_by, long ttl_s,
                            Extranet__Membership__Invitation **ret) {
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%ld", ttl_s);
    const char *p[] = {gid, email, token_hash, invited_by, ttl};
    PGresult *res;
    int rc = pg_exec_row(pg, "invitation_insert", p, true, &res);
    if (rc != 0)
        return rc;
    *ret = s_invitation_row(a, res, 0);
    PQclear(res);
    return *ret ? 0 : -ENOMEM;
}

int store_invitations_list(pg_t *pg, arena_t *a, const char *gid,
                           Extranet__Membership__Invitation ***ret, size_t *ret_n) {
    const char *p[] = {gid};
    PGresult *res;
    int rc = pg_exec_row(pg, "invitations_of", p, false, &res);
    if (rc != 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    Extranet__Membership__Invitation **is = arena_alloc(a, (n ? n : 1) * sizeof *is);
    rc = is ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!(is[i] = s_invitation_row(a, res, (int)i)))
            rc = -ENOMEM;
    PQclear(res);
    if (rc == 0) {
        *ret = is;
        *ret_n = n;
    }
    return rc;
}

int store_invitation_group(pg_t *pg, arena_t *a, const char *id, char **ret_gid) {
    const char *p[] = {id};
    PGresult *res;
    int rc = pg_exec_row(pg, "invitation_group", p, true, &res);
    if (rc != 0)
        return rc;
    *ret_gid = pg_col_str(a, res, 0, "group_id");
    PQclear(res);
    return *ret_gid ? 0 : -ENOMEM;
}

int store_invitation_revoke(pg_t *pg, const char *id) {
    const char *p[] = {id};
    return pg_exec_row(pg, "invitation_revoke", p, true, NULL);
}

int store_invitation_expire(pg_t *pg, const char *gid, const char *id) {
    const char *p[] = {id, gid};
    int rc = pg_exec_row(pg, "invitation_expire", p, true, NULL);
    if (rc != -ENOENT)
        return rc;
    rc = pg_exec_row(pg, "invitation_expire_early", p, true, NULL);
    return rc == 0 ? -EAGAIN : rc;
}

int store_invitation_lookup(pg_t *pg, arena_t *a, const char *token_hash,
                            Extranet__Membership__InvitationInfo **ret) {
    const char *p[] = {token_hash};
    PGresult *res;
    int rc = pg_exec_row(pg, "invitation_lookup", p, true, &res);
    if (rc != 0)
        return rc;
    Extranet__Membership__InvitationInfo *info = arena_alloc(a, sizeof *info);
    if (info) {
        extranet__membership__invitation_info__init(info);
        info->email = pg_col_str(a, res, 0, "email");
        info->group_name = pg_col_str(a, res, 0, "group_name");
        info->expires_at = pg_col_str(a, res, 0, "expires_at");
    }
    PQclear(res);
    if (!info || !info->email || !info->group_name || !info->expires_at)
        return -ENOMEM;
    *ret = info;
    return 0;
}

int store_invitation_claim(pg_t *pg, arena_t *a, const char *token_hash, const char *email,
                           store_claim_t *ret) {
    const char *p[] = {token_hash, email ? email : ""};
    PGresult *res;
    int rc = pg_exec_row(pg, "invitation_claim", p, true, &res);
    if (rc != 0)
        return rc;
    ret->id = pg_col_str(a, res, 0, "id");
    ret->group_id = pg_col_str(a, res, 0, "group_id");
    ret->email = pg_col_str(a, res, 0, "email");
    PQclear(res);
    return (ret->id && ret->group_id && ret->email) ? 0 : -ENOMEM;
}

int store_invitation_unclaim(pg_t *pg, const char *id) {
    const char *p[] = {id};
    return pg_exec_row(pg, "invitation_unclaim", p, false, NULL);
}

int store_invitation_finish(pg_t *pg, const char *id, const char *user_id) {
    const char *p[] = {id, user_id};
    return pg_exec_row(pg, "invitation_finish", p, true, NULL);
}
