/* Majordomo 7/MDP framing (rfc.zeromq.org/spec/7) and the client side of it.
 * A client talks to one or more brokers through one DEALER each; it is owned by one thread.
 * Frames a DEALER client sends:  "" | "MDPC01" | service | body
 * Frames it receives:            "" | "MDPC01" | service | body
 * The body is one packed extranet.Request / extranet.Reply (docs/protocol.md). */
#ifndef EXTRANET_MDP_H
#define EXTRANET_MDP_H
#include "extranet/common.h"
#include <stddef.h>
#include <zmq.h>

#define MDPC_CLIENT "MDPC01"
#define MDPW_WORKER "MDPW01"
enum { MDPW_READY = 1, MDPW_REQUEST = 2, MDPW_REPLY = 3, MDPW_HEARTBEAT = 4, MDPW_DISCONNECT = 5 };

/* Heartbeat interval and liveness (missed beats before a peer counts as dead). Heartbeats flow
 * from the I/O thread even while a handler is busy, so the window (5 s) only has to cover a
 * stalled process, not the largest request deadline; why that is safe: docs/protocol.md §8. */
#define MDP_HEARTBEAT_MS 1000
#define MDP_LIVENESS 5
/* Largest frame any of our sockets accepts (ZMQ_MAXMSGSIZE); bigger peers are dropped. */
#define MDP_MAX_FRAME (4 * 1024 * 1024)

typedef struct mdp_client mdp_client_t;

/* zmq_ctx_term(zctx), retried on EINTR; any other error is logged. Every socket of zctx must
 * be closed first (else it blocks, as libzmq documents). */
void mdp_ctx_term(void *zctx);

/* Connects one DEALER per endpoint of the comma-separated broker list. zctx is borrowed and
 * must outlive the client. NULL on failure (logged). */
mdp_client_t *mdp_client_new(void *zctx, const char *brokers);
void mdp_client_destroy(mdp_client_t **self_p);

/* Sends one request to one live broker (round-robin; a broker that missed a deadline is tried
 * last). Never blocks. Returns 0, or -errno. */
int mdp_client_send(mdp_client_t *self, const char *service, const void *body, size_t len) WUR;

/* Receives one reply from any broker, waiting up to timeout_ms (-1: forever, 0: poll).
 * On success *ret_body is a new malloc'd buffer the caller frees. Returns 0, -EAGAIN on timeout,
 * -EPROTO for a malformed message (dropped, logged), or -errno. */
int mdp_client_recv(mdp_client_t *self, void **ret_body, size_t *ret_len, int timeout_ms) WUR;

/* Index (0..n-1) of the broker that took the last successful send, -1 before any. A caller
 * with many requests in flight keeps it per request, to blame the right broker later. */
int mdp_client_last_broker(const mdp_client_t *self);

/* Marks broker i as suspect (a deadline passed on a request it took): tried last for a while
 * unless it answers meanwhile. Out-of-range i is ignored. */
void mdp_client_suspect(mdp_client_t *self, int i);

/* mdp_client_suspect(self, mdp_client_last_broker(self)): for one request in flight. */
void mdp_client_suspect_last(mdp_client_t *self);

/* For an outer zmq_poll: fills at most max items with the client's sockets (ZMQ_POLLIN) and
 * returns how many. */
int mdp_client_pollitems(mdp_client_t *self, zmq_pollitem_t *items, int max);
#endif
