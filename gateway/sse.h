/* GET /api/v1/stream: Server-Sent Events for the caller (R14). Each open stream is a
 * libmicrohttpd response driven by a content reader that suspends its connection when it has
 * nothing to send, so an open stream holds no thread. One thread of its own subscribes to the
 * broker's events (membership.changed, session.revoked), authorizes every event for each
 * stream's own user at send time, closes a stream at once when its session is revoked, and
 * re-checks every open stream's session at least every SSE_RECHECK_MS (the Redis sess:{h} entry
 * like auth.c, identity.Authenticate when that is missing; closing it when neither confirms
 * it), so a lost event still closes a removed, deactivated, expired or logged-out user's stream
 * within 15 s. */
#ifndef GW_SSE_H
#define GW_SSE_H
#include "extranet/common.h"
#include "request.h"
#include <microhttpd.h>

#define SSE_RECHECK_MS 10000       /* session re-check of every open stream */
#define SSE_PING_MS    15000       /* ": ping" comment so proxies keep the stream open */
#define SSE_MAX_BUFFER (64 * 1024) /* a reader this far behind is closed (slow consumer) */

/* Starts the event thread: events from the comma list `events` (the brokers' XPUB), session
 * re-checks through auth.c's Redis connection (auth_init() first) and `brokers`. zctx is borrowed
 * and must outlive sse_fini(). At most max_streams open at once. Returns 0 or -errno (logged). */
int sse_init(void *zctx, const char *brokers, const char *events, long max_streams) WUR;

/* Refuses new streams, ends every open one (each sends its end and completes), so no
 * connection stays suspended for MHD_stop_daemon. Any thread; call before stopping HTTP. */
void sse_close_all(void);

/* Stops and joins the event thread (after the HTTP daemon stopped). Safe if never started. */
void sse_fini(void);

/* A new stream response for the authenticated req (actor + token hash are copied), with the
 * first `ready` event queued. The caller adds headers, queues and destroys the response;
 * libmicrohttpd owns the stream from then on. NULL with *ret_full true when max_streams are
 * open (or shutting down), NULL with *ret_full false when out of memory. */
struct MHD_Response *sse_open(const gw_req_t *req, bool *ret_full);

/* Streams open now (for /metrics). */
long sse_count(void);
#endif
