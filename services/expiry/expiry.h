/* What main.c wires into svc_main: the method table (handlers.c), the firing tick (fire.c) and
 * the firing configuration, read from the environment once in main.c before any thread starts
 * and read-only afterwards. */
#ifndef EXPIRY_H
#define EXPIRY_H
#include "extranet/svc.h"
#include <stdint.h>

typedef struct {
    int64_t call_ms;        /* deadline of one call to an owner (EXTRANET_EXPIRY_CALL_MS) */
    int64_t lease_ms;       /* claim lease, > call_ms (EXTRANET_EXPIRY_LEASE_MS) */
    int batch;              /* timers claimed at once (EXTRANET_EXPIRY_BATCH) */
    int64_t backoff_ms;     /* first retry delay (EXTRANET_EXPIRY_BACKOFF_MS) */
    int64_t backoff_max_ms; /* retry delay cap (EXTRANET_EXPIRY_BACKOFF_MAX_MS) */
    char kinds[512];        /* the known kinds as a PostgreSQL array literal */
} expiry_config_t;

/* Set by main.c before svc_main; read-only while threads run. */
extern expiry_config_t expiry_config;

/* expiry.Schedule, expiry.Cancel, expiry.List. */
extern const svc_method_t expiry_methods[];

/* The tick (svc_def_t.tick): claims due timers, calls their owners, records the outcome. */
void expiry_fire_tick(svc_thread_t *t);
#endif
