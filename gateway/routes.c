/* The gateway's route table (DESIGN.md §8, services/identity/README.md) and its matcher.
 * Adding an endpoint = one row here + its schema in docs/openapi.yaml (test_openapi.py checks
 * that the two agree). Matching is a linear scan over a few dozen rows: cheaper than a trie. */
#include "routes.h"
#include "audit.pb-c.h"
#include "envelope.pb-c.h"
#include "identity.pb-c.h"
#include "membership.pb-c.h"
#include <errno.h>
#include <jansson.h>
#include <string.h>

#define AUTH  GW_ROUTE_AUTH
#define MFA   GW_ROUTE_MFA_OK
#define RATE  GW_ROUTE_RATE
#define BODY  GW_ROUTE_BODY
#define DBG   GW_ROUTE_DEBUG
#define ID(x) &extranet__identity__##x##__descriptor
#define EMPTY &extranet__empty__descriptor
#define MB(x) &extranet__membership__##x##__descriptor
#define AU(x) &extranet__audit__##x##__descriptor

static const gw_route_t s_routes[] = {
    {"GET", "/healthz", NULL, NULL, NULL, 0, 200, NULL, GW_BUILTIN_HEALTHZ},
    {"GET", "/readyz", NULL, NULL, NULL, 0, 200, NULL, GW_BUILTIN_READYZ},
    {"GET", "/metrics", NULL, NULL, NULL, 0, 200, NULL, GW_BUILTIN_METRICS},
    /* sessions */
    {"POST", "/api/v1/auth/login", "identity.Login", ID(login_request), ID(login_reply),
     RATE | BODY, 200, "email", 0},
    {"POST", "/api/v1/auth/mfa", "identity.LoginMfa", ID(login_mfa_request), ID(login_reply),
     RATE | BODY, 200, "mfa_token", 0},
    {"POST", "/api/v1/auth/logout", "identity.Logout", EMPTY, NULL, AUTH | MFA, 204, NULL, 0},
    /* the caller */
    {"GET", "/api/v1/me", "identity.GetMe", EMPTY, ID(user), AUTH | MFA, 200, NULL, 0},
    /* the caller's event stream (text/event-stream): identity.GetMe confirms the account is
     * usable right now, then the stream opens (gateway/sse.c) */
    {"GET", "/api/v1/stream", "identity.GetMe", EMPTY, ID(user), AUTH | GW_ROUTE_STREAM, 200, NULL,
     0},
    {"POST", "/api/v1/me/mfa/enroll", "identity.MfaEnroll", EMPTY, ID(mfa_enroll_reply), AUTH | MFA,
     200, NULL, 0},
    {"POST", "/api/v1/me/mfa/confirm", "identity.MfaConfirm", ID(mfa_confirm_request),
     ID(mfa_confirm_reply), AUTH | MFA | BODY, 200, NULL, 0},
    {"GET", "/api/v1/me/sessions", "identity.ListSessions", EMPTY, ID(session_list), AUTH, 200,
     NULL, 0},
    {"DELETE", "/api/v1/me/sessions", "identity.RevokeOtherSessions", EMPTY, ID(revoke_reply), AUTH,
     200, NULL, 0},
    {"DELETE", "/api/v1/me/sessions/{id}", "identity.RevokeSession", ID(session_id_request), NULL,
     AUTH, 204, NULL, 0},
    {"POST", "/api/v1/me/password", "identity.ChangePassword", ID(change_password_request), NULL,
     AUTH | BODY, 204, NULL, 0},
    /* admin */
    {"GET", "/api/v1/admin/users", "identity.ListUsers", ID(list_users_request), ID(user_list),
     AUTH, 200, NULL, 0},
    {"POST", "/api/v1/admin/users", "identity.CreateUser", ID(create_user_request), ID(user),
     AUTH | BODY, 201, NULL, 0},
    {"GET", "/api/v1/admin/users/{id}", "identity.GetUser", ID(user_id_request), ID(user), AUTH,
     200, NULL, 0},
    {"PATCH", "/api/v1/admin/users/{id}", "identity.UpdateUser", ID(update_user_request), ID(user),
     AUTH | BODY, 200, NULL, 0},
    {"POST", "/api/v1/admin/users/{id}/transfer-to-intranet", "identity.TransferToIntranet",
     ID(user_id_request), ID(user), AUTH, 200, NULL, 0},
    {"POST", "/api/v1/admin/users/{id}/reset-mfa", "identity.ResetMfa", ID(user_id_request),
     ID(user), AUTH, 200, NULL, 0},
    {"GET", "/api/v1/admin/policy", "identity.GetPolicy", EMPTY, ID(policy), AUTH, 200, NULL, 0},
    {"PUT", "/api/v1/admin/policy", "identity.SetPolicy", ID(policy), ID(policy), AUTH | BODY, 200,
     NULL, 0},
    /* audit (admins only; services/audit/README.md) */
    {"GET", "/api/v1/admin/audit", "audit.Query", AU(query_request), AU(query_reply), AUTH, 200,
     NULL, 0},
    /* streamed: every page, one CSV / JSON-lines body (gateway/export.c) */
    {"GET", "/api/v1/admin/audit/export", "audit.Export", AU(export_request), AU(export_reply),
     AUTH | GW_ROUTE_EXPORT, 200, NULL, 0},
    {"GET", "/api/v1/admin/audit/verify", "audit.Verify", EMPTY, AU(verify_reply), AUTH, 200, NULL,
     0},
    /* a group's own records: its owner and admins; anyone else 404 like a missing group */
    {"GET", "/api/v1/groups/{gid}/audit", "audit.QueryGroup", AU(group_query_request),
     AU(query_reply), AUTH, 200, NULL, 0},
    /* groups, members, invitations, people (services/membership/README.md) */
    {"POST", "/api/v1/groups", "membership.CreateGroup", MB(create_group_request), MB(group),
     AUTH | BODY, 201, NULL, 0},
    {"GET", "/api/v1/groups", "membership.ListGroups", MB(list_groups_request), MB(group_list),
     AUTH, 200, NULL, 0},
    {"GET", "/api/v1/groups/{gid}", "membership.GetGroup", MB(group_id_request), MB(group), AUTH,
     200, NULL, 0},
    {"PATCH", "/api/v1/groups/{gid}", "membership.UpdateGroup", MB(update_group_request), MB(group),
     AUTH | BODY, 200, NULL, 0},
    {"DELETE", "/api/v1/groups/{gid}", "membership.ArchiveGroup", MB(group_id_request), NULL, AUTH,
     204, NULL, 0},
    {"GET", "/api/v1/groups/{gid}/members", "membership.ListMembers", MB(group_id_request),
     MB(member_list), AUTH, 200, NULL, 0},
    {"POST", "/api/v1/groups/{gid}/members", "membership.AddMember", MB(add_member_request),
     MB(member), AUTH | BODY, 201, NULL, 0},
    {"PATCH", "/api/v1/groups/{gid}/members/{uid}", "membership.UpdateMember",
     MB(update_member_request), MB(member), AUTH | BODY, 200, NULL, 0},
    {"DELETE", "/api/v1/groups/{gid}/members/{uid}", "membership.RemoveMember", MB(member_request),
     NULL, AUTH, 204, NULL, 0},
    {"POST", "/api/v1/groups/{gid}/invitations", "membership.Invite", MB(invite_request),
     MB(invitation), AUTH | BODY, 201, NULL, 0},
    {"GET", "/api/v1/groups/{gid}/invitations", "membership.ListInvitations", MB(group_id_request),
     MB(invitation_list), AUTH, 200, NULL, 0},
    {"DELETE", "/api/v1/groups/{gid}/invitations/{id}", "membership.RevokeInvitation",
     MB(invitation_id_request), NULL, AUTH, 204, NULL, 0},
    {"GET", "/api/v1/invitations/{token}", "membership.LookupInvitation", MB(token_request),
     MB(invitation_info), 0, 200, NULL, 0},
    {"POST", "/api/v1/invitations/{token}/accept", "membership.AcceptInvitation",
     MB(accept_request), MB(accept_reply), BODY, 200, NULL, 0},
    {"POST", "/api/v1/invitations/{token}/join", "membership.JoinInvitation", MB(token_request),
     MB(accept_reply), AUTH, 200, NULL, 0},
    {"GET", "/api/v1/contacts", "membership.ListContacts", EMPTY, MB(person_list), AUTH, 200, NULL,
     0},
    {"GET", "/api/v1/users/{id}", "membership.GetPerson", MB(user_id_request), MB(person), AUTH,
     200, NULL, 0},
    /* tests only (EXTRANET_DEBUG_ROUTES=1): the echo service, e.g. a slow reply for 504 */
    {"GET", "/api/v1/debug/echo", "echo.Echo", &extranet__echo_request__descriptor,
     &extranet__echo_reply__descriptor, DBG, 200, NULL, 0},
};
#define S_NROUTES ((int)(sizeof s_routes / sizeof s_routes[0]))

