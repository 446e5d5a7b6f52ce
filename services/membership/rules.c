/* membership's pure decisions (rules.h): group visibility (R1), member management, R2/R3,
 * person visibility (R4) and input checks. No I/O, no allocation. */
#include "rules.h"
#include <ctype.h>
#include <string.h>

#define OK_V            ((rules_verdict_t){EXTRANET__STATUS__OK, NULL})
#define FAIL_V(st, msg) ((rules_verdict_t){EXTRANET__STATUS__##st, (msg)})
#define HIDDEN_V        FAIL_V(NOT_FOUND, RULES_NOT_FOUND)

bool rules_role_parse(const char *s, mrole_t *ret) {
    return iso_role_parse(s, ret);
}

const char *rules_role_name(mrole_t r) {
    return iso_role_name(r);
}

ukind_t rules_ukind_parse(const char *s) {
    if (!s)
        return UKIND_UNKNOWN;
    if (!strcmp(s, "admin"))
        return UKIND_ADMIN;
    if (!strcmp(s, "employee"))
        return UKIND_EMPLOYEE;
    if (!strcmp(s, "extranet"))
        return UKIND_EXTRANET;
    return UKIND_UNKNOWN;
}

ukind_t rules_actor_ukind(Extranet__ActorKind k) {
    switch (k) {
    case EXTRANET__ACTOR_KIND__ADMIN:
        return UKIND_ADMIN;
    case EXTRANET__ACTOR_KIND__EMPLOYEE:
        return UKIND_EMPLOYEE;
    case EXTRANET__ACTOR_KIND__EXTRANET:
        return UKIND_EXTRANET;
    default:
        return UKIND_UNKNOWN;
    }
}

static bool s_valid_role(mrole_t r) {
    return r >= ROLE_NONE && r <= ROLE_OWNER;
}

rules_verdict_t rules_group_view(ukind_t actor, mrole_t actor_role) {
    if (actor == UKIND_ADMIN)
        return OK_V;
    if ((actor == UKIND_EMPLOYEE || actor == UKIND_EXTRANET) && s_valid_role(actor_role) &&
        actor_role != ROLE_NONE)
        return OK_V;
    return HIDDEN_V;
}

rules_verdict_t rules_group_create(ukind_t actor) {
    if (actor == UKIND_ADMIN || actor == UKIND_EMPLOYEE)
        return OK_V;
    if (actor == UKIND_EXTRANET)
        return FAIL_V(FORBIDDEN, "extranet users cannot create groups");
    return FAIL_V(UNAUTHENTICATED, "authentication required");
}

static bool s_manager(ukind_t actor, mrole_t role) {
    return actor == UKIND_ADMIN || role == ROLE_OWNER || role == ROLE_MODERATOR;
}

