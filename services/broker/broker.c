/* The Majordomo broker: one ROUTER speaking MDP/Client and MDP/Worker (RFC 7) with MMI (RFC 8),
 * per-service request queues bounded in time, count and (all together) bytes, LRU dispatch,
 * heartbeats both ways, and the XSUB -> XPUB event forwarder, all on one zmq_poll loop. */
#include "broker.h"

#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_MAX_ENDPOINTS      16
#define S_BATCH              512 /* messages per socket per loop turn, so ticks are never starved */
#define S_WARN_PER_TICK      20  /* bad-input warnings per tick before they are only counted */
#define S_EXPIRY_MS          ((int64_t)MDP_HEARTBEAT_MS * MDP_LIVENESS)
#define S_SHUTDOWN_LINGER_MS 500

/* ---------------------------------------------------------------------------------------- */
/* A tiny intrusive hash table keyed by bytes (worker identities, service names).            */

typedef struct s_hnode {
    struct s_hnode *next;
    uint32_t hash;
    const uint8_t *key; /* points into the owning object */
    size_t klen;
} s_hnode_t;

typedef struct {
    s_hnode_t **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
} s_table_t;

static uint32_t s_hash(const uint8_t *key, size_t len) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= key[i];
        h *= 16777619u;
    }
    return h;
}

static int s_table_init(s_table_t *t) {
    t->nbuckets = 64;
    t->count = 0;
    t->buckets = calloc(t->nbuckets, sizeof(s_hnode_t *));
    return t->buckets ? 0 : -ENOMEM;
}

static s_hnode_t *s_table_find(s_table_t *t, const uint8_t *key, size_t klen) {
    uint32_t h = s_hash(key, klen);
    for (s_hnode_t *n = t->buckets[h & (t->nbuckets - 1)]; n; n = n->next)
        if (n->hash == h && n->klen == klen && memcmp(n->key, key, klen) == 0)
            return n;
    return NULL;
}