static bool s_debug;

const gw_route_t *routes_table(int *ret_count) {
    *ret_count = S_NROUTES;
    return s_routes;
}

void routes_enable_debug(bool on) {
    s_debug = on;
}

bool routes_param_is_uuid(const char *name) {
    size_t n = strlen(name);
    return strcmp(name, "id") == 0 || strcmp(name, "gid") == 0 || strcmp(name, "uid") == 0 ||
           (n > 3 && strcmp(name + n - 3, "_id") == 0);
}

int routes_check(void) {
    for (int i = 0; i < S_NROUTES; i++) {
        const gw_route_t *r = &s_routes[i];
        if (r->builtin)
            continue;
        const char *p = r->pattern;
        while ((p = strchr(p, '{')) != NULL) {
            const char *end = strchr(p, '}');
            char name[32];
            if (!end || (size_t)(end - p - 1) >= sizeof name)
                goto bad;
            memcpy(name, p + 1, (size_t)(end - p - 1));
            name[end - p - 1] = '\0';
            if (!protobuf_c_message_descriptor_get_field_by_name(r->request, name))
                goto bad;
            p = end;
        }
        if (r->rate_field) {
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field_by_name(r->request, r->rate_field);
            if (!f || f->type != PROTOBUF_C_TYPE_STRING)
                goto bad;
        }
        if ((r->reply == NULL) != (r->success == 204))
            goto bad;
        continue;
    bad:
        fprintf(stderr, "gateway: bad route %s %s\n", r->http_method, r->pattern);
        return -EINVAL;
    }
    return 0;
}

