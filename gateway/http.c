/* The libmicrohttpd daemon and its access handler. A request goes: headers (route, limits,
 * CORS preflight, early 404/405/413/415/431) -> body chunks (bounded) -> complete (JSON ->
 * protobuf, params, auth, rate limit) -> suspended in the loop -> resumed -> reply rendered.
 * Every response leaves through s_queue(), which adds the headers every response carries. */
#include "http.h"
#include "auth.h"
#include "clientip.h"
#include "codec.h"
#include "cors.h"
#include "errors.h"
#include "export.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "metrics.h"
#include "ratelimit.h"
#include "request.h"
#include "sse.h"
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

struct gw_http {
    http_cfg_t cfg;
    gw_loop_t *loop;
    struct MHD_Daemon *daemon;
    uint16_t port;
    long in_flight; /* requests between their first handler call and completion (atomic) */
};

static int64_t s_mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* --- responses ---------------------------------------------------------------------------- */

typedef struct {
    const char *allow;        /* Allow header (405, OPTIONS) */
    const char *preflight;    /* Access-Control-Allow-Methods of a CORS preflight */
    int retry_after_s;        /* > 0: Retry-After */
    const char *content_type; /* default application/json */
} s_extra_t;

/* The headers every response carries, streams included: X-Request-Id, Cache-Control, Vary,
 * Content-Type, CORS. True when all were added. */
static bool s_add_common_headers(const gw_req_t *req, struct MHD_Response *resp,
                                 const char *content_type) {
    bool ok = MHD_add_response_header(resp, "X-Request-Id", req->request_id) == MHD_YES &&
              MHD_add_response_header(resp, "Cache-Control", "private, no-store") == MHD_YES &&
              MHD_add_response_header(resp, "Vary", "Authorization, Origin") == MHD_YES &&
              MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES;
    if (ok && req->origin)
        ok = cors_add_headers(resp, req->origin) == 0;
    return ok;
}

/* Queues status + body (malloc'd, stolen; may be NULL for no body) with the headers every
 * response carries: X-Request-Id, Content-Type, Cache-Control, Vary, CORS. */
static enum MHD_Result s_queue(gw_req_t *req, const char *method, int status, char *body,
                               size_t len, const s_extra_t *x) {
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    int ok = s_add_common_headers(req, resp,
                                  x && x->content_type ? x->content_type : "application/json");
    if (ok && x && x->preflight && req->origin)
        ok = cors_add_preflight(resp, x->preflight) == 0;
    if (ok && x && x->allow)
        ok = MHD_add_response_header(resp, "Allow", x->allow) == MHD_YES;
    if (ok && x && x->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", x->retry_after_s);
        ok = MHD_add_response_header(resp, "Retry-After", ra) == MHD_YES;
    }
    enum MHD_Result rc = ok ? MHD_queue_response(req->conn, (unsigned)status, resp) : MHD_NO;
    MHD_destroy_response(resp);
    req->state = GW_REQ_ANSWERED;
    double secs = (double)(s_mono_us() - req->start_us) / 1e6;
    metrics_observe(req->match.route ? req->match.index : -1, method, status, secs);
    /* The access log: server errors always, everything with EXTRANET_LOG=debug. */
    log_set_request_id(req->request_id);
    if (status >= 500)
        log_info("%s %s -> %d (%.1f ms)", method,
                 req->match.route ? req->match.route->pattern : "-", status, secs * 1000);
    else
        log_debug("%s %s -> %d (%.1f ms)", method,
                  req->match.route ? req->match.route->pattern : "-", status, secs * 1000);
    log_set_request_id(NULL);
    return rc;
}

static enum MHD_Result s_error(gw_req_t *req, const char *method, int http, const char *code,
                               const char *message, const s_extra_t *x) {
    size_t len = 0;
    char *body = errors_body(code, message, req->request_id, &len);
    if (!body)
        return MHD_NO;
    return s_queue(req, method, http, body, len, x);
}

