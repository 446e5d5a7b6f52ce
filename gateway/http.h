/* The HTTP side of the gateway: one libmicrohttpd daemon (epoll, internal thread pool,
 * suspend/resume). Its handler checks limits, matches the route, decodes JSON into the
 * request message, authenticates, then suspends the connection and hands the request to the
 * loop thread; when the loop resumes it, the handler renders the reply as JSON. */
#ifndef GW_HTTP_H
#define GW_HTTP_H
#include "extranet/common.h"
#include "loop.h"
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *addr;         /* EXTRANET_HTTP_ADDR "host:port" / "[v6]:port" */
    unsigned threads;         /* EXTRANET_HTTP_THREADS: MHD pool size (2) */
    unsigned max_connections; /* EXTRANET_HTTP_MAX_CONNECTIONS (10000) */
    unsigned timeout_s;       /* EXTRANET_HTTP_TIMEOUT_S: idle/slow client timeout (15) */
    size_t memory_limit;      /* EXTRANET_HTTP_MEMORY_LIMIT: per-connection pool (32768) */
    size_t max_header;        /* EXTRANET_MAX_HEADER: request line + headers (8192) -> 431 */
    size_t max_body;          /* EXTRANET_MAX_BODY (1048576) -> 413 */
    int64_t deadline_ms;      /* EXTRANET_DEADLINE_MS (10000) -> 504 */
} http_cfg_t;

typedef struct gw_http gw_http_t;

/* Starts serving; loop is borrowed and must outlive the daemon. NULL on failure (logged). */
gw_http_t *http_new(const http_cfg_t *cfg, gw_loop_t *loop);
/* The bound port (useful with port 0). */
uint16_t http_port(gw_http_t *self);
/* Stops accepting new connections (requests on open ones are still answered). */
void http_quiesce(gw_http_t *self);
/* Waits up to wait_ms for requests being answered to finish. */
void http_drain(gw_http_t *self, int wait_ms);
/* Stops the daemon (every connection closed) and frees. NULL-safe. The loop must have been
 * stopped (loop_stop) first, so no connection is still suspended. */
void http_destroy(gw_http_t **self_p);
#endif
