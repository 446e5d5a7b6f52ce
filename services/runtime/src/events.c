/* Event publishing and subscription over the brokers' XSUB -> XPUB forwarders: frame 1 is the
 * topic (what SUB filters on), frame 2 a packed extranet.Event. With two brokers every event can
 * arrive twice, so subscribers remember the last EV_SEEN event ids and skip repeats. */
#include "extranet/events.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include "mdp_int.h"
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Recent event ids remembered per subscriber. Two brokers deliver a copy within milliseconds
 * of each other, so a few hundred covers any realistic burst between the two copies. */
#define EV_SEEN   512
#define TOPIC_MAX 255
/* A publisher lingers this long at close so the last events before shutdown still leave. */
#define PUB_LINGER_MS 200

struct ev_pub {
    void *sock;
};

struct ev_sub {
    int n;
    void *socks[MDP_MAX_BROKERS];
    int next;               /* fair scan start */
    char seen[EV_SEEN][37]; /* ring of recent event ids */
    uint64_t seen_hash[EV_SEEN];
    int seen_next;
};

static int s_connect_all(void *sock, const char *endpoints) {
    char *items[MDP_MAX_BROKERS];
    int n = util_split_list(endpoints, items, MDP_MAX_BROKERS);
    if (n <= 0) {
        log_error("no usable event endpoint in \"%s\"", endpoints ? endpoints : "");
        return n < 0 ? n : -EINVAL;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && zmq_connect(sock, items[i]) != 0) {
            rc = -zmq_errno();
            log_error("events %s: %s", items[i], zmq_strerror(-rc));
        }
        free(items[i]);
    }
    return rc;
}

ev_pub_t *ev_pub_new(void *zctx, const char *endpoints) {
    ev_pub_t *self = calloc(1, sizeof *self);
    if (!self) {
        log_error("out of memory");
        return NULL;
    }
    self->sock = mdp_sock_new(zctx, ZMQ_PUB, PUB_LINGER_MS);
    if (!self->sock || s_connect_all(self->sock, endpoints) != 0) {
        ev_pub_destroy(&self);
        return NULL;
    }
    return self;
}

void ev_pub_destroy(ev_pub_t **self_p) {
    if (!self_p || !*self_p)
        return;
    mdp_sock_close(&(*self_p)->sock);
    free(*self_p);
    *self_p = NULL;
}

int ev_publish(ev_pub_t *self, const char *topic, const ProtobufCMessage *payload) {
    size_t tlen = topic ? strlen(topic) : 0;
    if (tlen == 0 || tlen > TOPIC_MAX)
        return -EINVAL;
    char id[37];
    util_uuid_v4(id);
    Extranet__Event ev = EXTRANET__EVENT__INIT;
    ev.event_id = id;
    ev.topic = (char *)topic;
    ev.time_ms = util_now_ms();
    uint8_t *pbuf = NULL;
    if (payload) {
        size_t plen = protobuf_c_message_get_packed_size(payload);
        pbuf = malloc(plen ? plen : 1);
        if (!pbuf)
            return -ENOMEM;
        ev.payload.len = protobuf_c_message_pack(payload, pbuf);
        ev.payload.data = pbuf;
    }
    size_t len = extranet__event__get_packed_size(&ev);
    uint8_t *buf = len <= MDP_MAX_FRAME ? malloc(len ? len : 1) : NULL;
    if (!buf) {
        free(pbuf);
        return len <= MDP_MAX_FRAME ? -ENOMEM : -EMSGSIZE;
    }
    len = extranet__event__pack(&ev, buf);
    free(pbuf);
    const void *bufs[2] = {topic, buf};
    size_t lens[2] = {tlen, len};
    /* PUB never blocks: with no subscriber or at the high-water mark ZeroMQ drops it, which
     * is fine for hints. */
    int rc = mdp_send_parts(self->sock, bufs, lens, 2);
    free(buf);
    if (rc == -EAGAIN)
        rc = 0;
    return rc;
}