static enum MHD_Result s_status_error(gw_req_t *req, const char *method, Extranet__Status st,
                                      const char *message, int retry_after_s) {
    /* R1: every 404 has the same body, whichever service (or the gateway) said it, so a
     * hidden resource can never be told from a missing one by its message. */
    if (st == EXTRANET__STATUS__NOT_FOUND)
        message = "not found";
    s_extra_t x = {.retry_after_s = st == EXTRANET__STATUS__RATE_LIMITED
                                        ? (retry_after_s > 0 ? retry_after_s : 1)
                                        : 0};
    return s_error(req, method, errors_http(st), errors_code(st), message, &x);
}

static enum MHD_Result s_json(gw_req_t *req, const char *method, int status, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!s)
        return s_status_error(req, method, EXTRANET__STATUS__INTERNAL, "out of memory", 0);
    return s_queue(req, method, status, s, strlen(s), NULL);
}

/* --- the request's life ------------------------------------------------------------------- */

void http_req_resume(gw_req_t *req) {
    req->state = GW_REQ_RESULT;
    MHD_resume_connection(req->conn);
}

typedef struct {
    size_t total;
} s_size_t;

static enum MHD_Result s_sum_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value) {
    s_size_t *sz = cls;
    sz->total += strlen(key) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

static bool s_is_json(const char *ct) {
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Queues the answer decided from the headers. */
static enum MHD_Result s_early(gw_req_t *req, const char *method) {
    if (req->early_preflight) {
        s_extra_t x = {.allow = req->allow, .preflight = req->allow};
        return s_queue(req, method, 204, NULL, 0, &x);
    }
    s_extra_t x = {.allow = req->early_http == 405 ? req->allow : NULL};
    return s_error(req, method, req->early_http, req->early_code, req->early_msg, &x);
}

static void s_decide(gw_req_t *req, int http, const char *code, const char *msg) {
    req->early_http = http;
    req->early_code = code;
    req->early_msg = msg;
}

/* First call: headers are complete. An answer decided here is sent at once when a body is on
 * its way (libmicrohttpd then discards it and closes the connection), else when the request is
 * complete, so a keep-alive connection survives a 404. */
static enum MHD_Result s_on_headers(gw_http_t *self, gw_req_t *req, const char *url,
                                    const char *method, const char *version) {
    struct MHD_Connection *c = req->conn;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    clientip_resolve(ci ? ci->client_addr : NULL,
                     MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-For"),
                     req->client_ip, sizeof req->client_ip);
    req->origin = cors_allowed(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin"));

    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
    bool has_body = te != NULL, bad_length = false, too_long = false;
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        bad_length = errno || end == cl || *end;
        too_long = !bad_length && n > self->cfg.max_body;
        has_body = has_body || bad_length || n > 0;
    }

    s_size_t sz = {strlen(url) + strlen(method) + 16};
    MHD_get_connection_values(c, MHD_HEADER_KIND, s_sum_header, &sz);
    int rc = sz.total > self->cfg.max_header
                 ? 0
                 : routes_match(method, url, &req->match, req->allow, sizeof req->allow);
    if (sz.total > self->cfg.max_header)
        s_decide(req, 431, "header_too_large", "request line and headers are too large");
    else if (rc == -EPERM && strcmp(method, "OPTIONS") == 0)
        req->early_preflight = true;
    else if (rc == -EPERM)
        s_decide(req, 405, "method_not_allowed", "method not allowed on this resource");
    else if (rc < 0)
        s_decide(req, 404, "not_found", "not found");
    else if ((req->match.route->flags & GW_ROUTE_EXPORT) &&
             strcmp(version, MHD_HTTP_VERSION_1_1) != 0)
        /* Only chunked encoding (HTTP/1.1) lets a client tell an export cut short by a failure
         * from a complete one; HTTP/1.0 would end both by closing the connection. */
        s_decide(req, 505, "http_version_not_supported", "streamed exports need HTTP/1.1");
    else if (bad_length)
        s_decide(req, 400, "invalid", "bad Content-Length");
    else if (too_long)
        s_decide(req, 413, "too_large", "request body too large");
    else if (has_body &&
             !s_is_json(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type")))
        s_decide(req, 415, "unsupported_media", "request bodies must be application/json");
    if (req->early_http == 404 || req->early_http == 431)
        req->match.route = NULL;
    if ((req->early_http || req->early_preflight) && has_body)
        return s_early(req, method);
    return MHD_YES;
}

/* A body chunk: kept up to max_body; past it the request is marked and later answered 413
 * (a response cannot be queued while upload data is being delivered), and a client that keeps
 * sending far past the limit is cut off. */
static enum MHD_Result s_on_body(gw_http_t *self, gw_req_t *req, const char *data, size_t n) {
    if (req->body_too_large || req->body_len + n > self->cfg.max_body) {
        req->body_too_large = true;
        req->body_discarded += n;
        return req->body_discarded > 4 * self->cfg.max_body ? MHD_NO : MHD_YES;
    }
    if (req->body_len + n + 1 > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 1024;
        while (cap < req->body_len + n + 1)
            cap *= 2;
        char *p = realloc(req->body, cap);
        if (!p)
            return MHD_NO;
        req->body = p;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    return MHD_YES;
}

static int s_depth(const json_t *j, int limit) {
    if (limit < 0)
        return 0;
    const char *k;
    json_t *v;
    size_t i;
    int best = 0;
    if (json_is_object(j)) {
        json_object_foreach((json_t *)j, k, v) {
            int d = s_depth(v, limit - 1);
            if (d > best)
                best = d;
            if (best > limit)
                break;
        }
        return best + 1;
    }
    if (json_is_array(j)) {
        json_array_foreach(j, i, v) {
            int d = s_depth(v, limit - 1);
            if (d > best)
                best = d;
            if (best > limit)
                break;
        }
        return best + 1;
    }
    return 0;
}

typedef struct {
    gw_req_t *req;
    ProtobufCMessage *msg;
    int rc;
    char text[192];
} s_query_t;

static enum MHD_Result s_set_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
    s_query_t *q = cls;
    codec_error_t err = {{0}, {0}};
    int rc = codec_set_field(q->msg, key, value ? value : "", arena_allocator(q->req->arena), &err);
    if (rc == -ENOENT) {
        snprintf(q->text, sizeof q->text, "unknown query parameter '%.64s'", key);
        q->rc = rc;
        return MHD_NO;
    }
    if (rc < 0) {
        snprintf(q->text, sizeof q->text, "query parameter '%.64s': %.100s", key, err.text);
        q->rc = rc;
        return MHD_NO;
    }
    return MHD_YES;
}

/* Decodes body, query and path parameters into the route's request message and packs it into
 * req->payload. Returns OK, or the status with req->deferred_msg set (answered once the
 * caller is known to be authenticated: nothing about validation leaks to strangers). */
static Extranet__Status s_build_payload(gw_http_t *self, gw_req_t *req, char *ret_account,
                                        size_t account_len) {
    const gw_route_t *r = req->match.route;
    json_t *in = NULL;
    if (req->body_len > 0) {
        json_error_t jerr;
        in = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!in) {
            snprintf(req->deferred_msg, sizeof req->deferred_msg,
                     "malformed JSON at line %d column %d: %.120s", jerr.line, jerr.column,
                     jerr.text);
            return EXTRANET__STATUS__INVALID;
        }
        if (!json_is_object(in)) {
            json_decref(in);
            snprintf(req->deferred_msg, sizeof req->deferred_msg,
                     "the request body must be a JSON object");
            return EXTRANET__STATUS__INVALID;
        }
        if (s_depth(in, CODEC_MAX_DEPTH) > CODEC_MAX_DEPTH) {
            json_decref(in);
            snprintf(req->deferred_msg, sizeof req->deferred_msg,
                     "JSON nested deeper than %d levels", CODEC_MAX_DEPTH);
            return EXTRANET__STATUS__INVALID;
        }
    } else {
        in = json_object();
        if (!in)
            return EXTRANET__STATUS__INTERNAL;
    }
    req->arena = arena_new(8 * self->cfg.max_body + 65536);
    if (!req->arena) {
        json_decref(in);
        return EXTRANET__STATUS__INTERNAL;
    }
    ProtobufCAllocator *alloc = arena_allocator(req->arena);
    ProtobufCMessage *msg = NULL;
    codec_error_t err = {{0}, {0}};
    int rc = codec_from_json(in, r->request, alloc, &msg, &err);
    json_decref(in);
    if (rc < 0) {
        snprintf(req->deferred_msg, sizeof req->deferred_msg, "%s%s%.150s", err.field,
                 err.field[0] ? ": " : "", err.text[0] ? err.text : "invalid request");
        return EXTRANET__STATUS__INVALID;
    }
    /* A route with a JSON body takes its fields from the body only: a query parameter could
     * otherwise override a body field after the rate limiter read it (?email=victim), and
     * passwords would travel in URLs (and into proxies' logs). */
    if ((r->flags & GW_ROUTE_BODY) &&
        MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, NULL, NULL) > 0) {
        snprintf(req->deferred_msg, sizeof req->deferred_msg,
                 "this route takes no query parameters: send the fields in the JSON body");
        return EXTRANET__STATUS__INVALID;
    }
    s_query_t q = {.req = req, .msg = msg};
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, s_set_query, &q);
    if (q.rc < 0) {
        snprintf(req->deferred_msg, sizeof req->deferred_msg, "%s", q.text);
        return EXTRANET__STATUS__INVALID;
    }
    /* Path parameters last, so neither the body nor the query can override them. An id that
     * is not a uuid cannot exist: answered exactly like a missing one (R1). */
    for (int i = 0; i < req->match.nparams; i++) {
        const char *name = req->match.names[i], *value = req->match.values[i];
        if (routes_param_is_uuid(name)) {
            if (!util_uuid_valid(value)) {
                snprintf(req->deferred_msg, sizeof req->deferred_msg, "not found");
                return EXTRANET__STATUS__NOT_FOUND;
            }
            /* One spelling per id: services compare ids as strings (e.g. "not yourself"). */
            for (char *c = req->match.values[i]; *c; c++)
                if (*c >= 'A' && *c <= 'F')
                    *c = (char)(*c - 'A' + 'a');
        }
        rc = codec_set_field(msg, name, value, alloc, &err);
        if (rc < 0) {
            snprintf(req->deferred_msg, sizeof req->deferred_msg, "%.64s: %.120s", name, err.text);
            return EXTRANET__STATUS__INVALID;
        }
    }
    if (r->flags & GW_ROUTE_EXPORT)
        export_prepare(msg); /* the page size of a streamed export */
    /* The rate-limit account is read from the message the service will see, never from an
     * earlier stage of its building. */
    if (r->rate_field && ret_account) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(r->request, r->rate_field);
        const char *acct =
            f ? *(const char *const *)(const void *)((const char *)msg + f->offset) : NULL;
        snprintf(ret_account, account_len, "%s", acct ? acct : "");
    }
    size_t len = protobuf_c_message_get_packed_size(msg);
    req->payload = malloc(len ? len : 1);
    if (!req->payload)
        return EXTRANET__STATUS__INTERNAL;
    req->payload_len = protobuf_c_message_pack(msg, req->payload);
    return EXTRANET__STATUS__OK;
}

