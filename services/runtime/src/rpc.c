/* Blocking envelope-level calls through the broker(s) for services and tools: pack an
 * extranet.Request, send it over mdp_client, wait until the deadline for the Reply carrying the
 * same request_id (late replies of earlier calls are dropped), and map its status. */
#include "extranet/rpc.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often a send is retried while no broker connection is up yet (ZMQ_IMMEDIATE). */
#define RESEND_MS   20
#define SERVICE_MAX 255

struct rpc {
    mdp_client_t *client;
};

rpc_t *rpc_new(void *zctx, const char *brokers) {
    rpc_t *self = calloc(1, sizeof *self);
    if (!self) {
        log_error("out of memory");
        return NULL;
    }
    self->client = mdp_client_new(zctx, brokers);
    if (!self->client) {
        free(self);
        return NULL;
    }
    return self;
}

void rpc_destroy(rpc_t **self_p) {
    if (!self_p || !*self_p)
        return;
    mdp_client_destroy(&(*self_p)->client);
    free(*self_p);
    *self_p = NULL;
}

static int s_fail(char *errbuf, size_t errlen, Extranet__Status st, const char *msg) {
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s", msg ? msg : "");
    return ERR_STATUS(st);
}

static void s_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Sends the packed request to some broker, retrying while none is connected yet. */
static int s_send(rpc_t *self, const char *service, const uint8_t *buf, size_t len,
                  int64_t deadline_ms) {
    for (;;) {
        int rc = mdp_client_send(self->client, service, buf, len);
        if (rc != -EAGAIN)
            return rc;
        int64_t left = deadline_ms - util_now_ms();
        if (left <= 0)
            return -EAGAIN;
        s_sleep_ms(left < RESEND_MS ? (long)left : RESEND_MS);
    }
}

/* Waits for the reply to request_id; *ret_reply is new (free_unpacked). */
static int s_wait(rpc_t *self, const char *request_id, int64_t deadline_ms,
                  Extranet__Reply **ret_reply) {
    for (;;) {
        int64_t left = deadline_ms - util_now_ms();
        if (left <= 0)
            return -EAGAIN;
        void *body = NULL;
        size_t len = 0;
        int rc = mdp_client_recv(self->client, &body, &len, left > 60000 ? 60000 : (int)left);
        if (rc == -EPROTO)
            continue;
        if (rc < 0)
            return rc;
        Extranet__Reply *reply = extranet__reply__unpack(NULL, len, body);
        free(body);
        if (!reply) {
            log_warn("undecodable reply dropped");
            continue;
        }
        if (strcmp(reply->request_id, request_id) != 0) {
            /* A late answer to an earlier call of this thread that gave up on it. */
            log_debug("stale reply %s dropped", reply->request_id);
            extranet__reply__free_unpacked(reply, NULL);
            continue;
        }
        *ret_reply = reply;
        return 0;
    }
}

int rpc_call(rpc_t *self, const char *method, const Extranet__Actor *actor, const char *request_id,
             int64_t deadline_ms, const ProtobufCMessage *request,
             const ProtobufCMessageDescriptor *reply_desc, ProtobufCMessage **ret_reply,
             char *errbuf, size_t errlen) {
    if (ret_reply)
        *ret_reply = NULL;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    const char *dot = method ? strchr(method, '.') : NULL;
    if (!dot || dot == method || dot - method > SERVICE_MAX || !dot[1])
        return s_fail(errbuf, errlen, EXTRANET__STATUS__INVALID, "bad method name");
    char service[SERVICE_MAX + 1];
    memcpy(service, method, (size_t)(dot - method));
    service[dot - method] = '\0';
    if (deadline_ms <= util_now_ms())
        return s_fail(errbuf, errlen, EXTRANET__STATUS__DEADLINE_EXCEEDED, "deadline passed");

    char rid[37];
    if (request_id && *request_id)
        snprintf(rid, sizeof rid, "%s", request_id);
    else
        util_uuid_v4(rid);

    /* The envelope borrows everything; only the two packed buffers are ours. */
    Extranet__Request env = EXTRANET__REQUEST__INIT;
    env.request_id = rid;
    env.method = (char *)method;
    env.actor = (Extranet__Actor *)actor;
    env.deadline_ms = deadline_ms;
    uint8_t *payload = NULL;
    if (request) {
        size_t plen = protobuf_c_message_get_packed_size(request);
        payload = malloc(plen ? plen : 1);
        if (!payload)
            return s_fail(errbuf, errlen, EXTRANET__STATUS__INTERNAL, "out of memory");
        env.payload.len = protobuf_c_message_pack(request, payload);
        env.payload.data = payload;
    }
    size_t len = extranet__request__get_packed_size(&env);
    uint8_t *buf = len <= MDP_MAX_FRAME ? malloc(len ? len : 1) : NULL;
    if (!buf) {
        free(payload);
        return s_fail(errbuf, errlen, EXTRANET__STATUS__TOO_LARGE, "request too large");
    }
    len = extranet__request__pack(&env, buf);
    free(payload);

    /* Late replies to earlier calls that gave up are waiting: discard them now, so a caller
     * that reuses its own request_id for several nested calls cannot match an old answer. */
    void *stale = NULL;
    size_t stale_len = 0;
    int drc;
    while ((drc = mdp_client_recv(self->client, &stale, &stale_len, 0)) == 0 || drc == -EPROTO) {
        free(stale);
        stale = NULL;
    }

    int rc = s_send(self, service, buf, len, deadline_ms);
    free(buf);
    if (rc == -EAGAIN)
        return s_fail(errbuf, errlen, EXTRANET__STATUS__UNAVAILABLE, "no broker reachable");
    if (rc < 0)
        return s_fail(errbuf, errlen, EXTRANET__STATUS__INTERNAL, "send failed");

    Extranet__Reply *reply = NULL;
    rc = s_wait(self, rid, deadline_ms, &reply);
    if (rc == -EAGAIN) {
        mdp_client_suspect_last(self->client);
        return s_fail(errbuf, errlen, EXTRANET__STATUS__UNAVAILABLE, "no reply by the deadline");
    }
    if (rc < 0)
        return s_fail(errbuf, errlen, EXTRANET__STATUS__INTERNAL, "receive failed");

    Extranet__Status st = reply->status;
    if (st > EXTRANET__STATUS__DEADLINE_EXCEEDED)
        st = EXTRANET__STATUS__INTERNAL; /* a status this build does not know */
    if (st != EXTRANET__STATUS__OK) {
        rc = s_fail(errbuf, errlen, st, reply->message);
    } else if (reply_desc && ret_reply) {
        *ret_reply =
            protobuf_c_message_unpack(reply_desc, NULL, reply->payload.len, reply->payload.data);
        if (!*ret_reply)
            rc = s_fail(errbuf, errlen, EXTRANET__STATUS__INTERNAL, "undecodable reply payload");
    }
    extranet__reply__free_unpacked(reply, NULL);
    return rc;
}
