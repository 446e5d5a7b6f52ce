/* The route table: HTTP method + path pattern -> service method, request/reply message types,
 * flags and success status. One static table (routes.c) is the single source the handler, the
 * `gateway --routes` listing and tests/api/test_openapi.py all read. */
#ifndef GW_ROUTES_H
#define GW_ROUTES_H
#include "extranet/common.h"
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdio.h>

enum {
    GW_ROUTE_AUTH = 1 << 0,   /* needs a Bearer session */
    GW_ROUTE_MFA_OK = 1 << 1, /* allowed while the session is mfa_pending (R10) */
    GW_ROUTE_RATE = 1 << 2,   /* login rate limit (per account + per client ip) */
    GW_ROUTE_DEBUG = 1 << 3,  /* only with EXTRANET_DEBUG_ROUTES=1 */
    GW_ROUTE_BODY = 1 << 4,   /* takes a JSON body (POST/PUT/PATCH with fields) */
    GW_ROUTE_STREAM = 1 << 5, /* on OK the reply opens an event stream (sse.h) */
    GW_ROUTE_EXPORT = 1 << 6, /* on OK the reply is the first page of a streamed export */
};

typedef enum {
    GW_BUILTIN_NONE = 0,
    GW_BUILTIN_HEALTHZ,
    GW_BUILTIN_READYZ,
    GW_BUILTIN_METRICS
} gw_builtin_t;

typedef struct {
    const char *http_method;                   /* "GET", "POST", ... */
    const char *pattern;                       /* "/api/v1/admin/users/{id}" */
    const char *rpc;                           /* "identity.GetUser"; NULL for built-ins */
    const ProtobufCMessageDescriptor *request; /* NULL for built-ins */
    const ProtobufCMessageDescriptor *reply;   /* NULL: no body (204) */
    unsigned flags;
    int success;            /* 200 / 201 / 204 */
    const char *rate_field; /* body field naming the account (GW_ROUTE_RATE) */
    gw_builtin_t builtin;
} gw_route_t;

#define GW_MAX_PARAMS 4
typedef struct {
    const gw_route_t *route;
    int index; /* row of route in the table (metrics label) */
    int nparams;
    char names[GW_MAX_PARAMS][32];
    char values[GW_MAX_PARAMS][128];
} gw_match_t;

/* The table and its length (borrowed, static). */
const gw_route_t *routes_table(int *ret_count);

/* Checks the table against the message descriptors (every {param} is a field of the request
 * message, every rate_field a string field). Returns 0, or -EINVAL and prints the bad row. */
int routes_check(void) WUR;

/* Enables the GW_ROUTE_DEBUG rows (EXTRANET_DEBUG_ROUTES=1). Call before serving. */
void routes_enable_debug(bool on);

/* Matches method + path (already percent-decoded by libmicrohttpd). Returns 0 with *ret
 * filled; -ENOENT when no pattern matches the path; -EPERM when the path exists but not for
 * this method (ret_allow gets "GET, POST, OPTIONS", at most allow_len bytes); -E2BIG when a
 * path segment is too long to be a parameter. */
int routes_match(const char *method, const char *path, gw_match_t *ret, char *ret_allow,
                 size_t allow_len) WUR;

/* True when a path parameter holds a uuid (names "id", "gid", "uid" or "*_id"). */
bool routes_param_is_uuid(const char *name);

/* Prints the table as JSON lines {"method","path","rpc","request","reply","request_fields",
 * "reply_fields","body","status","auth","mfa_pending_ok","rate_limited","debug","stream",
 * "export"} (for
 * `gateway --routes`; tests/api/test_openapi.py compares it with docs/openapi.yaml). */
void routes_print(FILE *out);
#endif
