/* The gateway's ZeroMQ loop thread: submit queue (mutex + eventfd), Majordomo client, pending
 * requests hashed by request_id, a deadline list, and the /readyz probe. Every request handed
 * in leaves through exactly one http_req_resume(): s_finish() is the only caller, and a request
 * is unlinked from every list before it is called. */
#include "loop.h"
#include "auth.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include "identity.pb-c.h"
#include "metrics.h"
#include "probe.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define S_BUCKETS  4096 /* pending hash: power of two */
#define S_MAX_POLL 16

struct gw_loop {
    void *zctx;
    char *brokers, *required;
    pthread_t thread;
    bool thread_started;
    int efd;            /* eventfd: "the queue has work" / "stop" */
    pthread_mutex_t mu; /* guards q_head/q_tail/stopping */
    gw_req_t *q_head, *q_tail;
    bool stopping;
    bool failed; /* the loop died on an error (atomic) */
    /* loop thread only: */
    mdp_client_t *client;
    gw_probe_t *probe;
    gw_req_t *buckets[S_BUCKETS];
    gw_req_t *d_head, *d_tail; /* pending, ordered by deadline_mono */
    int init_rc;               /* set by the thread before it signals ready */
    bool init_done;
    pthread_cond_t init_cv;
};

void req_set_result(gw_req_t *req, Extranet__Status status, const char *fmt, ...) {
    req->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->message, sizeof req->message, fmt, ap);
    va_end(ap);
}

static unsigned s_hash(const char *id) {
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h & (S_BUCKETS - 1);
}

/* Links req into the hash and the deadline list (kept sorted: most requests share one
 * deadline length, so the scan from the tail is usually one step). */
static void s_pending_add(gw_loop_t *self, gw_req_t *req) {
    unsigned b = s_hash(req->request_id);
    req->h_next = self->buckets[b];
    self->buckets[b] = req;
    gw_req_t *at = self->d_tail;
    while (at && at->deadline_mono > req->deadline_mono)
        at = at->d_prev;
    req->d_prev = at;
    req->d_next = at ? at->d_next : self->d_head;
    if (req->d_next)
        req->d_next->d_prev = req;
    else
        self->d_tail = req;
    if (at)
        at->d_next = req;
    else
        self->d_head = req;
}

static void s_pending_remove(gw_loop_t *self, gw_req_t *req) {
    gw_req_t **pp = &self->buckets[s_hash(req->request_id)];
    while (*pp && *pp != req)
        pp = &(*pp)->h_next;
    if (*pp)
        *pp = req->h_next;
    req->h_next = NULL;
    if (req->d_prev)
        req->d_prev->d_next = req->d_next;
    else
        self->d_head = req->d_next;
    if (req->d_next)
        req->d_next->d_prev = req->d_prev;
    else
        self->d_tail = req->d_prev;
    req->d_prev = req->d_next = NULL;
}

static gw_req_t *s_pending_find(gw_loop_t *self, const char *request_id) {
    for (gw_req_t *r = self->buckets[s_hash(request_id)]; r; r = r->h_next)
        if (strcmp(r->request_id, request_id) == 0)
            return r;
    return NULL;
}

/* The one exit of a request from the loop. */
static void s_finish(gw_loop_t *self, gw_req_t *req) {
    (void)self;
    if (req->on_done)
        req->on_done(req);
    else
        http_req_resume(req);
}

/* "identity.GetMe" -> "identity" into buf. */
static const char *s_service_of(const char *method, char *buf, size_t len) {
    const char *dot = strchr(method, '.');
    size_t n = dot ? (size_t)(dot - method) : strlen(method);
    if (n >= len)
        n = len - 1;
    memcpy(buf, method, n);
    buf[n] = '\0';
    return buf;
}

/* Sends one envelope for req (phase AUTH: identity.Authenticate; CALL: the route's method). */
static int s_send(gw_loop_t *self, gw_req_t *req) {
    Extranet__Identity__AuthenticateRequest areq = EXTRANET__IDENTITY__AUTHENTICATE_REQUEST__INIT;
    uint8_t abuf[128];
    Extranet__Request env = EXTRANET__REQUEST__INIT;
    env.request_id = req->request_id;
    env.actor = &req->actor;
    env.deadline_ms = req->deadline_ms;
    if (req->phase == GW_PHASE_AUTH) {
        areq.token_sha256 = req->token_sha256;
        env.method = "identity.Authenticate";
        env.payload.len = extranet__identity__authenticate_request__pack(&areq, abuf);
        env.payload.data = abuf;
    } else {
        if (req->idempotency_key[0])
            env.idempotency_key = req->idempotency_key;
        env.method = (char *)req->match.route->rpc;
        env.payload.data = req->payload;
        env.payload.len = req->payload_len;
    }
    char service[64];
    s_service_of(env.method, service, sizeof service);
    size_t len = extranet__request__get_packed_size(&env);
    uint8_t stackbuf[4096];
    uint8_t *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
    if (!buf)
        return -ENOMEM;
    extranet__request__pack(&env, buf);
    int rc = mdp_client_send(self->client, service, buf, len);
    if (buf != stackbuf)
        free(buf);
    if (rc < 0)
        metrics_upstream_error(service, "send");
    else
        req->broker = mdp_client_last_broker(self->client);
    return rc;
}

