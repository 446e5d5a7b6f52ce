/* Events over the broker's XSUB -> XPUB forwarder. Frame 1 = topic, frame 2 = packed
 * extranet.Event. Publishers connect a PUB to every broker's XSUB endpoint
 * (EXTRANET_EVENTS_PUB); subscribers connect a SUB to every XPUB endpoint (EXTRANET_EVENTS)
 * and get duplicates removed by event_id. Events are hints, never the only copy of a fact.
 * Each object is owned by one thread. */
#ifndef EXTRANET_EVENTS_H
#define EXTRANET_EVENTS_H
#include "extranet/common.h"
#include "envelope.pb-c.h"
#include <zmq.h>

typedef struct ev_pub ev_pub_t;
typedef struct ev_sub ev_sub_t;

ev_pub_t *ev_pub_new(void *zctx, const char *endpoints);  /* NULL on failure */
void ev_pub_destroy(ev_pub_t **self_p);
/* Publishes `payload` (may be NULL) under topic with a new event id. Returns 0 or -errno. */
int ev_publish(ev_pub_t *self, const char *topic, const ProtobufCMessage *payload) WUR;

/* Subscribes to the given topic prefixes (NULL-terminated; NULL array = everything). */
ev_sub_t *ev_sub_new(void *zctx, const char *endpoints, const char *const *topics);
void ev_sub_destroy(ev_sub_t **self_p);
/* Receives the next new event (duplicates by event_id skipped), waiting up to timeout_ms.
 * *ret_event is new; free with extranet__event__free_unpacked(ev, NULL). Returns 0, -EAGAIN
 * on timeout, or -errno. Malformed events are dropped and logged. */
int ev_sub_recv(ev_sub_t *self, Extranet__Event **ret_event, int timeout_ms) WUR;
int ev_sub_pollitems(ev_sub_t *self, zmq_pollitem_t *items, int max);
#endif
