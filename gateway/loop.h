/* The one ZeroMQ loop thread of the gateway (DESIGN.md §11). It owns the Majordomo client
 * (one DEALER per broker) and the readiness probe; libmicrohttpd threads hand it suspended
 * requests through a mutex-protected queue + an eventfd wake-up. It matches replies by
 * request_id, enforces deadlines (504), and resumes every request exactly once: on the reply,
 * at the deadline, or at shutdown (503). No thread ever blocks waiting for a service. */
#ifndef GW_LOOP_H
#define GW_LOOP_H
#include "extranet/common.h"
#include "request.h"
#include <stdbool.h>

typedef struct gw_loop gw_loop_t;

/* zctx (borrowed) must outlive the loop; brokers is the comma list of MDP endpoints;
 * required is the comma list of services /readyz asks about. Strings are copied. Starts the
 * thread. NULL on failure (logged). */
gw_loop_t *loop_new(void *zctx, const char *brokers, const char *required);

/* Stops the thread: every queued or pending request is resumed with UNAVAILABLE (503) and
 * later submits fail with -ESHUTDOWN. Idempotent; any thread but the loop's. */
void loop_stop(gw_loop_t *self);

/* Stops (see loop_stop), then frees: every queued or pending request is resumed with UNAVAILABLE
 * (503), then the thread is joined and everything freed. NULL-safe; sets *self_p to NULL. */
void loop_destroy(gw_loop_t **self_p);

/* From any thread: hands req (already suspended, phase/payload/deadline set) to the loop. The
 * loop then owns it until it calls http_req_resume(req). Returns 0, or -ESHUTDOWN when the
 * loop is stopping (the caller still owns req and must answer it itself). */
int loop_submit(gw_loop_t *self, gw_req_t *req) WUR;

/* True when the loop stopped on an unrecoverable error (it then raised SIGTERM). */
bool loop_failed(gw_loop_t *self);
#endif
