/* One HTTP request in flight: what the libmicrohttpd handler (http.c) fills, what the loop
 * thread (loop.c) reads while the connection is suspended, and the result the loop hands back.
 * Ownership moves with the connection state: the MHD thread owns it except between
 * loop_submit() and the loop's http_req_resume(), when only the loop thread touches it. */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H
#include "envelope.pb-c.h"
#include "extranet/arena.h"
#include "routes.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;

typedef enum {
    GW_REQ_NEW = 0,   /* headers seen, body (if any) arriving */
    GW_REQ_SUSPENDED, /* handed to the loop */
    GW_REQ_RESULT,    /* result ready: queue the response at the next handler call */
    GW_REQ_ANSWERED,  /* response queued */
} gw_req_state_t;

typedef enum {
    GW_PHASE_CALL = 0, /* the route's own call */
    GW_PHASE_AUTH,     /* identity.Authenticate first (session cache miss), then CALL */
    GW_PHASE_READY,    /* a /readyz probe */
} gw_phase_t;

typedef struct gw_req {
    struct MHD_Connection *conn;
    char request_id[37];
    gw_req_state_t state;
    gw_match_t match; /* route (NULL route when unmatched) and path params */
    int64_t start_us; /* monotonic, for the latency histogram */
    char client_ip[64];
    const char *origin; /* allowed CORS origin (borrowed from MHD), or NULL */
    /* an answer decided from the headers alone, sent once the (empty) request is complete so
     * the connection stays open; 0 = none */
    int early_http;
    const char *early_code, *early_msg; /* static strings */
    bool early_preflight;
    char allow[96]; /* Allow header of 405 / OPTIONS */

    /* body, malloc'd, owned */
    char *body;
    size_t body_len, body_cap;
    bool body_too_large;
    size_t body_discarded;

    /* what goes to the service (owned by the request) */
    arena_t *arena;
    Extranet__Actor actor; /* strings point at the buffers below */
    char actor_user_id[40], actor_session_id[40];
    char token_sha256[65];
    char idempotency_key[129];        /* Idempotency-Key header, "" when absent */
    uint8_t *payload; /* packed request message (malloc'd) */
    size_t payload_len;
    gw_phase_t phase;
    int64_t deadline_ms;   /* absolute epoch ms (envelope) */
    int64_t deadline_mono; /* the same deadline on the monotonic clock */
    /* an error found while the session was still unknown: answered only once authenticated,
     * so an anonymous client learns nothing about validation (status OK = none) */
    Extranet__Status deferred_status;
    char deferred_msg[320];

    /* login rate limit: what to refund when the attempt succeeds */
    const char *rate_scope; /* static; NULL = not counted */
    char rate_account[320];
    bool rate_local;

    /* the result (written by the loop or the handler, read by the handler after resume) */
    Extranet__Status status;
    char message[320];
    int retry_after_s;
    Extranet__Reply *reply; /* unpacked with the malloc allocator, or NULL */
    char *ready_json;       /* /readyz body (malloc'd), or NULL */
    bool ready_ok;

    /* loop bookkeeping (loop thread only) */
    struct gw_req *q_next;          /* submit queue */
    struct gw_req *h_next;          /* pending hash chain */
    struct gw_req *d_prev, *d_next; /* deadline list */
    int broker;                     /* index of the broker that took the last send */

    /* A request of no connection of its own (the next page of an export, export.c): the loop
     * completes it by calling on_done(req) (its thread) instead of http_req_resume(). */
    void (*on_done)(struct gw_req *req);
    void *on_done_arg;
} gw_req_t;

/* Called by the loop thread exactly once per submitted request, after writing the result:
 * marks it GW_REQ_RESULT and resumes the connection. The loop must not touch req afterwards.
 * Implemented in http.c. */
void http_req_resume(gw_req_t *req);

/* Sets the result fields (status + message) of req. */
void req_set_result(gw_req_t *req, Extranet__Status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#endif