/* Doubles the bucket array when the load passes 1; a failed grow only costs speed. */
static void s_table_grow(s_table_t *t) {
    size_t nb = t->nbuckets * 2;
    s_hnode_t **b = calloc(nb, sizeof(s_hnode_t *));
    if (!b)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        s_hnode_t *n = t->buckets[i];
        while (n) {
            s_hnode_t *next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
            n = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
}

static void s_table_insert(s_table_t *t, s_hnode_t *n, const uint8_t *key, size_t klen) {
    if (t->count >= t->nbuckets)
        s_table_grow(t);
    n->key = key;
    n->klen = klen;
    n->hash = s_hash(key, klen);
    size_t i = n->hash & (t->nbuckets - 1);
    n->next = t->buckets[i];
    t->buckets[i] = n;
    t->count++;
}

static void s_table_remove(s_table_t *t, s_hnode_t *n) {
    s_hnode_t **pp = &t->buckets[n->hash & (t->nbuckets - 1)];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        t->count--;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Objects. The broker owns services, workers and requests; a service owns its queued requests,
 * a worker owns the request dispatched to it (kept so DISCONNECT can requeue it). */

typedef struct request {
    struct request *next;
    int64_t arrived_ms; /* monotonic; bounds the total time spent queued */
    zmq_msg_t client;   /* ROUTER identity of the client */
    size_t bytes;       /* body bytes, counted in broker.queued_bytes while queued */
    int nbody;
    zmq_msg_t body[]; /* opaque body frames (RFC 7: frames 3+) */
} request_t;

typedef struct worker worker_t;

typedef struct service {
    s_hnode_t node; /* first member: the table hands back nodes */
    char name[BROKER_MAX_SERVICE + 1];
    size_t len;
    request_t *head, *tail; /* queued requests, oldest first */
    long queued;
    worker_t *wait_head, *wait_tail; /* waiting workers, least recently used first */
    int nworkers;                    /* registered workers, waiting or busy */
} service_t;

struct worker {
    s_hnode_t node;
    uint8_t id[256]; /* ROUTER identity (at most 255 bytes) */
    size_t idlen;
    char hex[17]; /* id prefix for logs */
    service_t *service;
    int64_t expiry_ms;       /* dead when nothing arrived by then */
    int64_t last_sent_ms;    /* a heartbeat is due HEARTBEAT_MS after the last command we sent */
    request_t *busy;         /* dispatched request, NULL while waiting */
    worker_t *wprev, *wnext; /* service's waiting list (only while waiting) */
    worker_t *aprev, *anext; /* every worker, for heartbeats and expiry */
    bool waiting;
};

struct broker {
    void *router, *xsub, *xpub;
    s_table_t services, workers;
    worker_t *all;
    long queue_ms, queue_max;
    size_t queue_bytes;  /* cap on queued_bytes */
    size_t queued_bytes; /* body bytes of every queued (not dispatched) request */
    int64_t tick_ms;
    int warn_budget;
    long warn_suppressed;
    /* counters, logged at shutdown */
    unsigned long n_requests, n_replies, n_dropped;
};

/* Rate-limited warning for peer-controlled events, so a noisy peer cannot flood the log. */
#define s_warn(self, ...)                                                                          \
    do {                                                                                           \
        if ((self)->warn_budget > 0) {                                                             \
            (self)->warn_budget--;                                                                 \
            log_warn(__VA_ARGS__);                                                                 \
        } else                                                                                     \
            (self)->warn_suppressed++;                                                             \
    } while (0)

static void s_hex_id(const void *id, size_t len, char out[17]) {
    util_hex(id, len > 8 ? 8 : len, out);
}

/* ---------------------------------------------------------------------------------------- */
/* Sending. The first frame (the peer identity) goes with ZMQ_DONTWAIT under ROUTER_MANDATORY:
 * an unknown or gone peer is EHOSTUNREACH and a peer at its high-water mark is EAGAIN, and both
 * are handled by the caller instead of blocking the loop. Once the identity frame is accepted
 * the rest of the multipart message is queued as a whole. */

static int s_send_id(broker_t *self, const void *id, size_t len) {
    if (zmq_send(self->router, id, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -errno;
    return 0;
}

static int s_send_frame(broker_t *self, const void *p, size_t len, bool more) {
    if (zmq_send(self->router, p, len, more ? ZMQ_SNDMORE : 0) < 0) {
        int err = errno;
        log_error("zmq_send: %s", zmq_strerror(err));
        return -err;
    }
    return 0;
}

/* Closes one frame; a failure (EFAULT: not a message, a bug) is logged. */
static void s_msg_frame_close(zmq_msg_t *f) {
    if (zmq_msg_close(f) < 0)
        log_error("zmq_msg_close: %s", zmq_strerror(errno));
}

/* Sends a copy of msg (the original stays with the caller; large frames are shared, not
 * copied, by zmq_msg_copy). */
static int s_send_copy(broker_t *self, zmq_msg_t *msg, bool more) {
    zmq_msg_t c;
    if (zmq_msg_init(&c) < 0) {
        int err = errno;
        log_error("zmq_msg_init: %s", zmq_strerror(err));
        return -err;
    }
    if (zmq_msg_copy(&c, msg) < 0 || zmq_msg_send(&c, self->router, more ? ZMQ_SNDMORE : 0) < 0) {
        int err = errno;
        s_msg_frame_close(&c);
        log_error("zmq_msg_send: %s", zmq_strerror(err));
        return -err;
    }
    return 0;
}

/* Sends a worker command without a body (HEARTBEAT, DISCONNECT). */
static int s_worker_command(broker_t *self, const void *id, size_t idlen, uint8_t cmd) {
    int rc = s_send_id(self, id, idlen);
    if (rc < 0)
        return rc;
    if ((rc = s_send_frame(self, "", 0, true)) < 0 ||
        (rc = s_send_frame(self, MDPW_WORKER, 6, true)) < 0 ||
        (rc = s_send_frame(self, &cmd, 1, false)) < 0)
        return rc;
    return 0;
}

/* Tells a peer to go away (RFC 7: the answer to a valid but unexpected command, and how we treat
 * a worker that sent an invalid message). An unreachable peer is already gone. */
static void s_peer_disconnect(broker_t *self, const void *id, size_t idlen) {
    int rc = s_worker_command(self, id, idlen, MDPW_DISCONNECT);
    if (rc < 0 && rc != -EHOSTUNREACH && rc != -EAGAIN)
        log_error("sending DISCONNECT: %s", zmq_strerror(-rc));
}

/* ---------------------------------------------------------------------------------------- */
/* Requests and services. */

static void s_request_free(request_t **r_p) {
    request_t *r = *r_p;
    if (!r)
        return;
    s_msg_frame_close(&r->client);
    for (int i = 0; i < r->nbody; i++)
        s_msg_frame_close(&r->body[i]);
    free(r);
    *r_p = NULL;
}

static request_t *s_queue_pop(broker_t *self, service_t *s) {
    request_t *r = s->head;
    if (r) {
        s->head = r->next;
        if (!s->head)
            s->tail = NULL;
        r->next = NULL;
        s->queued--;
        self->queued_bytes -= r->bytes;
    }
    return r;
}

static void s_queue_push_back(broker_t *self, service_t *s, request_t *r) {
    r->next = NULL;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued++;
    self->queued_bytes += r->bytes;
}

/* A request a worker never started goes back first in line: it is the oldest one waiting. */
static void s_queue_push_front(broker_t *self, service_t *s, request_t *r) {
    r->next = s->head;
    s->head = r;
    if (!s->tail)
        s->tail = r;
    s->queued++;
    self->queued_bytes += r->bytes;
}

static service_t *s_service_find(broker_t *self, const void *name, size_t len) {
    return (service_t *)s_table_find(&self->services, name, len);
}

/* Returns the service (created on first use), or NULL when the table is full or out of memory. */
static service_t *s_service_require(broker_t *self, const void *name, size_t len) {
    service_t *s = s_service_find(self, name, len);
    if (s)
        return s;
    if (self->services.count >= BROKER_MAX_SERVICES) {
        s_warn(self, "too many services (%d); request for a new one dropped", BROKER_MAX_SERVICES);
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        log_error("out of memory");
        return NULL;
    }
    memcpy(s->name, name, len);
    s->name[len] = '\0';
    s->len = len;
    s_table_insert(&self->services, &s->node, (const uint8_t *)s->name, len);
    return s;
}

static void s_service_destroy(broker_t *self, service_t **s_p) {
    service_t *s = *s_p;
    request_t *r;
    while ((r = s_queue_pop(self, s)))
        s_request_free(&r);
    s_table_remove(&self->services, &s->node);
    free(s);
    *s_p = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Workers. */

static void s_wait_unlink(worker_t *w) {
    if (!w->waiting)
        return;
    service_t *s = w->service;
    if (w->wprev)
        w->wprev->wnext = w->wnext;
    else
        s->wait_head = w->wnext;
    if (w->wnext)
        w->wnext->wprev = w->wprev;
    else
        s->wait_tail = w->wprev;
    w->wprev = w->wnext = NULL;
    w->waiting = false;
}

/* The worker that waited longest is dispatched first, so a ready worker goes to the tail. */
static void s_wait_append(worker_t *w) {
    service_t *s = w->service;
    w->wnext = NULL;
    w->wprev = s->wait_tail;
    if (s->wait_tail)
        s->wait_tail->wnext = w;
    else
        s->wait_head = w;
    s->wait_tail = w;
    w->waiting = true;
}

/* Forgets a worker. Its dispatched request is requeued at the front when requeue is set (the
 * worker never started it), otherwise dropped: the work may have happened and only the client,
 * through its deadline, may decide to retry (RFC 7 assumes idempotent workers; we do not). */
static void s_worker_delete(broker_t *self, worker_t **w_p, bool requeue) {
    worker_t *w = *w_p;
    s_wait_unlink(w);
    if (w->busy) {
        if (requeue) {
            s_queue_push_front(self, w->service, w->busy);
            w->busy = NULL;
        } else {
            self->n_dropped++;
            s_request_free(&w->busy);
        }
    }
    w->service->nworkers--;
    s_table_remove(&self->workers, &w->node);
    if (w->aprev)
        w->aprev->anext = w->anext;
    else
        self->all = w->anext;
    if (w->anext)
        w->anext->aprev = w->aprev;
    free(w);
    *w_p = NULL;
}

/* Tells a worker that broke the protocol to go, then forgets it without requeueing. */
static void s_worker_reject(broker_t *self, worker_t **w_p) {
    s_peer_disconnect(self, (*w_p)->id, (*w_p)->idlen);
    s_worker_delete(self, w_p, false);
}

/* Sends REQUEST: "" | MDPW01 | 0x02 | client | "" | body...  Returns 0, or -errno when the
 * worker cannot be reached (then nothing was sent and the request is still the caller's). */
static int s_worker_send_request(broker_t *self, worker_t *w, request_t *r, int64_t now) {
    int rc = s_send_id(self, w->id, w->idlen);
    if (rc < 0)
        return rc;
    uint8_t cmd = MDPW_REQUEST;
    /* Once the identity frame is accepted libzmq takes the rest of the message (it rolls a
     * message back itself if the pipe dies meanwhile), so later errors are only logged. */
    if (s_send_frame(self, "", 0, true) < 0 || s_send_frame(self, MDPW_WORKER, 6, true) < 0 ||
        s_send_frame(self, &cmd, 1, true) < 0 || s_send_copy(self, &r->client, true) < 0 ||
        s_send_frame(self, "", 0, true) < 0)
        return 0;
    for (int i = 0; i < r->nbody; i++)
        if (s_send_copy(self, &r->body[i], i + 1 < r->nbody) < 0)
            break;
    w->last_sent_ms = now;
    return 0;
}

/* Matches queued requests with waiting workers of one service, oldest request to the least
 * recently used worker, skipping requests that waited past queue_ms. */
static void s_service_dispatch(broker_t *self, service_t *s, int64_t now) {
    while (s->wait_head && s->head) {
        request_t *r = s_queue_pop(self, s);
        if (now - r->arrived_ms > self->queue_ms) {
            self->n_dropped++;
            s_request_free(&r);
            continue;
        }
        worker_t *w = s->wait_head;
        s_wait_unlink(w);
        int rc = s_worker_send_request(self, w, r, now);
        if (rc < 0) {
            /* Gone or not reading: it never saw the request, so the request stays first. */
            s_warn(self, "worker %s of '%s' unreachable (%s); forgotten", w->hex, s->name,
                   zmq_strerror(-rc));
            s_queue_push_front(self, s, r);
            s_worker_delete(self, &w, false);
            continue;
        }
        w->busy = r;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Receiving. */

typedef struct {
    zmq_msg_t f[BROKER_MAX_FRAMES];
    int n;
} s_msg_t;

static void s_msg_close(s_msg_t *m) {
    for (int i = 0; i < m->n; i++)
        s_msg_frame_close(&m->f[i]);
    m->n = 0;
}

/* Receives one whole multipart message without blocking. Returns 1 with m filled, 0 when none
 * is waiting, -E2BIG when it had more than BROKER_MAX_FRAMES frames (the whole message is
 * consumed and dropped), or -errno. */
static int s_msg_recv(void *sock, s_msg_t *m) {
    m->n = 0;
    int more = 1;
    bool too_big = false;
    while (more) {
        zmq_msg_t *f;
        zmq_msg_t sink;
        f = m->n < BROKER_MAX_FRAMES ? &m->f[m->n] : &sink;
        if (zmq_msg_init(f) < 0) {
            int err = errno;
            s_msg_close(m);
            return -err;
        }
        /* Only the first frame can be missing; the rest of a multipart arrive with it. */
        if (zmq_msg_recv(f, sock, m->n == 0 && !too_big ? ZMQ_DONTWAIT : 0) < 0) {
            int err = errno;
            s_msg_frame_close(f);
            s_msg_close(m);
            return err == EAGAIN ? 0 : -err;
        }
        more = zmq_msg_more(f);
        if (f == &sink) {
            too_big = true;
            s_msg_frame_close(f);
        } else
            m->n++;
    }
    if (too_big) {
        s_msg_close(m);
        return -E2BIG;
    }
    return 1;
}

static bool s_frame_is(zmq_msg_t *f, const char *s, size_t len) {
    return zmq_msg_size(f) == len && memcmp(zmq_msg_data(f), s, len) == 0;
}

/* RFC 7: the service name is a printable string. We take 1..255 visible ASCII bytes. */
static bool s_service_name_valid(zmq_msg_t *f) {
    size_t n = zmq_msg_size(f);
    const uint8_t *p = zmq_msg_data(f);
    if (n == 0 || n > BROKER_MAX_SERVICE)
        return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] <= 0x20 || p[i] >= 0x7f)
            return false;
    return true;
}

/* Moves frames [first, m->n) of m into a new request. NULL on failure (logged; m keeps what
 * was not moved, and s_msg_close closes it). */
static request_t *s_request_new(s_msg_t *m, int first, int64_t now) {
    int nbody = m->n - first;
    request_t *r = malloc(sizeof *r + (size_t)nbody * sizeof(zmq_msg_t));
    if (!r) {
        log_error("out of memory; request dropped");
        return NULL;
    }
    r->next = NULL;
    r->arrived_ms = now;
    r->nbody = 0;
    r->bytes = 0;
    /* zmq_msg_init cannot fail and zmq_msg_move fails only on a non-message (a bug); on
     * either, what was moved is closed with r and the rest stays in m. */
    if (zmq_msg_init(&r->client) < 0 || zmq_msg_move(&r->client, &m->f[0]) < 0) {
        log_error("zmq_msg_move: %s", zmq_strerror(errno));
        free(r);
        return NULL;
    }
    for (int i = 0; i < nbody; i++) {
        if (zmq_msg_init(&r->body[i]) < 0 || zmq_msg_move(&r->body[i], &m->f[first + i]) < 0) {
            log_error("zmq_msg_move: %s", zmq_strerror(errno));
            s_request_free(&r);
            return NULL;
        }
        r->nbody++;
        r->bytes += zmq_msg_size(&r->body[i]);
    }
    return r;
}

/* Answers an MMI request (RFC 8) straight away: "" | MDPC01 | service | code. */
static void s_mmi(broker_t *self, s_msg_t *m) {
    zmq_msg_t *svc = &m->f[3];
    const char *code = "501";
    if (s_frame_is(svc, "mmi.service", 11)) {
        zmq_msg_t *q = &m->f[4];
        service_t *s = s_service_find(self, zmq_msg_data(q), zmq_msg_size(q));
        code = s && s->nworkers > 0 ? "200" : "404";
    }
    int rc = s_send_id(self, zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]));
    if (rc < 0) {
        s_warn(self, "MMI reply unroutable: %s", zmq_strerror(-rc));
        return;
    }
    if (s_send_frame(self, "", 0, true) < 0 || s_send_frame(self, MDPC_CLIENT, 6, true) < 0 ||
        s_send_copy(self, svc, true) < 0)
        return;
    (void)s_send_frame(self, code, 3, false);
}

/* MDP/Client REQUEST: id | "" | MDPC01 | service | body (1+ frames). */
static void s_client_message(broker_t *self, s_msg_t *m, int64_t now) {
    char hex[17];
    s_hex_id(zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]), hex);
    if (m->n < 5 || !s_service_name_valid(&m->f[3])) {
        s_warn(self, "client %s: malformed request (%d frames); dropped", hex, m->n);
        return;
    }
    worker_t *w =
        (worker_t *)s_table_find(&self->workers, zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]));
    if (w) {
        /* One peer, one role: a worker's socket sending client requests is confused. */
        s_warn(self, "worker %s sent a client request; disconnected", hex);
        s_worker_reject(self, &w);
        return;
    }
    self->n_requests++;
    if (zmq_msg_size(&m->f[3]) >= 4 && memcmp(zmq_msg_data(&m->f[3]), "mmi.", 4) == 0) {
        s_mmi(self, m);
        return;
    }
    service_t *s = s_service_require(self, zmq_msg_data(&m->f[3]), zmq_msg_size(&m->f[3]));
    if (!s)
        return;
    /* s stays in the services table (its owner) on every early return; the tick frees it once
     * idle. */
    request_t *r = s_request_new(m, 4, now);
    if (!r)
        return;
    if (s->queued >= self->queue_max) {
        request_t *old = s_queue_pop(self, s);
        s_warn(self, "queue of '%s' full (%ld); oldest request dropped", s->name, self->queue_max);
        self->n_dropped++;
        s_request_free(&old);
    }
    /* The memory cap, for a request that will have to wait: this service's oldest requests
     * make room first; if that is not enough, the new request is refused. */
    if (!s->wait_head && self->queued_bytes + r->bytes > self->queue_bytes) {
        while (s->head && self->queued_bytes + r->bytes > self->queue_bytes) {
            request_t *old = s_queue_pop(self, s);
            s_warn(self, "queued bytes at the cap (%zu); oldest request of '%s' dropped",
                   self->queue_bytes, s->name);
            self->n_dropped++;
            s_request_free(&old);
        }
        if (self->queued_bytes + r->bytes > self->queue_bytes) {
            s_warn(self, "queued bytes at the cap (%zu); request of %zu bytes for '%s' refused",
                   self->queue_bytes, r->bytes, s->name);
            self->n_dropped++;
            s_request_free(&r);
            return;
        }
    }
    s_queue_push_back(self, s, r);
    s_service_dispatch(self, s, now);
}

