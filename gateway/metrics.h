/* Prometheus metrics of the gateway (text format 0.0.4, GET /metrics):
 *   extranet_http_requests_total{route,method,status}       counter
 *   extranet_http_request_duration_seconds{route}           histogram
 *   extranet_http_in_flight                                 gauge (open streams included)
 *   extranet_streams_open                                   gauge
 *   extranet_upstream_errors_total{service,kind}            counter
 * Any thread; one mutex guards the tables (a few hundred ns per request). */
#ifndef GW_METRICS_H
#define GW_METRICS_H
#include "extranet/common.h"
#include <stddef.h>

/* Sizes the tables from the route table. Returns 0 or -ENOMEM. */
int metrics_init(void) WUR;
void metrics_fini(void);

void metrics_in_flight_add(int delta);
/* route_index: the row in routes_table(), or -1 for an unmatched path. */
void metrics_observe(int route_index, const char *method, int status, double seconds);
/* service: "identity", ...; kind: "deadline", "unavailable", "internal", "send", "bad_reply". */
void metrics_upstream_error(const char *service, const char *kind);

/* Renders every metric; returns a new malloc'd NUL-terminated text (caller frees) or NULL. */
char *metrics_render(size_t *ret_len);
#endif