/* Matches one path against one pattern segment by segment, capturing {params}. */
static int s_match_path(const char *pattern, const char *path, gw_match_t *m) {
    m->nparams = 0;
    const char *p = pattern, *u = path;
    while (*p && *u) {
        if (*p == '{') {
            const char *pe = strchr(p, '}');
            const char *ue = strchr(u, '/');
            if (!ue)
                ue = u + strlen(u);
            size_t nlen = (size_t)(pe - p - 1), vlen = (size_t)(ue - u);
            if (vlen == 0)
                return -ENOENT;
            if (m->nparams >= GW_MAX_PARAMS || nlen >= sizeof m->names[0])
                return -ENOENT;
            if (vlen >= sizeof m->values[0])
                return -E2BIG;
            memcpy(m->names[m->nparams], p + 1, nlen);
            m->names[m->nparams][nlen] = '\0';
            memcpy(m->values[m->nparams], u, vlen);
            m->values[m->nparams][vlen] = '\0';
            m->nparams++;
            p = pe + 1;
            u = ue;
        } else if (*p == *u) {
            p++;
            u++;
        } else {
            return -ENOENT;
        }
    }
    return (*p == '\0' && *u == '\0') ? 0 : -ENOENT;
}

int routes_match(const char *method, const char *path, gw_match_t *ret, char *ret_allow,
                 size_t allow_len) {
    bool path_known = false, too_long = false;
    if (allow_len)
        ret_allow[0] = '\0';
    for (int i = 0; i < S_NROUTES; i++) {
        const gw_route_t *r = &s_routes[i];
        if ((r->flags & GW_ROUTE_DEBUG) && !s_debug)
            continue;
        gw_match_t m;
        int rc = s_match_path(r->pattern, path, &m);
        if (rc == -E2BIG)
            too_long = true;
        if (rc != 0)
            continue;
        if (strcmp(r->http_method, method) == 0) {
            *ret = m;
            ret->route = r;
            ret->index = i;
            return 0;
        }
        path_known = true;
        size_t used = strlen(ret_allow);
        if (used + strlen(r->http_method) + 3 < allow_len)
            snprintf(ret_allow + used, allow_len - used, "%s%s", used ? ", " : "", r->http_method);
    }
    if (path_known) {
        size_t used = strlen(ret_allow);
        if (used + 10 < allow_len)
            snprintf(ret_allow + used, allow_len - used, ", OPTIONS");
        return -EPERM;
    }
    return too_long ? -E2BIG : -ENOENT;
}

/* The top-level field names of a message type, as a new JSON array (null for none). */
static json_t *s_fields(const ProtobufCMessageDescriptor *d) {
    if (!d)
        return json_null();
    json_t *a = json_array();
    for (unsigned i = 0; a && i < d->n_fields; i++)
        json_array_append_new(a, json_string(d->fields[i].name));
    return a;
}

void routes_print(FILE *out) {
    for (int i = 0; i < S_NROUTES; i++) {
        const gw_route_t *r = &s_routes[i];
        json_t *o = json_pack(
            "{s:s, s:s, s:s?, s:s?, s:s?, s:o, s:o, s:b, s:i, s:b, s:b, s:b, s:b, s:b, "
            "s:b}",
            "method", r->http_method, "path", r->pattern, "rpc", r->rpc, "request",
            r->request ? r->request->name : NULL, "reply", r->reply ? r->reply->name : NULL,
            "request_fields", s_fields(r->request), "reply_fields", s_fields(r->reply), "body",
            (r->flags & GW_ROUTE_BODY) != 0, "status", r->success, "auth",
            (r->flags & GW_ROUTE_AUTH) != 0, "mfa_pending_ok", (r->flags & GW_ROUTE_MFA_OK) != 0,
            "rate_limited", (r->flags & GW_ROUTE_RATE) != 0, "debug",
            (r->flags & GW_ROUTE_DEBUG) != 0, "stream", (r->flags & GW_ROUTE_STREAM) != 0, "export",
            (r->flags & GW_ROUTE_EXPORT) != 0);
        if (!o)
            continue;
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s)
            fprintf(out, "%s\n", s);
        free(s);
        json_decref(o);
    }
}