static const char *s_command_name(uint8_t c) {
    static const char *const names[] = {"?",     "READY",     "REQUEST",
                                        "REPLY", "HEARTBEAT", "DISCONNECT"};
    return c >= 1 && c <= 5 ? names[c] : "unknown";
}

/* MDP/Worker READY: id | "" | MDPW01 | 0x01 | service (exactly). */
static void s_worker_ready(broker_t *self, s_msg_t *m, const char *hex, int64_t now) {
    zmq_msg_t *id = &m->f[0];
    if (m->n != 5 || !s_service_name_valid(&m->f[4])) {
        s_warn(self, "peer %s: malformed READY; disconnected", hex);
        s_peer_disconnect(self, zmq_msg_data(id), zmq_msg_size(id));
        return;
    }
    if (zmq_msg_size(&m->f[4]) >= 4 && memcmp(zmq_msg_data(&m->f[4]), "mmi.", 4) == 0) {
        /* RFC 8: the broker handles mmi.* itself and disconnects workers claiming it. */
        s_warn(self, "peer %s: READY for reserved service 'mmi.*'; disconnected", hex);
        s_peer_disconnect(self, zmq_msg_data(id), zmq_msg_size(id));
        return;
    }
    service_t *s = s_service_require(self, zmq_msg_data(&m->f[4]), zmq_msg_size(&m->f[4]));
    worker_t *w = s ? calloc(1, sizeof *w) : NULL;
    if (!w) {
        log_error("cannot register worker %s", hex);
        s_peer_disconnect(self, zmq_msg_data(id), zmq_msg_size(id));
        return;
    }
    w->idlen = zmq_msg_size(id);
    memcpy(w->id, zmq_msg_data(id), w->idlen);
    memcpy(w->hex, hex, sizeof w->hex);
    w->service = s;
    w->expiry_ms = now + S_EXPIRY_MS;
    w->last_sent_ms = now;
    s_table_insert(&self->workers, &w->node, w->id, w->idlen);
    w->anext = self->all;
    if (self->all)
        self->all->aprev = w;
    self->all = w;
    s->nworkers++;
    log_info("worker %s ready for '%s' (%d workers)", hex, s->name, s->nworkers);
    s_wait_append(w);
    s_service_dispatch(self, s, now);
}

