/* The client half of Majordomo 7/MDP (MDPC01): one DEALER per broker, round-robin sends with a
 * suspect broker tried last, and strict validation of what comes back. Also the framing helpers
 * (mdp_int.h) the worker side in svc.c and events.c share. */
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include "mdp_int.h"
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A broker that let a deadline pass stays suspect this long unless it answers meanwhile. */
#define SUSPECT_MS (10 * MDP_HEARTBEAT_MS)
/* MDP service names are short printable strings; ours are lower-case words. */
#define SERVICE_MAX 255

struct mdp_client {
    int n;
    void *socks[MDP_MAX_BROKERS];
    int64_t suspect_until[MDP_MAX_BROKERS]; /* monotonic ms; 0 = trusted */
    int next;                               /* round-robin cursor */
    int last;                               /* broker of the last send, -1 before any */
};

void *mdp_sock_new(void *zctx, int type, int linger_ms) {
    void *s = zmq_socket(zctx, type);
    if (!s) {
        log_error("zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int64_t maxmsg = MDP_MAX_FRAME;
    if (zmq_setsockopt(s, ZMQ_LINGER, &linger_ms, sizeof linger_ms) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
        log_error("zmq_setsockopt: %s", zmq_strerror(zmq_errno()));
        mdp_sock_close(&s);
        return NULL;
    }
    return s;
}

void mdp_sock_close(void **sock_p) {
    if (!sock_p || !*sock_p)
        return;
    if (zmq_close(*sock_p) != 0)
        log_error("zmq_close: %s", zmq_strerror(zmq_errno()));
    *sock_p = NULL;
}

void mdp_ctx_term(void *zctx) {
    while (zmq_ctx_term(zctx) != 0) {
        if (zmq_errno() != EINTR) {
            log_error("zmq_ctx_term: %s", zmq_strerror(zmq_errno()));
            return;
        }
    }
}

void mdp_frames_close(zmq_msg_t *frames, int n) {
    for (int i = 0; i < n; i++) {
        if (zmq_msg_close(&frames[i]) != 0)
            log_error("zmq_msg_close: %s", zmq_strerror(zmq_errno()));
    }
}

int mdp_frames_recv(void *sock, zmq_msg_t *frames, int max, int *ret_n, bool dontwait) {
    int n = 0;
    bool too_many = false;
    for (;;) {
        zmq_msg_t scratch; /* frames past max are read into it and dropped */
        memset(&scratch, 0, sizeof scratch);
        zmq_msg_t *m = n < max ? &frames[n] : &scratch;
        if (zmq_msg_init(m) != 0) {
            int err = zmq_errno();
            mdp_frames_close(frames, n < max ? n : max);
            return -err;
        }
        int flags = (n == 0 && dontwait) ? ZMQ_DONTWAIT : 0;
        if (zmq_msg_recv(m, sock, flags) < 0) {
            int err = zmq_errno();
            mdp_frames_close(m, 1);
            mdp_frames_close(frames, n < max ? n : max);
            return -err;
        }
        int more = zmq_msg_more(m);
        if (n < max) {
            n++;
        } else {
            too_many = true;
            mdp_frames_close(m, 1);
        }
        if (!more)
            break;
    }
    if (too_many) {
        mdp_frames_close(frames, n);
        return -EPROTO;
    }
    *ret_n = n;
    return 0;
}

bool mdp_frame_is(zmq_msg_t *frame, const char *s) {
    size_t len = strlen(s);
    return zmq_msg_size(frame) == len && memcmp(zmq_msg_data(frame), s, len) == 0;
}

int mdp_send_parts(void *sock, const void *const *bufs, const size_t *lens, int n) {
    for (int i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        if (zmq_send(sock, bufs[i], lens[i], flags) < 0) {
            /* Only the first part can fail with EAGAIN: once it is queued, ZeroMQ takes the
             * rest of the message atomically. */
            return -zmq_errno();
        }
    }
    return 0;
}

mdp_client_t *mdp_client_new(void *zctx, const char *brokers) {
    mdp_client_t *self = calloc(1, sizeof *self);
    if (!self) {
        log_error("out of memory");
        return NULL;
    }
    self->last = -1;
    char *items[MDP_MAX_BROKERS];
    int n = util_split_list(brokers, items, MDP_MAX_BROKERS);
    if (n <= 0) {
        log_error("no usable broker endpoint in \"%s\"", brokers ? brokers : "");
        free(self);
        return NULL;
    }
    int immediate = 1;
    for (int i = 0; i < n; i++) {
        void *s = mdp_sock_new(zctx, ZMQ_DEALER, 0);
        /* ZMQ_IMMEDIATE: a send never queues toward a broker that is not connected, so a
         * dead broker makes the send fail over at once instead of swallowing the request. */
        if (s && (zmq_setsockopt(s, ZMQ_IMMEDIATE, &immediate, sizeof immediate) != 0 ||
                  zmq_connect(s, items[i]) != 0)) {
            log_error("broker %s: %s", items[i], zmq_strerror(zmq_errno()));
            mdp_sock_close(&s);
        }
        if (s)
            self->socks[self->n++] = s;
    }
    for (int i = 0; i < n; i++)
        free(items[i]);
    if (self->n != n) {
        mdp_client_destroy(&self);
        return NULL;
    }
    return self;
}

void mdp_client_destroy(mdp_client_t **self_p) {
    if (!self_p || !*self_p)
        return;
    mdp_client_t *self = *self_p;
    for (int i = 0; i < self->n; i++)
        mdp_sock_close(&self->socks[i]);
    free(self);
    *self_p = NULL;
}

static bool s_is_suspect(mdp_client_t *self, int i, int64_t now) {
    if (self->suspect_until[i] && self->suspect_until[i] <= now)
        self->suspect_until[i] = 0;
    return self->suspect_until[i] != 0;
}

int mdp_client_send(mdp_client_t *self, const char *service, const void *body, size_t len) {
    size_t slen = service ? strlen(service) : 0;
    if (slen == 0 || slen > SERVICE_MAX || len > MDP_MAX_FRAME || (!body && len))
        return -EINVAL;
    const void *bufs[4] = {"", MDPC_CLIENT, service, body ? body : ""};
    size_t lens[4] = {0, strlen(MDPC_CLIENT), slen, len};
    int64_t now = util_mono_ms();
    int rc = -EAGAIN;
    /* Pass 0: trusted brokers in round-robin order; pass 1: the suspect ones. */
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < self->n; k++) {
            int i = (self->next + k) % self->n;
            if (s_is_suspect(self, i, now) != (pass == 1))
                continue;
            rc = mdp_send_parts(self->socks[i], bufs, lens, 4);
            if (rc == 0) {
                self->last = i;
                self->next = (i + 1) % self->n;
                return 0;
            }
            if (rc != -EAGAIN)
                log_warn("send to broker %d: %s", i, zmq_strerror(-rc));
        }
    }
    return rc;
}