ev_sub_t *ev_sub_new(void *zctx, const char *endpoints, const char *const *topics) {
    ev_sub_t *self = calloc(1, sizeof *self);
    if (!self) {
        log_error("out of memory");
        return NULL;
    }
    char *items[MDP_MAX_BROKERS];
    int n = util_split_list(endpoints, items, MDP_MAX_BROKERS);
    if (n <= 0) {
        log_error("no usable event endpoint in \"%s\"", endpoints ? endpoints : "");
        free(self);
        return NULL;
    }
    bool ok = true;
    for (int i = 0; i < n; i++) {
        void *s = ok ? mdp_sock_new(zctx, ZMQ_SUB, 0) : NULL;
        if (s)
            self->socks[self->n++] = s;
        else
            ok = false;
        /* One subscription per prefix; none given means every topic (the empty prefix). */
        for (int t = 0; ok && (t == 0 || (topics && topics[t])); t++) {
            const char *p = topics ? topics[t] : "";
            if (!p)
                break;
            if (zmq_setsockopt(s, ZMQ_SUBSCRIBE, p, strlen(p)) != 0) {
                log_error("subscribe: %s", zmq_strerror(zmq_errno()));
                ok = false;
            }
        }
        if (ok && zmq_connect(s, items[i]) != 0) {
            log_error("events %s: %s", items[i], zmq_strerror(zmq_errno()));
            ok = false;
        }
        free(items[i]);
    }
    if (!ok)
        ev_sub_destroy(&self);
    return self;
}

void ev_sub_destroy(ev_sub_t **self_p) {
    if (!self_p || !*self_p)
        return;
    for (int i = 0; i < (*self_p)->n; i++)
        mdp_sock_close(&(*self_p)->socks[i]);
    free(*self_p);
    *self_p = NULL;
}

int ev_sub_pollitems(ev_sub_t *self, zmq_pollitem_t *items, int max) {
    int k = 0;
    for (int i = 0; i < self->n && k < max; i++, k++)
        items[k] = (zmq_pollitem_t){.socket = self->socks[i], .events = ZMQ_POLLIN};
    return k;
}

static uint64_t s_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* True when id was seen among the last EV_SEEN events; otherwise remembers it, overwriting
 * the oldest. A linear scan over EV_SEEN 64-bit hashes costs less than one event's decode. */
static bool s_seen(ev_sub_t *self, const char *id) {
    uint64_t h = s_hash(id);
    for (int i = 0; i < EV_SEEN; i++) {
        if (self->seen_hash[i] == h && strcmp(self->seen[i], id) == 0)
            return true;
    }
    int slot = self->seen_next;
    self->seen_next = (slot + 1) % EV_SEEN;
    snprintf(self->seen[slot], sizeof self->seen[slot], "%s", id);
    self->seen_hash[slot] = h;
    return false;
}

/* Reads one message from subscriber socket i; 0 with a new event, -EAGAIN when it was a
 * duplicate or malformed (dropped), or -errno. */
static int s_read_event(ev_sub_t *self, int i, Extranet__Event **ret_event) {
    zmq_msg_t f[MDP_MAX_FRAMES];
    int n = 0;
    int rc = mdp_frames_recv(self->socks[i], f, MDP_MAX_FRAMES, &n, true);
    if (rc == -EPROTO) {
        log_warn("event with too many frames dropped");
        return -EAGAIN;
    }
    if (rc < 0)
        return rc;
    Extranet__Event *ev = NULL;
    if (n == 2)
        ev = extranet__event__unpack(NULL, zmq_msg_size(&f[1]), zmq_msg_data(&f[1]));
    bool ok = ev && util_uuid_valid(ev->event_id) && mdp_frame_is(&f[0], ev->topic);
    mdp_frames_close(f, n);
    if (!ok) {
        log_warn("malformed event dropped");
        if (ev)
            extranet__event__free_unpacked(ev, NULL);
        return -EAGAIN;
    }
    if (s_seen(self, ev->event_id)) {
        extranet__event__free_unpacked(ev, NULL);
        return -EAGAIN;
    }
    *ret_event = ev;
    return 0;
}

int ev_sub_recv(ev_sub_t *self, Extranet__Event **ret_event, int timeout_ms) {
    zmq_pollitem_t items[MDP_MAX_BROKERS];
    int n = ev_sub_pollitems(self, items, MDP_MAX_BROKERS);
    int64_t deadline = timeout_ms < 0 ? -1 : util_mono_ms() + timeout_ms;
    for (;;) {
        long wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - util_mono_ms();
            wait = left > 0 ? (long)left : 0;
        }
        if (zmq_poll(items, n, wait) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return -zmq_errno();
        }
        for (int k = 0; k < n; k++) {
            int i = (self->next + k) % n;
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            int rc = s_read_event(self, i, ret_event);
            if (rc != -EAGAIN) {
                self->next = (i + 1) % n;
                return rc;
            }
        }
        if (deadline >= 0 && util_mono_ms() >= deadline)
            return -EAGAIN;
    }
}