/* MDP/Worker REPLY: id | "" | MDPW01 | 0x03 | client | "" | body (1+ frames). The reply goes to
 * the client as "" | MDPC01 | service | body. */
static void s_worker_reply(broker_t *self, worker_t **w_p, s_msg_t *m, int64_t now) {
    worker_t *w = *w_p;
    if (m->n < 7 || zmq_msg_size(&m->f[5]) != 0) {
        s_warn(self, "worker %s: malformed REPLY; disconnected", w->hex);
        s_worker_reject(self, w_p);
        return;
    }
    if (!w->busy || zmq_msg_size(&m->f[4]) != zmq_msg_size(&w->busy->client) ||
        memcmp(zmq_msg_data(&m->f[4]), zmq_msg_data(&w->busy->client), zmq_msg_size(&m->f[4])) !=
            0) {
        /* A worker may only answer the client whose request it holds. */
        s_warn(self, "worker %s: REPLY %s; disconnected", w->hex,
               w->busy ? "for another client" : "without a request");
        s_worker_reject(self, w_p);
        return;
    }
    self->n_replies++;
    service_t *s = w->service;
    int rc = s_send_id(self, zmq_msg_data(&m->f[4]), zmq_msg_size(&m->f[4]));
    if (rc < 0)
        s_warn(self, "reply from '%s' to a gone client dropped (%s)", s->name, zmq_strerror(-rc));
    else if (s_send_frame(self, "", 0, true) == 0 &&
             s_send_frame(self, MDPC_CLIENT, 6, true) == 0 &&
             s_send_frame(self, s->name, s->len, true) == 0) {
        for (int i = 6; i < m->n; i++)
            if (zmq_msg_send(&m->f[i], self->router, i + 1 < m->n ? ZMQ_SNDMORE : 0) < 0) {
                log_error("zmq_msg_send: %s", zmq_strerror(errno));
                break;
            }
    }
    s_request_free(&w->busy);
    s_wait_append(w);
    s_service_dispatch(self, s, now);
}

