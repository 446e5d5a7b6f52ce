/* /readyz over 8/MMI: for each broker in turn, ask mmi.service for each required service on
 * the probe's own DEALER; the first broker that answers "200" for all of them makes the
 * gateway ready. A broker silent for S_STEP_MS counts as unreachable and its socket is
 * recreated, so a late answer can never be taken for the next question's. */
#include "probe.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_BROKERS  8
#define S_MAX_SERVICES 32
#define S_STEP_MS      1000

struct gw_probe {
    void *zctx;
    char *brokers[S_MAX_BROKERS];
    int nbrokers;
    char *services[S_MAX_SERVICES];
    int nservices;
    bool any_answer; /* EXTRANET_REQUIRED_SERVICES=none */
    void *sock[S_MAX_BROKERS];
    gw_req_t *waiting; /* linked by q_next */
    int nwaiting;
    bool running;
    int cur_broker, cur_service;
    int64_t step_deadline;
    /* result so far */
    int reachable;
    bool missing[S_MAX_SERVICES]; /* of the current broker */
    int best_missing;             /* fewest missing of a reachable broker; -1 none yet */
    bool best[S_MAX_SERVICES];
};

/* zmq_close fails only on a bug (not a socket): logged, never silent. */
static void s_close(void *sock) {
    if (sock && zmq_close(sock) != 0)
        log_error("probe: zmq_close: %s", zmq_strerror(zmq_errno()));
}

static void *s_socket(gw_probe_t *self, int i) {
    if (self->sock[i])
        return self->sock[i];
    void *s = zmq_socket(self->zctx, ZMQ_DEALER);
    if (!s)
        return NULL;
    int zero = 0;
    int64_t maxmsg = (int64_t)MDP_MAX_FRAME;
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_connect(s, self->brokers[i]) != 0) {
        log_warn("probe: %s: %s", self->brokers[i], zmq_strerror(zmq_errno()));
        s_close(s);
        return NULL;
    }
    self->sock[i] = s;
    return s;
}

static void s_drop_socket(gw_probe_t *self, int i) {
    s_close(self->sock[i]);
    self->sock[i] = NULL;
}

gw_probe_t *probe_new(void *zctx, const char *brokers, const char *services) {
    gw_probe_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->zctx = zctx;
    self->nbrokers = util_split_list(brokers, self->brokers, S_MAX_BROKERS);
    /* "none" (cfg_str turns an empty variable into the default): ready when a broker answers
     * any MMI question at all. */
    if (strcmp(services, "none") == 0) {
        self->any_answer = true;
        self->services[0] = strdup("mmi.service");
        self->nservices = self->services[0] ? 1 : -1;
    } else {
        self->nservices = util_split_list(services, self->services, S_MAX_SERVICES);
    }
    if (self->nbrokers <= 0 || self->nservices <= 0) {
        log_error("probe: bad broker or service list");
        if (self->nbrokers < 0)
            self->nbrokers = 0;
        if (self->nservices < 0)
            self->nservices = 0;
        probe_destroy(&self);
        return NULL;
    }
    return self;
}

/* Answers every waiting request with the current result and goes idle. */
static void s_answer(gw_probe_t *self, bool ready) {
    json_t *missing = json_array();
    if (!ready && missing) {
        for (int i = 0; i < self->nservices; i++)
            if ((self->best_missing < 0 || self->best[i]) &&
                json_array_append_new(missing, json_string(self->services[i])) != 0)
                log_warn("readyz: out of memory listing the missing services");
    }
    json_t *o = json_pack("{s:s, s:i, s:i, s:o*}", "status", ready ? "ready" : "not_ready",
                          "brokers_reachable", self->reachable, "brokers_total", self->nbrokers,
                          "missing", missing);
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    self->running = false;
    gw_req_t *list = self->waiting;
    self->waiting = NULL;
    self->nwaiting = 0;
    while (list) {
        gw_req_t *next = list->q_next;
        list->q_next = NULL;
        list->ready_ok = ready;
        list->ready_json = text ? strdup(text) : NULL;
        list->status = EXTRANET__STATUS__OK;
        http_req_resume(list);
        list = next;
    }
    free(text);
}