/* Suspends the connection and hands req to the loop. Suspending first guarantees the loop's
 * resume can never come before the suspend. */
static enum MHD_Result s_submit(gw_http_t *self, gw_req_t *req) {
    req->deadline_ms = util_now_ms() + self->cfg.deadline_ms;
    req->deadline_mono = util_mono_ms() + self->cfg.deadline_ms;
    req->state = GW_REQ_SUSPENDED;
    MHD_suspend_connection(req->conn);
    if (loop_submit(self->loop, req) < 0) {
        req_set_result(req, EXTRANET__STATUS__UNAVAILABLE, "shutting down");
        http_req_resume(req);
    }
    return MHD_YES;
}

static enum MHD_Result s_builtin(gw_http_t *self, gw_req_t *req, const char *method) {
    switch (req->match.route->builtin) {
    case GW_BUILTIN_HEALTHZ:
        return s_json(req, method, 200, json_pack("{s:s}", "status", "ok"));
    case GW_BUILTIN_METRICS: {
        size_t len = 0;
        char *text = metrics_render(&len);
        if (!text)
            return s_status_error(req, method, EXTRANET__STATUS__INTERNAL, "out of memory", 0);
        s_extra_t x = {.content_type = "text/plain; version=0.0.4; charset=utf-8"};
        return s_queue(req, method, 200, text, len, &x);
    }
    case GW_BUILTIN_READYZ:
        req->phase = GW_PHASE_READY;
        return s_submit(self, req);
    default:
        return s_status_error(req, method, EXTRANET__STATUS__NOT_FOUND, "not found", 0);
    }
}