/* MDP/Worker: id | "" | MDPW01 | command | ... */
static void s_worker_message(broker_t *self, s_msg_t *m, int64_t now) {
    zmq_msg_t *id = &m->f[0];
    char hex[17];
    s_hex_id(zmq_msg_data(id), zmq_msg_size(id), hex);
    worker_t *w = (worker_t *)s_table_find(&self->workers, zmq_msg_data(id), zmq_msg_size(id));
    if (m->n < 4 || zmq_msg_size(&m->f[3]) != 1) {
        s_warn(self, "peer %s: worker message without a command; %s", hex,
               w ? "disconnected" : "dropped");
        if (w)
            s_worker_reject(self, &w);
        return;
    }
    uint8_t cmd = *(const uint8_t *)zmq_msg_data(&m->f[3]);
    if (!w) {
        if (cmd == MDPW_READY)
            s_worker_ready(self, m, hex, now);
        else if (cmd == MDPW_DISCONNECT)
            ; /* RFC 7: a worker MAY send DISCONNECT at any time, even before READY */
        else {
            /* A valid but unexpected command (RFC 7): answer DISCONNECT, keep no state. */
            s_warn(self, "peer %s: %s from an unknown worker; disconnected", hex,
                   s_command_name(cmd));
            s_peer_disconnect(self, zmq_msg_data(id), zmq_msg_size(id));
        }
        return;
    }
    /* RFC 7: any command but DISCONNECT counts as a heartbeat, also while the worker is busy. */
    w->expiry_ms = now + S_EXPIRY_MS;
    switch (cmd) {
    case MDPW_REPLY:
        s_worker_reply(self, &w, m, now);
        break;
    case MDPW_HEARTBEAT:
        if (m->n != 4) {
            s_warn(self, "worker %s: malformed HEARTBEAT; disconnected", hex);
            s_worker_reject(self, &w);
        }
        break;
    case MDPW_DISCONNECT:
        /* It sends nothing more and gets nothing more (RFC 7). A request already dispatched
         * to it crossed its DISCONNECT on the wire and was never started: requeue it. */
        log_info("worker %s of '%s' disconnected%s", hex, w->service->name,
                 w->busy ? "; its request requeued" : "");
        {
            service_t *s = w->service;
            s_worker_delete(self, &w, true);
            s_service_dispatch(self, s, now);
        }
        break;
    case MDPW_READY:
    case MDPW_REQUEST:
        s_warn(self, "worker %s: unexpected %s; disconnected", hex, s_command_name(cmd));
        s_worker_reject(self, &w);
        break;
    default:
        s_warn(self, "worker %s: unknown command 0x%02x; disconnected", hex, cmd);
        s_worker_reject(self, &w);
        break;
    }
}

