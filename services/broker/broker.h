/* The Majordomo broker (ZeroMQ RFC 7/MDP + 8/MMI) and the event forwarder (XSUB -> XPUB),
 * one poll loop on one thread. It routes frames by service name and never parses bodies.
 * docs/protocol.md describes the wire; this header is the process-level API main.c uses. */
#ifndef EXTRANET_BROKER_H
#define EXTRANET_BROKER_H
#include "extranet/common.h"
#include <signal.h>

/* Hard limits on what a peer controls (STYLE.md: every size a client controls has a limit). */
#define BROKER_MAX_FRAMES   32    /* frames per message incl. the ROUTER identity */
#define BROKER_MAX_SERVICE  255   /* bytes in a service name */
#define BROKER_MAX_SERVICES 10000 /* distinct service names known at once */

typedef struct {
    const char *mdp_bind;        /* EXTRANET_BROKER_BIND: comma list, clients and workers */
    const char *events_bind;     /* EXTRANET_EVENTS_BIND: XPUB, subscribers connect here */
    const char *events_pub_bind; /* EXTRANET_EVENTS_PUB_BIND: XSUB, publishers connect here */
    long queue_ms;               /* how long a request waits for a worker (EXTRANET_QUEUE_MS) */
    long queue_max;              /* requests queued per service; the oldest goes first */
    long queue_bytes;            /* body bytes queued in all services (EXTRANET_QUEUE_BYTES) */
} broker_cfg_t;

typedef struct broker broker_t;

/* Creates the sockets on zctx (borrowed; must outlive the broker) and binds every endpoint
 * (strings copied). Each bound endpoint is logged at info as "bound <kind> <endpoint>" with the
 * real port, so tests can bind port 0 / "*". NULL on failure (logged). */
broker_t *broker_new(void *zctx, const broker_cfg_t *cfg);

/* Sends DISCONNECT to every known worker (RFC 7: the broker MAY send it at any time), frees
 * every queued request and closes the sockets. NULL-safe; sets *self_p to NULL. */
void broker_destroy(broker_t **self_p);

/* Runs the poll loop until *stop becomes non-zero (set from a signal handler). Returns 0, or
 * -errno when the loop cannot go on (logged). */
int broker_run(broker_t *self, const volatile sig_atomic_t *stop) WUR;
#endif