/* The whole request is in: validate, authenticate, rate-limit, then off to the loop. */
static enum MHD_Result s_on_complete(gw_http_t *self, gw_req_t *req, const char *method) {
    if (req->early_http || req->early_preflight)
        return s_early(req, method);
    const gw_route_t *r = req->match.route;
    if (req->body_too_large)
        return s_status_error(req, method, EXTRANET__STATUS__TOO_LARGE, "request body too large",
                              0);
    if (r->builtin)
        return s_builtin(self, req, method);

    auth_actor_anonymous(req);
    if ((r->flags & GW_ROUTE_AUTH) &&
        auth_parse_header(
            req, MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization")) !=
            EXTRANET__STATUS__OK)
        return s_status_error(req, method, EXTRANET__STATUS__UNAUTHENTICATED,
                              "missing, invalid or expired session", 0);

    /* Idempotency-Key: passed on in the envelope for the services that honour it. */
    const char *ik = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (ik) {
        size_t n = strlen(ik);
        bool ok = n > 0 && n < sizeof req->idempotency_key;
        for (size_t i = 0; ok && i < n; i++)
            ok = ik[i] > 0x20 && ik[i] < 0x7f;
        if (!ok)
            return s_status_error(req, method, EXTRANET__STATUS__INVALID,
                                  "Idempotency-Key: 1 to 128 visible ASCII characters", 0);
        memcpy(req->idempotency_key, ik, n + 1);
    }

    char account[320] = "";
    req->deferred_status = s_build_payload(self, req, account, sizeof account);
    if (req->deferred_status == EXTRANET__STATUS__INTERNAL)
        return s_status_error(req, method, EXTRANET__STATUS__INTERNAL, "internal error", 0);

    if (r->flags & GW_ROUTE_AUTH) {
        if (auth_cache_lookup(req)) {
            if (req->status != EXTRANET__STATUS__OK)
                return s_status_error(req, method, req->status, req->message, 0);
            req->phase = GW_PHASE_CALL;
        } else {
            req->phase = GW_PHASE_AUTH;
        }
    } else {
        req->phase = GW_PHASE_CALL;
    }
    if (req->phase == GW_PHASE_CALL && req->deferred_status != EXTRANET__STATUS__OK)
        return s_status_error(req, method, req->deferred_status, req->deferred_msg, 0);

    if (r->flags & GW_ROUTE_RATE) {
        int retry = 0;
        const char *scope = strrchr(r->pattern, '/') + 1; /* "login", "mfa" */
        if (!ratelimit_allow(scope, account, req->client_ip, &retry, &req->rate_local))
            return s_status_error(req, method, EXTRANET__STATUS__RATE_LIMITED,
                                  "too many attempts, try again later", retry);
        req->rate_scope = scope;
        snprintf(req->rate_account, sizeof req->rate_account, "%s", account);
    }
    return s_submit(self, req);
}

/* An authenticated, confirmed GET /api/v1/stream: hand the connection to an event stream. */
static enum MHD_Result s_stream(gw_req_t *req, const char *method) {
    bool full = false;
    struct MHD_Response *resp = sse_open(req, &full);
    if (!resp)
        return s_status_error(req, method,
                              full ? EXTRANET__STATUS__UNAVAILABLE : EXTRANET__STATUS__INTERNAL,
                              full ? "too many open streams" : "out of memory", 0);
    bool ok = s_add_common_headers(req, resp, "text/event-stream; charset=utf-8") &&
              MHD_add_response_header(resp, "X-Accel-Buffering", "no") == MHD_YES;
    enum MHD_Result rc = ok ? MHD_queue_response(req->conn, MHD_HTTP_OK, resp) : MHD_NO;
    MHD_destroy_response(resp); /* the stream lives on in the queued response */
    req->state = GW_REQ_ANSWERED;
    metrics_observe(req->match.index, method, rc == MHD_YES ? 200 : 500,
                    (double)(s_mono_us() - req->start_us) / 1e6);
    return rc;
}

/* The route call of an export answered OK with its first page: stream every page. */
static enum MHD_Result s_export(gw_req_t *req, const char *method) {
    bool full = false;
    const char *content_type = NULL;
    char filename[64], disposition[96];
    struct MHD_Response *resp = export_open(req, &full, &content_type, filename);
    if (!resp)
        return s_status_error(
            req, method, full ? EXTRANET__STATUS__UNAVAILABLE : EXTRANET__STATUS__INTERNAL,
            full ? "too many exports running, try again later" : "internal error", 0);
    snprintf(disposition, sizeof disposition, "attachment; filename=\"%s\"", filename);
    bool ok = s_add_common_headers(req, resp, content_type) &&
              MHD_add_response_header(resp, "Content-Disposition", disposition) == MHD_YES &&
              MHD_add_response_header(resp, "X-Accel-Buffering", "no") == MHD_YES;
    enum MHD_Result rc = ok ? MHD_queue_response(req->conn, MHD_HTTP_OK, resp) : MHD_NO;
    MHD_destroy_response(resp); /* the export lives on in the queued response */
    req->state = GW_REQ_ANSWERED;
    metrics_observe(req->match.index, method, rc == MHD_YES ? 200 : 500,
                    (double)(s_mono_us() - req->start_us) / 1e6);
    return rc;
}

/* After resume: turn the loop's result into the HTTP response. */
static enum MHD_Result s_on_result(gw_http_t *self, gw_req_t *req, const char *method) {
    const gw_route_t *r = req->match.route;
    if (req->phase == GW_PHASE_READY) {
        if (req->status != EXTRANET__STATUS__OK || !req->ready_json)
            return s_status_error(req, method,
                                  req->status ? req->status : EXTRANET__STATUS__INTERNAL,
                                  req->message[0] ? req->message : "internal error", 0);
        char *body = req->ready_json;
        req->ready_json = NULL;
        return s_queue(req, method, req->ready_ok ? 200 : 503, body, strlen(body), NULL);
    }
    if (req->status != EXTRANET__STATUS__OK)
        return s_status_error(req, method, req->status,
                              req->message[0] ? req->message : errors_code(req->status),
                              req->retry_after_s);
    if (req->rate_scope)
        ratelimit_refund(req->rate_scope, req->rate_account, req->client_ip, req->rate_local);
    if (r->flags & GW_ROUTE_STREAM)
        return s_stream(req, method);
    if (r->flags & GW_ROUTE_EXPORT)
        return s_export(req, method);
    if (!r->reply)
        return s_queue(req, method, r->success, NULL, 0, NULL);
    if (!req->arena && !(req->arena = arena_new((size_t)64 << 20)))
        return s_status_error(req, method, EXTRANET__STATUS__INTERNAL, "out of memory", 0);
    ProtobufCMessage *msg =
        req->reply ? protobuf_c_message_unpack(r->reply, arena_allocator(req->arena),
                                               req->reply->payload.len, req->reply->payload.data)
                   : NULL;
    if (!msg) {
        char service[64];
        snprintf(service, sizeof service, "%.*s", (int)strcspn(r->rpc, "."), r->rpc);
        metrics_upstream_error(service, "bad_reply");
        return s_status_error(req, method, EXTRANET__STATUS__INTERNAL, "malformed reply", 0);
    }
    return s_json(req, method, r->success, codec_to_json(msg));
}

static enum MHD_Result s_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
    gw_http_t *self = cls;
    gw_req_t *req = *con_cls;
    if (!req) {
        req = calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        req->conn = conn;
        req->start_us = s_mono_us();
        req->match.index = -1;
        util_uuid_v4(req->request_id);
        *con_cls = req;
        __atomic_add_fetch(&self->in_flight, 1, __ATOMIC_RELAXED);
        metrics_in_flight_add(1);
        return s_on_headers(self, req, url, method, version);
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return s_on_body(self, req, upload_data, n);
    }
    switch (req->state) {
    case GW_REQ_NEW:
        return s_on_complete(self, req, method);
    case GW_REQ_RESULT:
        return s_on_result(self, req, method);
    default:
        return MHD_YES; /* suspended or answered: nothing to do */
    }
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe) {
    gw_http_t *self = cls;
    gw_req_t *req = *con_cls;
    if (!req)
        return;
    free(req->body);
    free(req->payload);
    free(req->ready_json);
    if (req->reply)
        extranet__reply__free_unpacked(req->reply, NULL);
    arena_destroy(&req->arena);
    free(req);
    *con_cls = NULL;
    metrics_in_flight_add(-1);
    __atomic_sub_fetch(&self->in_flight, 1, __ATOMIC_RELAXED);
}