rules_verdict_t rules_group_settings(ukind_t actor, mrole_t actor_role, bool archived) {
    rules_verdict_t v = rules_group_view(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (actor != UKIND_ADMIN && actor_role != ROLE_OWNER)
        return FAIL_V(FORBIDDEN, "only the group's owner may change or archive the group");
    if (archived)
        return FAIL_V(CONFLICT, "the group is archived");
    return OK_V;
}

rules_verdict_t rules_invitations_manage(ukind_t actor, mrole_t actor_role) {
    rules_verdict_t v = rules_group_view(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (!s_manager(actor, actor_role))
        return FAIL_V(FORBIDDEN, "only the group's owner and moderators manage invitations");
    return OK_V;
}

rules_verdict_t rules_invite(ukind_t actor, mrole_t actor_role, gkind_t g, bool archived) {
    rules_verdict_t v = rules_invitations_manage(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (g != GKIND_EXTRANET)
        return FAIL_V(INVALID, "invitations are for extranet groups only; an internal group has "
                               "employees only (add them as members)");
    if (archived)
        return FAIL_V(CONFLICT, "the group is archived");
    return OK_V;
}

rules_verdict_t rules_role_allowed(gkind_t g, ukind_t target, mrole_t role) {
    if (target == UKIND_UNKNOWN)
        return HIDDEN_V;
    if (role == ROLE_NONE || !s_valid_role(role))
        return FAIL_V(INVALID, "role must be owner, moderator or member");
    if (target == UKIND_EXTRANET && g != GKIND_EXTRANET)
        return FAIL_V(INVALID, "extranet users cannot be members of an internal group");
    if (target == UKIND_EXTRANET && role != ROLE_MEMBER)
        return FAIL_V(INVALID, "extranet users can only be members, never owner or moderator");
    return OK_V;
}

rules_verdict_t rules_member_add(ukind_t actor, mrole_t actor_role, gkind_t g, bool archived,
                                 ukind_t target, mrole_t target_role, mrole_t role) {
    rules_verdict_t v = rules_group_view(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (!s_manager(actor, actor_role))
        return FAIL_V(FORBIDDEN, "only the group's owner and moderators may add members");
    if (archived)
        return FAIL_V(CONFLICT, "the group is archived");
    if (role == ROLE_OWNER)
        return FAIL_V(INVALID, "a group has exactly one owner: transfer ownership to a member "
                               "instead");
    v = rules_role_allowed(g, target, role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (role == ROLE_MODERATOR && actor != UKIND_ADMIN && actor_role != ROLE_OWNER)
        return FAIL_V(FORBIDDEN, "moderators may add members only");
    if (target_role != ROLE_NONE)
        return FAIL_V(CONFLICT, "already a member of the group");
    return OK_V;
}

rules_verdict_t rules_member_set_role(ukind_t actor, mrole_t actor_role, bool self, gkind_t g,
                                      bool archived, ukind_t target, mrole_t target_role,
                                      mrole_t role) {
    (void)self; /* the owner changing its own role is covered by target_role == OWNER */
    rules_verdict_t v = rules_group_view(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (target_role == ROLE_NONE)
        return HIDDEN_V;
    if (actor != UKIND_ADMIN && actor_role != ROLE_OWNER)
        return FAIL_V(FORBIDDEN, "only the group's owner may change roles");
    if (archived)
        return FAIL_V(CONFLICT, "the group is archived");
    v = rules_role_allowed(g, target, role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (target_role == ROLE_OWNER && role != ROLE_OWNER)
        return FAIL_V(CONFLICT, "a group always has exactly one owner: transfer ownership to "
                                "another member first");
    return OK_V;
}

rules_verdict_t rules_member_remove(ukind_t actor, mrole_t actor_role, bool self,
                                    mrole_t target_role) {
    rules_verdict_t v = rules_group_view(actor, actor_role);
    if (v.status != EXTRANET__STATUS__OK)
        return v;
    if (target_role == ROLE_NONE || !s_valid_role(target_role))
        return HIDDEN_V;
    if (target_role == ROLE_OWNER)
        return FAIL_V(CONFLICT, "the owner cannot leave or be removed: transfer ownership first");
    if (self && actor_role != ROLE_NONE)
        return OK_V;
    if (actor == UKIND_ADMIN || actor_role == ROLE_OWNER)
        return OK_V;
    if (actor_role == ROLE_MODERATOR && target_role == ROLE_MEMBER)
        return OK_V;
    return FAIL_V(FORBIDDEN, actor_role == ROLE_MODERATOR
                                 ? "moderators may remove members only"
                                 : "only the group's owner and moderators may remove members");
}

bool rules_person_visible(ukind_t viewer, bool self, ukind_t target, bool shares_group) {
    if (viewer == UKIND_UNKNOWN || target == UKIND_UNKNOWN)
        return false;
    if (self || viewer == UKIND_ADMIN)
        return true;
    if (viewer == UKIND_EMPLOYEE)
        return target != UKIND_EXTRANET || shares_group;
    return shares_group; /* extranet viewer */
}

/* --- input checks ------------------------------------------------------------------------- */

static bool s_has_control(const char *s, bool allow_newlines) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (allow_newlines && (*p == '\n' || *p == '\t'))
            continue;
        if (*p < 0x20 || *p == 0x7f)
            return true;
    }
    return false;
}

const char *rules_group_name_check(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 200)
        return "name must be 1 to 200 bytes";
    if (s_has_control(s, false))
        return "name must not contain control characters";
    return NULL;
}

const char *rules_description_check(const char *s) {
    if (!s)
        return NULL;
    if (strlen(s) > 4000)
        return "description must be at most 4000 bytes";
    if (s_has_control(s, true))
        return "description must not contain control characters";
    return NULL;
}

const char *rules_group_kind_check(const char *s, gkind_t *ret) {
    if (s && !strcmp(s, "internal")) {
        *ret = GKIND_INTERNAL;
        return NULL;
    }
    if (s && !strcmp(s, "extranet")) {
        *ret = GKIND_EXTRANET;
        return NULL;
    }
    return "kind must be internal or extranet";
}

const char *rules_task_visibility_check(const char *s) {
    if (s && (!strcmp(s, "all") || !strcmp(s, "involved")))
        return NULL;
    return "task_visibility must be all or involved";
}

const char *rules_file_access_check(const char *s) {
    if (s &&
        (!strcmp(s, "none") || !strcmp(s, "view") || !strcmp(s, "upload") || !strcmp(s, "edit")))
        return NULL;
    return "external_file_access must be none, view, upload or edit";
}

const char *rules_email_check(const char *s) {
    if (!s || !s[0])
        return "email is required";
    size_t n = strlen(s);
    if (n < 3 || n > 254)
        return "email must be 3 to 254 characters";
    const char *at = strchr(s, '@');
    if (!at || strchr(at + 1, '@') || at == s || at - s > 64)
        return "email must be a plain address (local@domain)";
    const char *d = at + 1;
    if (!d[0] || d[0] == '.' || d[strlen(d) - 1] == '.' || strstr(d, ".."))
        return "email has an invalid domain";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("<>()[]\\,;:\"", *p))
            return "email contains a character that is not allowed";
    for (const char *p = d; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return "email has an invalid domain";
    return NULL;
}

bool rules_token_shape(const char *s) {
    if (!s || strlen(s) != RULES_TOKEN_LEN)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return false;
    return true;
}
