/* Envelope-level calls through the broker: build extranet.Request, send, wait for the reply
 * with the same request_id (stale replies are dropped), decode. One rpc_t per thread.
 * Used by services calling each other and by tools; the gateway drives mdp_client itself. */
#ifndef EXTRANET_RPC_H
#define EXTRANET_RPC_H
#include "extranet/common.h"
#include "envelope.pb-c.h"
#include <stdint.h>

typedef struct rpc rpc_t;

rpc_t *rpc_new(void *zctx, const char *brokers);   /* NULL on failure */
void rpc_destroy(rpc_t **self_p);

/* Calls `method` ("identity.Deactivate": the service is the part before the dot) as actor
 * (borrowed) with request id request_id (NULL: a new uuid) and absolute deadline_ms (epoch
 * ms; a nested call passes on the caller's remaining deadline). On OK, when reply_desc is
 * given, *ret_reply is a new message the caller frees with protobuf_c_message_free_unpacked
 * (NULL allocator). Returns 0, or -(1000+status) with the reply's message copied into errbuf
 * (may be NULL); UNAVAILABLE when no reply came by the deadline. */
int rpc_call(rpc_t *self, const char *method, const Extranet__Actor *actor,
             const char *request_id, int64_t deadline_ms, const ProtobufCMessage *request,
             const ProtobufCMessageDescriptor *reply_desc, ProtobufCMessage **ret_reply,
             char *errbuf, size_t errlen) WUR;
#endif