/* Starts (or continues, after authentication) a request: send, then wait as pending. */
static void s_dispatch(gw_loop_t *self, gw_req_t *req) {
    if (util_mono_ms() >= req->deadline_mono) {
        req_set_result(req, EXTRANET__STATUS__DEADLINE_EXCEEDED, "deadline exceeded");
        s_finish(self, req);
        return;
    }
    int rc = s_send(self, req);
    if (rc < 0) {
        log_set_request_id(req->request_id);
        log_warn("send to broker failed: %s", strerror(-rc));
        log_set_request_id(NULL);
        req_set_result(req, EXTRANET__STATUS__UNAVAILABLE, "service unavailable");
        s_finish(self, req);
        return;
    }
    s_pending_add(self, req);
}

static void s_start(gw_loop_t *self, gw_req_t *req) {
    if (req->phase == GW_PHASE_READY)
        probe_add(self->probe, req);
    else
        s_dispatch(self, req);
}

static void s_count_upstream(const char *method, Extranet__Status st) {
    const char *kind = st == EXTRANET__STATUS__INTERNAL            ? "internal"
                       : st == EXTRANET__STATUS__UNAVAILABLE       ? "unavailable"
                       : st == EXTRANET__STATUS__DEADLINE_EXCEEDED ? "deadline"
                                                                   : NULL;
    if (kind) {
        char service[64];
        metrics_upstream_error(s_service_of(method, service, sizeof service), kind);
    }
}

/* One reply body from the broker. */
static void s_on_reply(gw_loop_t *self, const uint8_t *body, size_t len) {
    Extranet__Reply *rep = extranet__reply__unpack(NULL, len, body);
    if (!rep || !rep->request_id) {
        metrics_upstream_error("unknown", "bad_reply");
        log_warn("malformed reply from the broker (%zu bytes) dropped", len);
        if (rep)
            extranet__reply__free_unpacked(rep, NULL);
        return;
    }
    gw_req_t *req = s_pending_find(self, rep->request_id);
    if (!req) { /* late: its deadline already answered the client */
        log_debug("late reply for %s dropped", rep->request_id);
        extranet__reply__free_unpacked(rep, NULL);
        return;
    }
    s_pending_remove(self, req);
    if (req->phase == GW_PHASE_AUTH) {
        Extranet__Status st = rep->status;
        if (st == EXTRANET__STATUS__OK) {
            Extranet__Identity__AuthenticateReply *ar =
                extranet__identity__authenticate_reply__unpack(NULL, rep->payload.len,
                                                               rep->payload.data);
            if (!ar) {
                metrics_upstream_error("identity", "bad_reply");
                st = EXTRANET__STATUS__INTERNAL;
                req_set_result(req, st, "internal error");
            } else {
                st = auth_apply_reply(req, ar);
                extranet__identity__authenticate_reply__free_unpacked(ar, NULL);
            }
        } else {
            s_count_upstream("identity.Authenticate", st);
            req_set_result(
                req, st, "%s",
                st == EXTRANET__STATUS__UNAUTHENTICATED
                    ? "missing, invalid or expired session"
                    : (rep->message && *rep->message ? rep->message : "authentication failed"));
        }
        extranet__reply__free_unpacked(rep, NULL);
        if (st != EXTRANET__STATUS__OK) {
            s_finish(self, req);
            return;
        }
        if (req->deferred_status != EXTRANET__STATUS__OK) {
            req_set_result(req, req->deferred_status, "%s", req->deferred_msg);
            s_finish(self, req);
            return;
        }
        req->phase = GW_PHASE_CALL;
        s_dispatch(self, req);
        return;
    }
    s_count_upstream(req->match.route->rpc, rep->status);
    req->status = rep->status;
    snprintf(req->message, sizeof req->message, "%s", rep->message ? rep->message : "");
    req->retry_after_s = rep->retry_after_s;
    req->reply = rep; /* the handler decodes the payload on its own thread */
    s_finish(self, req);
}