/* One message from the ROUTER: sort it by protocol header. */
static void s_router_message(broker_t *self, s_msg_t *m, int64_t now) {
    char hex[17];
    s_hex_id(zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]), hex);
    if (m->n < 3 || zmq_msg_size(&m->f[1]) != 0) {
        s_warn(self, "peer %s: message without the empty first frame; dropped", hex);
        return;
    }
    if (s_frame_is(&m->f[2], MDPC_CLIENT, 6))
        s_client_message(self, m, now);
    else if (s_frame_is(&m->f[2], MDPW_WORKER, 6))
        s_worker_message(self, m, now);
    else {
        worker_t *w = (worker_t *)s_table_find(&self->workers, zmq_msg_data(&m->f[0]),
                                               zmq_msg_size(&m->f[0]));
        s_warn(self, "peer %s: unknown protocol header; %s", hex, w ? "disconnected" : "dropped");
        if (w)
            s_worker_reject(self, &w);
    }
}

static int s_router_drain(broker_t *self) {
    s_msg_t m;
    for (int i = 0; i < S_BATCH; i++) {
        int rc = s_msg_recv(self->router, &m);
        if (rc == 0)
            return 0;
        if (rc == -E2BIG) {
            s_warn(self, "message with more than %d frames dropped", BROKER_MAX_FRAMES);
            continue;
        }
        if (rc < 0) {
            log_error("zmq_msg_recv: %s", zmq_strerror(-rc));
            return rc;
        }
        s_router_message(self, &m, util_mono_ms());
        s_msg_close(&m);
    }
    return 0;
}