/* Asks the current question, skipping brokers that cannot even be asked. */
static void s_ask(gw_probe_t *self) {
    while (self->cur_broker < self->nbrokers) {
        void *s = s_socket(self, self->cur_broker);
        const char *svc = self->services[self->cur_service];
        if (s && zmq_send(s, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 0 &&
            zmq_send(s, MDPC_CLIENT, strlen(MDPC_CLIENT), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
            zmq_send(s, "mmi.service", 11, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
            zmq_send(s, svc, strlen(svc), ZMQ_DONTWAIT) >= 0) {
            self->step_deadline = util_mono_ms() + S_STEP_MS;
            return;
        }
        s_drop_socket(self, self->cur_broker);
        self->cur_broker++;
        self->cur_service = 0;
        memset(self->missing, 0, sizeof self->missing);
    }
    s_answer(self, false);
}

static void s_start(gw_probe_t *self) {
    self->running = true;
    self->cur_broker = 0;
    self->cur_service = 0;
    self->reachable = 0;
    self->best_missing = -1;
    memset(self->missing, 0, sizeof self->missing);
    s_ask(self);
}

/* The current broker answered every question: ready, or on to the next broker. */
static void s_broker_done(gw_probe_t *self) {
    int nmissing = 0;
    for (int i = 0; i < self->nservices; i++)
        nmissing += self->missing[i];
    self->reachable++;
    if (nmissing == 0) {
        s_answer(self, true);
        return;
    }
    if (self->best_missing < 0 || nmissing < self->best_missing) {
        self->best_missing = nmissing;
        memcpy(self->best, self->missing, sizeof self->best);
    }
    self->cur_broker++;
    self->cur_service = 0;
    memset(self->missing, 0, sizeof self->missing);
    s_ask(self);
}

void probe_add(gw_probe_t *self, gw_req_t *req) {
    req->q_next = self->waiting;
    self->waiting = req;
    self->nwaiting++;
    if (!self->running)
        s_start(self);
}

int probe_pollitems(gw_probe_t *self, zmq_pollitem_t *items, int max) {
    if (!self->running || max < 1 || !self->sock[self->cur_broker])
        return 0;
    items[0] = (zmq_pollitem_t){.socket = self->sock[self->cur_broker], .events = ZMQ_POLLIN};
    return 1;
}

/* Reads one whole message: 4 frames "" | MDPC01 | mmi.service | code. Returns the code
 * (200, 404, 501) or -1 for anything else; -EAGAIN when nothing is there. */
static int s_read_answer(void *s) {
    char frames[4][16];
    size_t sizes[4];
    int n = 0, more = 1;
    while (more) {
        char buf[64];
        int rc = zmq_recv(s, buf, sizeof buf, n == 0 ? ZMQ_DONTWAIT : 0);
        if (rc < 0)
            return n == 0 && zmq_errno() == EAGAIN ? -EAGAIN : -1;
        if (n < 4) {
            size_t len = (size_t)rc < sizeof frames[0] ? (size_t)rc : sizeof frames[0] - 1;
            memcpy(frames[n], buf, len);
            frames[n][len] = '\0';
            sizes[n] = (size_t)rc;
        }
        n++;
        size_t ml = sizeof more;
        if (zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml) != 0)
            return -1;
    }
    if (n != 4 || sizes[0] != 0 || strcmp(frames[1], MDPC_CLIENT) != 0 ||
        strcmp(frames[2], "mmi.service") != 0 || sizes[3] != 3)
        return -1;
    char *end;
    long code = strtol(frames[3], &end, 10);
    return *end == '\0' && code >= 100 && code <= 999 ? (int)code : -1;
}

void probe_on_input(gw_probe_t *self) {
    while (self->running && self->sock[self->cur_broker]) {
        int code = s_read_answer(self->sock[self->cur_broker]);
        if (code == -EAGAIN)
            return;
        if (code < 0) {
            log_warn("probe: malformed MMI answer from %s", self->brokers[self->cur_broker]);
            continue;
        }
        if (code != 200 && !self->any_answer)
            self->missing[self->cur_service] = true;
        if (++self->cur_service < self->nservices)
            s_ask(self);
        else
            s_broker_done(self);
    }
}

int64_t probe_tick(gw_probe_t *self, int64_t now) {
    if (!self->running)
        return -1;
    if (now < self->step_deadline)
        return self->step_deadline - now;
    log_info("probe: broker %s did not answer MMI", self->brokers[self->cur_broker]);
    s_drop_socket(self, self->cur_broker);
    self->cur_broker++;
    self->cur_service = 0;
    memset(self->missing, 0, sizeof self->missing);
    s_ask(self);
    return self->running ? S_STEP_MS : -1;
}

int probe_waiting(gw_probe_t *self) {
    return self ? self->nwaiting : 0;
}

void probe_destroy(gw_probe_t **self_p) {
    gw_probe_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    while (self->waiting) {
        gw_req_t *req = self->waiting;
        self->waiting = req->q_next;
        req->q_next = NULL;
        req_set_result(req, EXTRANET__STATUS__UNAVAILABLE, "shutting down");
        http_req_resume(req);
    }
    for (int i = 0; i < self->nbrokers; i++) {
        s_drop_socket(self, i);
        free(self->brokers[i]);
    }
    for (int i = 0; i < self->nservices; i++)
        free(self->services[i]);
    free(self);
    *self_p = NULL;
}