static void s_mhd_log(void *cls, const char *fmt, va_list ap) {
    char buf[256];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    log_warn("libmicrohttpd: %s", buf);
}

/* "host:port", "[v6]:port" or ":port" -> sockaddr. */
static int s_parse_addr(const char *addr, struct sockaddr_storage *ss) {
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon)
        return -EINVAL;
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
        return -EINVAL;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (!*h || strcmp(h, "*") == 0 || strcmp(h, "0.0.0.0") == 0) {
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
        s4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, h, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
    } else {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
        if (getaddrinfo(h, NULL, &hints, &res) != 0)
            return -EINVAL;
        memcpy(s4, res->ai_addr, sizeof *s4);
        s4->sin_port = htons((uint16_t)port);
        freeaddrinfo(res);
    }
    return 0;
}

gw_http_t *http_new(const http_cfg_t *cfg, gw_loop_t *loop) {
    struct sockaddr_storage ss;
    if (s_parse_addr(cfg->addr, &ss) < 0) {
        log_error("EXTRANET_HTTP_ADDR: cannot parse '%s'", cfg->addr);
        return NULL;
    }
    gw_http_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = *cfg;
    self->loop = loop;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    self->daemon = MHD_start_daemon(
        /* The logger first: options before it would log through MHD's own stderr logger. */
        flags, 0, NULL, NULL, s_handler, self, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, cfg->threads,
        MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        cfg->timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->memory_limit,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
        MHD_OPTION_END);
    if (!self->daemon) {
        log_error("cannot listen on %s", cfg->addr);
        free(self);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = di ? di->port : 0;
    return self;
}

uint16_t http_port(gw_http_t *self) {
    return self->port;
}

void http_quiesce(gw_http_t *self) {
    MHD_socket fd = MHD_quiesce_daemon(self->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void http_drain(gw_http_t *self, int wait_ms) {
    for (int waited = 0; waited < wait_ms; waited += 10) {
        if (__atomic_load_n(&self->in_flight, __ATOMIC_RELAXED) <= 0)
            return;
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
}

void http_destroy(gw_http_t **self_p) {
    gw_http_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    if (self->daemon)
        MHD_stop_daemon(self->daemon);
    free(self);
    *self_p = NULL;
}
