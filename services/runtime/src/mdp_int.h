/* Framing helpers shared by the runtime's Majordomo code (mdp_client.c, svc.c, events.c):
 * creating a socket with our standard options and reading one whole multipart message. */
#ifndef EXTRANET_MDP_INT_H
#define EXTRANET_MDP_INT_H
#include "extranet/common.h"
#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>

/* Most brokers one process talks to (EXTRANET_BROKER / EXTRANET_EVENTS* list items). */
#define MDP_MAX_BROKERS 8
/* Most frames we accept in one message; a longer message is drained and rejected. */
#define MDP_MAX_FRAMES 8

/* A new socket of `type` with ZMQ_LINGER linger_ms and ZMQ_MAXMSGSIZE MDP_MAX_FRAME.
 * NULL on failure (logged). The caller closes it with zmq_close. */
void *mdp_sock_new(void *zctx, int type, int linger_ms);
/* Closes *sock_p (NULL-safe) and sets it to NULL; a failure (a bug: not a socket) is logged. */
void mdp_sock_close(void **sock_p);

/* Receives one whole message (ZMQ_DONTWAIT when dontwait) into frames[0..max-1], each an
 * initialized zmq_msg_t the caller closes with mdp_frames_close (on success only). Returns 0
 * with *ret_n set; -EPROTO when it had more than max frames (all drained and closed);
 * -EAGAIN when nothing was waiting; or -errno. */
int mdp_frames_recv(void *sock, zmq_msg_t *frames, int max, int *ret_n, bool dontwait) WUR;
void mdp_frames_close(zmq_msg_t *frames, int n);

/* True when the frame holds exactly the bytes of the NUL-terminated string s. */
bool mdp_frame_is(zmq_msg_t *frame, const char *s);

/* Sends n buffers as one message (ZMQ_DONTWAIT). Returns 0 or -errno (-EAGAIN: no peer could
 * take it; nothing was sent). */
int mdp_send_parts(void *sock, const void *const *bufs, const size_t *lens, int n) WUR;
#endif
