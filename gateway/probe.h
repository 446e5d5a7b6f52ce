/* The /readyz probe (8/MMI): "is each required service served by a worker?" asked over a
 * DEALER of its own per broker, one mmi.service request at a time, so MMI replies (which carry
 * no request id) can never be confused with each other or with the Majordomo client's
 * traffic. Requests arriving during a probe wait for its result. Loop thread only. */
#ifndef GW_PROBE_H
#define GW_PROBE_H
#include "extranet/common.h"
#include "request.h"
#include <stdint.h>
#include <zmq.h>

typedef struct gw_probe gw_probe_t;

/* zctx borrowed; brokers / services are comma lists (copied). NULL on failure (logged). */
gw_probe_t *probe_new(void *zctx, const char *brokers, const char *services);
/* Answers every waiting request with 503 first. NULL-safe. */
void probe_destroy(gw_probe_t **self_p);

/* Adds a waiting /readyz request (starts a probe when none runs). The probe answers it with
 * req->ready_ok / req->ready_json and http_req_resume(). */
void probe_add(gw_probe_t *self, gw_req_t *req);
/* Fills at most max poll items (the socket waiting for an answer); returns the count. */
int probe_pollitems(gw_probe_t *self, zmq_pollitem_t *items, int max);
/* Reads what arrived and advances; call after zmq_poll. */
void probe_on_input(gw_probe_t *self);
/* Handles a step timeout at now (monotonic ms); returns ms until the next one, or -1. */
int64_t probe_tick(gw_probe_t *self, int64_t now);
/* Number of waiting requests. */
int probe_waiting(gw_probe_t *self);
#endif