/* Forwards whole messages from one side of the event forwarder to the other, without blocking:
 * XPUB drops for slow subscribers by itself; a frame we cannot pass on drops its message. */
static int s_forward(broker_t *self, void *from, void *to) {
    for (int i = 0; i < S_BATCH; i++) {
        int more = 1;
        bool first = true, failed = false;
        while (more) {
            zmq_msg_t f;
            if (zmq_msg_init(&f) < 0) {
                int err = errno;
                log_error("zmq_msg_init: %s", zmq_strerror(err));
                return -err;
            }
            if (zmq_msg_recv(&f, from, first ? ZMQ_DONTWAIT : 0) < 0) {
                int err = errno;
                s_msg_frame_close(&f);
                if (first && err == EAGAIN)
                    return 0;
                log_error("event forwarder recv: %s", zmq_strerror(err));
                return -err;
            }
            more = zmq_msg_more(&f);
            if (!failed && zmq_msg_send(&f, to, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
                failed = true;
                s_warn(self, "event forwarder send: %s; message dropped", zmq_strerror(errno));
            }
            s_msg_frame_close(&f);
            first = false;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Time: expire dead workers, heartbeat live ones, expire queued requests, forget idle services.
 * Runs every tick_ms (at most the heartbeat interval). */
static void s_tick(broker_t *self, int64_t now) {
    worker_t *w = self->all;
    while (w) {
        worker_t *next = w->anext;
        if (now >= w->expiry_ms) {
            if (w->busy)
                log_warn("worker %s of '%s' expired while busy; its request is not requeued "
                         "(the work may have happened)",
                         w->hex, w->service->name);
            else
                log_warn("worker %s of '%s' expired", w->hex, w->service->name);
            s_worker_delete(self, &w, false);
        } else if (now - w->last_sent_ms >= MDP_HEARTBEAT_MS) {
            /* RFC 7: both sides heartbeat; busy workers too, so a worker whose handler is slow
             * still sees a live broker. */
            int rc = s_worker_command(self, w->id, w->idlen, MDPW_HEARTBEAT);
            if (rc == -EHOSTUNREACH) {
                log_warn("worker %s of '%s' is gone%s", w->hex, w->service->name,
                         w->busy ? "; its request is not requeued" : "");
                s_worker_delete(self, &w, false);
            } else
                w->last_sent_ms = now;
        }
        w = next;
    }
    for (size_t b = 0; b < self->services.nbuckets; b++) {
        s_hnode_t *n = self->services.buckets[b];
        while (n) {
            s_hnode_t *next = n->next;
            service_t *s = (service_t *)n;
            /* Queued requests are in arrival order, so the first young one ends the scan. The
             * caller's own deadline answers for a dropped request. */
            while (s->head && now - s->head->arrived_ms > self->queue_ms) {
                request_t *r = s_queue_pop(self, s);
                self->n_dropped++;
                s_request_free(&r);
            }
            if (s->nworkers == 0 && !s->head)
                s_service_destroy(self, &s);
            n = next;
        }
    }
    if (self->warn_suppressed) {
        log_warn("%ld more bad-input warnings suppressed", self->warn_suppressed);
        self->warn_suppressed = 0;
    }
    self->warn_budget = S_WARN_PER_TICK;
}

/* ---------------------------------------------------------------------------------------- */
/* Lifecycle. */

static int s_setopt_int(void *sock, int opt, int value) {
    if (zmq_setsockopt(sock, opt, &value, sizeof value) < 0) {
        log_error("zmq_setsockopt(%d): %s", opt, zmq_strerror(errno));
        return -errno;
    }
    return 0;
}

/* Closes a socket; a failure (ENOTSOCK: a bug) is logged. */
static void s_socket_close(void *sock) {
    if (zmq_close(sock) < 0)
        log_error("zmq_close: %s", zmq_strerror(errno));
}

/* Creates a socket of type with LINGER 0 and MAXMSGSIZE, bound to every endpoint of list. */
static void *s_socket_bind(void *zctx, int type, const char *list, const char *kind) {
    void *sock = zmq_socket(zctx, type);
    if (!sock) {
        log_error("zmq_socket: %s", zmq_strerror(errno));
        return NULL;
    }
    int64_t maxsize = (int64_t)MDP_MAX_FRAME;
    if (s_setopt_int(sock, ZMQ_LINGER, 0) < 0 ||
        (type == ZMQ_ROUTER && s_setopt_int(sock, ZMQ_ROUTER_MANDATORY, 1) < 0))
        goto fail;
    if (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxsize, sizeof maxsize) < 0) {
        log_error("zmq_setsockopt(ZMQ_MAXMSGSIZE): %s", zmq_strerror(errno));
        goto fail;
    }
    char *items[S_MAX_ENDPOINTS];
    int n = util_split_list(list, items, S_MAX_ENDPOINTS);
    if (n <= 0) {
        log_error("no usable %s endpoint in '%s'", kind, list ? list : "");
        goto fail;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && zmq_bind(sock, items[i]) < 0) {
            log_error("cannot bind %s to %s: %s", kind, items[i], zmq_strerror(errno));
            rc = -1;
        } else if (rc == 0) {
            char ep[256];
            size_t len = sizeof ep;
            if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &len) == 0)
                log_info("bound %s %s", kind, ep);
        }
        free(items[i]);
    }
    if (rc == 0)
        return sock;
fail:
    s_socket_close(sock);
    return NULL;
}