static void s_expire(gw_loop_t *self, int64_t now) {
    while (self->d_head && self->d_head->deadline_mono <= now) {
        gw_req_t *req = self->d_head;
        s_pending_remove(self, req);
        const char *method =
            req->phase == GW_PHASE_AUTH ? "identity.Authenticate" : req->match.route->rpc;
        char service[64];
        metrics_upstream_error(s_service_of(method, service, sizeof service), "deadline");
        /* Blame the broker that took this request, not the one that took the last send:
         * with many in flight over two brokers those differ. */
        mdp_client_suspect(self->client, req->broker);
        log_set_request_id(req->request_id);
        log_info("deadline exceeded waiting for %s", method);
        log_set_request_id(NULL);
        req_set_result(req, EXTRANET__STATUS__DEADLINE_EXCEEDED, "deadline exceeded");
        s_finish(self, req);
    }
}

static gw_req_t *s_queue_take(gw_loop_t *self, bool *ret_stopping) {
    pthread_mutex_lock(&self->mu);
    gw_req_t *list = self->q_head;
    self->q_head = self->q_tail = NULL;
    *ret_stopping = self->stopping;
    pthread_mutex_unlock(&self->mu);
    return list;
}

static void s_shutdown(gw_loop_t *self) {
    bool stopping;
    gw_req_t *list = s_queue_take(self, &stopping);
    while (list) {
        gw_req_t *next = list->q_next;
        req_set_result(list, EXTRANET__STATUS__UNAVAILABLE, "shutting down");
        s_finish(self, list);
        list = next;
    }
    while (self->d_head) {
        gw_req_t *req = self->d_head;
        s_pending_remove(self, req);
        req_set_result(req, EXTRANET__STATUS__UNAVAILABLE, "shutting down");
        s_finish(self, req);
    }
    probe_destroy(&self->probe); /* answers its waiters with 503 */
}

static void *s_run(void *arg) {
    gw_loop_t *self = arg;
    log_init("gateway");
    self->client = mdp_client_new(self->zctx, self->brokers);
    self->probe = self->client ? probe_new(self->zctx, self->brokers, self->required) : NULL;
    pthread_mutex_lock(&self->mu);
    self->init_rc = self->probe ? 0 : -EIO;
    self->init_done = true;
    pthread_cond_signal(&self->init_cv);
    pthread_mutex_unlock(&self->mu);
    if (!self->probe) {
        mdp_client_destroy(&self->client);
        return NULL;
    }
    for (;;) {
        /* The probe's timeout handling may replace its socket: tick before taking items. */
        int64_t now = util_mono_ms();
        int64_t timeout = 1000;
        if (self->d_head)
            timeout = self->d_head->deadline_mono - now;
        int64_t pt = probe_tick(self->probe, now);
        if (pt >= 0 && pt < timeout)
            timeout = pt;
        if (timeout < 0)
            timeout = 0;
        zmq_pollitem_t items[S_MAX_POLL];
        items[0] = (zmq_pollitem_t){.socket = NULL, .fd = self->efd, .events = ZMQ_POLLIN};
        int nclient = mdp_client_pollitems(self->client, items + 1, S_MAX_POLL / 2);
        int nprobe = probe_pollitems(self->probe, items + 1 + nclient, S_MAX_POLL - 1 - nclient);
        int rc = zmq_poll(items, 1 + nclient + nprobe, (long)timeout);
        if (rc < 0 && zmq_errno() != EINTR) {
            /* Not recoverable here: stop serving and let main shut the process down, so a
             * supervisor restarts it instead of it answering 503 forever. */
            log_error("zmq_poll: %s; the gateway stops", zmq_strerror(zmq_errno()));
            __atomic_store_n(&self->failed, true, __ATOMIC_RELAXED);
            kill(getpid(), SIGTERM);
            break;
        }
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
            uint64_t v;
            if (read(self->efd, &v, sizeof v) < 0 && errno != EAGAIN)
                log_warn("eventfd read: %s", strerror(errno));
            bool stopping;
            gw_req_t *list = s_queue_take(self, &stopping);
            while (list) {
                gw_req_t *next = list->q_next;
                list->q_next = NULL;
                s_start(self, list);
                list = next;
            }
            if (stopping)
                break;
        }
        bool client_ready = false;
        for (int i = 0; i < nclient; i++)
            client_ready |= (items[1 + i].revents & ZMQ_POLLIN) != 0;
        if (client_ready) {
            for (int n = 0; n < 10000; n++) { /* drain, but let deadlines run sometimes */
                void *body = NULL;
                size_t len = 0;
                int r = mdp_client_recv(self->client, &body, &len, 0);
                if (r == -EPROTO)
                    continue;
                if (r < 0)
                    break;
                s_on_reply(self, body, len);
                free(body);
            }
        }
        if (nprobe > 0)
            probe_on_input(self->probe);
        s_expire(self, util_mono_ms());
    }
    /* Also when the loop dies on an error: from here on loop_submit refuses (the caller answers
     * 503 itself), so no request can wait in the queue for a thread that is gone. */
    pthread_mutex_lock(&self->mu);
    self->stopping = true;
    pthread_mutex_unlock(&self->mu);
    s_shutdown(self);
    mdp_client_destroy(&self->client);
    return NULL;
}