int mdp_client_last_broker(const mdp_client_t *self) {
    return self->last;
}

void mdp_client_suspect(mdp_client_t *self, int i) {
    if (i >= 0 && i < self->n)
        self->suspect_until[i] = util_mono_ms() + SUSPECT_MS;
}

void mdp_client_suspect_last(mdp_client_t *self) {
    mdp_client_suspect(self, self->last);
}

int mdp_client_pollitems(mdp_client_t *self, zmq_pollitem_t *items, int max) {
    int k = 0;
    for (int i = 0; i < self->n && k < max; i++, k++)
        items[k] = (zmq_pollitem_t){.socket = self->socks[i], .events = ZMQ_POLLIN};
    return k;
}

/* Reads one message from broker i: "" | MDPC01 | service | body. */
static int s_read_reply(mdp_client_t *self, int i, void **ret_body, size_t *ret_len) {
    zmq_msg_t f[MDP_MAX_FRAMES];
    int n = 0;
    int rc = mdp_frames_recv(self->socks[i], f, MDP_MAX_FRAMES, &n, true);
    if (rc == -EPROTO) {
        log_warn("broker %d sent a message with too many frames; dropped", i);
        return rc;
    }
    if (rc < 0)
        return rc;
    if (n != 4 || zmq_msg_size(&f[0]) != 0 || !mdp_frame_is(&f[1], MDPC_CLIENT) ||
        zmq_msg_size(&f[2]) == 0) {
        log_warn("malformed MDP client message (%d frames) from broker %d; dropped", n, i);
        mdp_frames_close(f, n);
        return -EPROTO;
    }
    size_t len = zmq_msg_size(&f[3]);
    void *body = malloc(len ? len : 1);
    if (!body) {
        mdp_frames_close(f, n);
        return -ENOMEM;
    }
    memcpy(body, zmq_msg_data(&f[3]), len);
    mdp_frames_close(f, n);
    self->suspect_until[i] = 0; /* it answers: trusted again */
    *ret_body = body;
    *ret_len = len;
    return 0;
}

int mdp_client_recv(mdp_client_t *self, void **ret_body, size_t *ret_len, int timeout_ms) {
    zmq_pollitem_t items[MDP_MAX_BROKERS];
    int n = mdp_client_pollitems(self, items, MDP_MAX_BROKERS);
    int64_t deadline = timeout_ms < 0 ? -1 : util_mono_ms() + timeout_ms;
    for (;;) {
        long wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - util_mono_ms();
            wait = left > 0 ? (long)left : 0;
        }
        int rc = zmq_poll(items, n, wait);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return -zmq_errno();
        }
        /* Start the scan after the broker served last time so one busy broker cannot
         * starve the others. */
        for (int k = 0; k < n; k++) {
            int i = (self->last + 1 + k + n) % n;
            if (items[i].revents & ZMQ_POLLIN) {
                rc = s_read_reply(self, i, ret_body, ret_len);
                if (rc != -EAGAIN)
                    return rc;
            }
        }
        if (deadline >= 0 && util_mono_ms() >= deadline)
            return -EAGAIN;
    }
}