broker_t *broker_new(void *zctx, const broker_cfg_t *cfg) {
    broker_t *self = calloc(1, sizeof *self);
    if (!self) {
        log_error("out of memory");
        return NULL;
    }
    self->queue_ms = cfg->queue_ms;
    self->queue_max = cfg->queue_max > 0 ? cfg->queue_max : 1;
    self->queue_bytes = cfg->queue_bytes > 0 ? (size_t)cfg->queue_bytes : 1;
    /* Tick often enough for the queue bound to be roughly exact, never slower than heartbeats. */
    self->tick_ms = MDP_HEARTBEAT_MS / 2;
    if (cfg->queue_ms / 4 < self->tick_ms)
        self->tick_ms = cfg->queue_ms / 4 < 10 ? 10 : cfg->queue_ms / 4;
    self->warn_budget = S_WARN_PER_TICK;
    if (s_table_init(&self->services) < 0 || s_table_init(&self->workers) < 0) {
        log_error("out of memory");
        goto fail;
    }
    self->router = s_socket_bind(zctx, ZMQ_ROUTER, cfg->mdp_bind, "mdp");
    if (!self->router)
        goto fail;
    self->xsub = s_socket_bind(zctx, ZMQ_XSUB, cfg->events_pub_bind, "events-pub");
    if (!self->xsub)
        goto fail;
    self->xpub = s_socket_bind(zctx, ZMQ_XPUB, cfg->events_bind, "events");
    if (!self->xpub)
        goto fail;
    return self;
fail:
    broker_destroy(&self);
    return NULL;
}

void broker_destroy(broker_t **self_p) {
    broker_t *self = *self_p;
    if (!self)
        return;
    if (self->router) {
        /* Tell every worker to go (they re-register with the next broker), then give those
         * few frames a moment to leave: the socket otherwise runs with LINGER 0. */
        int nw = 0;
        while (self->all) {
            worker_t *w = self->all;
            s_peer_disconnect(self, w->id, w->idlen);
            s_worker_delete(self, &w, false);
            nw++;
        }
        if (nw)
            (void)s_setopt_int(self->router, ZMQ_LINGER, S_SHUTDOWN_LINGER_MS);
        s_socket_close(self->router);
        log_info("stopped: %lu requests, %lu replies, %lu dropped, %d workers disconnected",
                 self->n_requests, self->n_replies, self->n_dropped, nw);
    }
    if (self->services.buckets) {
        for (size_t b = 0; b < self->services.nbuckets; b++) {
            s_hnode_t *n = self->services.buckets[b];
            while (n) {
                s_hnode_t *next = n->next;
                service_t *s = (service_t *)n;
                s_service_destroy(self, &s);
                n = next;
            }
        }
    }
    free(self->services.buckets);
    free(self->workers.buckets);
    if (self->xsub)
        s_socket_close(self->xsub);
    if (self->xpub)
        s_socket_close(self->xpub);
    free(self);
    *self_p = NULL;
}

int broker_run(broker_t *self, const volatile sig_atomic_t *stop) {
    int64_t next_tick = util_mono_ms() + self->tick_ms;
    while (!*stop) {
        int64_t now = util_mono_ms();
        long timeout = next_tick > now ? (long)(next_tick - now) : 0;
        zmq_pollitem_t items[] = {{self->router, 0, ZMQ_POLLIN, 0},
                                  {self->xsub, 0, ZMQ_POLLIN, 0},
                                  {self->xpub, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 3, timeout) < 0) {
            if (errno == EINTR)
                continue; /* a signal: the loop condition decides */
            int err = errno;
            log_error("zmq_poll: %s", zmq_strerror(err));
            return -err;
        }
        int rc = 0;
        if (items[0].revents & ZMQ_POLLIN)
            rc = s_router_drain(self);
        if (rc == 0 && (items[1].revents & ZMQ_POLLIN))
            rc = s_forward(self, self->xsub, self->xpub); /* events downstream */
        if (rc == 0 && (items[2].revents & ZMQ_POLLIN))
            rc = s_forward(self, self->xpub, self->xsub); /* subscriptions upstream */
        if (rc < 0 && rc != -EINTR)
            return rc;
        now = util_mono_ms();
        if (now >= next_tick) {
            s_tick(self, now);
            next_tick = now + self->tick_ms;
        }
    }
    return 0;
}