gw_loop_t *loop_new(void *zctx, const char *brokers, const char *required) {
    gw_loop_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->zctx = zctx;
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->brokers = strdup(brokers);
    self->required = strdup(required);
    if (self->efd < 0 || !self->brokers || !self->required) {
        log_error("loop: %s", strerror(errno));
        goto fail;
    }
    int err = pthread_mutex_init(&self->mu, NULL);
    if (err != 0) {
        log_error("loop: pthread_mutex_init: %s", strerror(err));
        goto fail;
    }
    err = pthread_cond_init(&self->init_cv, NULL);
    if (err != 0) {
        log_error("loop: pthread_cond_init: %s", strerror(err));
        pthread_mutex_destroy(&self->mu);
        goto fail;
    }
    err = pthread_create(&self->thread, NULL, s_run, self);
    if (err != 0) {
        log_error("loop: cannot start its thread: %s", strerror(err));
        goto fail_sync;
    }
    self->thread_started = true;
    pthread_mutex_lock(&self->mu);
    while (!self->init_done)
        pthread_cond_wait(&self->init_cv, &self->mu);
    pthread_mutex_unlock(&self->mu);
    if (self->init_rc < 0) {
        log_error("loop: cannot connect to the broker(s) %s", brokers);
        pthread_join(self->thread, NULL);
        self->thread_started = false;
        goto fail_sync;
    }
    return self;
fail_sync:
    pthread_cond_destroy(&self->init_cv);
    pthread_mutex_destroy(&self->mu);
fail:
    if (self->efd >= 0)
        close(self->efd);
    free(self->brokers);
    free(self->required);
    free(self);
    return NULL;
}

static void s_wake(gw_loop_t *self) {
    uint64_t one = 1;
    if (write(self->efd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_error("eventfd write: %s", strerror(errno));
}

int loop_submit(gw_loop_t *self, gw_req_t *req) {
    req->q_next = NULL;
    pthread_mutex_lock(&self->mu);
    if (self->stopping) {
        pthread_mutex_unlock(&self->mu);
        return -ESHUTDOWN;
    }
    /* Only the first request into an empty queue wakes the loop: it drains the whole queue,
     * so under load one eventfd write serves a batch. */
    bool was_empty = self->q_head == NULL;
    if (self->q_tail)
        self->q_tail->q_next = req;
    else
        self->q_head = req;
    self->q_tail = req;
    pthread_mutex_unlock(&self->mu);
    if (was_empty)
        s_wake(self);
    return 0;
}

bool loop_failed(gw_loop_t *self) {
    return __atomic_load_n(&self->failed, __ATOMIC_RELAXED);
}

void loop_stop(gw_loop_t *self) {
    pthread_mutex_lock(&self->mu);
    self->stopping = true;
    pthread_mutex_unlock(&self->mu);
    s_wake(self);
    if (self->thread_started)
        pthread_join(self->thread, NULL);
    self->thread_started = false;
    /* The thread answered its queue before it ended, and stopping refuses new submits since;
     * this is the guarantee that nothing queued stays suspended (MHD_stop_daemon aborts on a
     * suspended connection). */
    bool stopping;
    gw_req_t *list = s_queue_take(self, &stopping);
    while (list) {
        gw_req_t *next = list->q_next;
        list->q_next = NULL;
        req_set_result(list, EXTRANET__STATUS__UNAVAILABLE, "shutting down");
        s_finish(self, list);
        list = next;
    }
}

void loop_destroy(gw_loop_t **self_p) {
    gw_loop_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    loop_stop(self);
    pthread_cond_destroy(&self->init_cv);
    pthread_mutex_destroy(&self->mu);
    close(self->efd);
    free(self->brokers);
    free(self->required);
    free(self);
    *self_p = NULL;
}
