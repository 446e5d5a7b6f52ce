/* The service runtime behind svc_main (svc.h): environment, migrations, then N handler threads
 * behind one Majordomo I/O thread that owns every broker socket, so heartbeats keep flowing
 * while a handler is busy; an optional tick thread; and a drain on SIGTERM/SIGINT. */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include "extranet/svc.h"
#include "extranet/cfg.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "extranet/util.h"
#include "mdp_int.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS_MAX 256
/* Per-request arena cap: a 4 MiB body decoded twice (envelope, then payload) plus the reply. */
#define ARENA_LIMIT (64u * 1024 * 1024)
/* Room left in a reply frame for the envelope around the handler's payload. */
#define REPLY_SLACK 4096
/* After the drain, how long a handler that got STOP may take to leave before we give up. The
 * tick thread gets the whole drain time plus this (its work, e.g. an rpc_call, is not drained). */
#define JOIN_GRACE_MS 1000
/* Most frames read from a broker: "" | MDPW01 | REQUEST | client | "" | body..., where the broker
 * forwards client bodies of up to 28 frames (BROKER_MAX_FRAMES 32 with identity, "", header and
 * service), so 33 frames; with room to spare, so that a multi-frame request is answered INVALID
 * instead of dropped (which would leave this worker busy at the broker for ever). */
#define BROKER_FRAMES_MAX 40
/* Longest a link socket lingers at exit to flush the last REPLY/DISCONNECT (within the drain). */
#define LINK_LINGER_MAX_MS 1000
/* Longest request_id echoed back (ours are 36-char uuids); longer ones are refused. */
#define REQUEST_ID_MAX 64
/* Broker messages read from one socket per loop turn, so one busy broker cannot starve. */
#define READ_BATCH 64

/* What travels on a handler's inproc pipe: header | client address | body. The header carries
 * which broker link the request came in on and that link's generation, so a reply for a link
 * that has since been reconnected is dropped instead of confusing the new broker session. */
enum { H_REQUEST = 'Q', H_REPLY = 'P', H_STOP = 'S' };
typedef struct {
    uint8_t type;
    uint8_t link;
    uint32_t gen;
} s_hdr_t;

/* One MDP worker session: a DEALER to one broker on behalf of one handler thread. */
typedef struct {
    void *sock;
    uint32_t gen;      /* bumped on every reconnect */
    int64_t heard_ms;  /* last time the broker spoke (or we finished work for it) */
    int outstanding;   /* requests taken on this session and not yet answered */
    bool disconnected; /* DISCONNECT sent during shutdown; no more heartbeats */
    bool broker_left;  /* the broker sent DISCONNECT during shutdown: send it nothing more */
} s_link_t;

struct s_svc;

typedef struct {
    struct s_svc *svc;
    svc_thread_t t;
    bool opened; /* t's resources exist (and thread_init ran) */
    pthread_t tid;
    bool running;
    void *pipe_io; /* I/O thread's end */
    void *pipe_h;  /* handler thread's end */
    arena_t *arena;
    uint8_t spare[256]; /* the bare INTERNAL reply when the arena is exhausted */
    s_link_t links[MDP_MAX_BROKERS];
    int inflight; /* requests handed to the handler and not yet back (I/O thread) */
} s_worker_t;

typedef struct s_svc {
    const svc_def_t *def;
    void *zctx;
    /* One context per broker for the worker links, each with its own ZeroMQ I/O thread:
     * libzmq resolves a host name synchronously in the I/O thread that connects it (again on
     * every reconnect), so one broker name whose lookup hangs would otherwise stall the links
     * to every other broker until they miss their heartbeats. */
    void *link_ctx[MDP_MAX_BROKERS];
    const char *broker_list, *events_pub, *pg_conninfo, *pg_migrate_conninfo, *redis_url;
    char *brokers[MDP_MAX_BROKERS];
    int nbrokers;
    long nthreads, drain_ms;
    s_worker_t *workers;
    void *ctl_main, *ctl_io; /* main -> I/O thread: "stop" */
    pthread_t io_tid;
    bool io_running;
    atomic_bool io_exited;
    atomic_int io_rc;
    svc_thread_t tick;
    bool tick_opened;
    pthread_t tick_tid;
    bool tick_running;
    pthread_mutex_t mu; /* with cv: wakes the tick thread at shutdown */
    pthread_cond_t cv;
    bool cv_ready;
} s_svc_t;

static atomic_bool s_stop;

bool svc_stopping(void) {
    return atomic_load(&s_stop);
}

/* ---------------------------------------------------------------- replies (handler side) */

void svc_reply_ok(svc_call_t *call, const ProtobufCMessage *msg) {
    if (call->answered) {
        log_warn("second answer to one call ignored");
        return;
    }
    call->answered = true;
    call->status = EXTRANET__STATUS__OK;
    call->message = "";
    call->payload = (ProtobufCBinaryData){0, NULL};
    if (!msg)
        return;
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf =
        len <= MDP_MAX_FRAME - REPLY_SLACK ? arena_alloc(call->arena, len ? len : 1) : NULL;
    if (!buf) {
        log_error("reply of %zu bytes does not fit", len);
        call->status = EXTRANET__STATUS__INTERNAL;
        call->message = "reply too large";
        return;
    }
    call->payload.len = protobuf_c_message_pack(msg, buf);
    call->payload.data = buf;
}

void svc_fail(svc_call_t *call, Extranet__Status status, const char *fmt, ...) {
    if (call->answered) {
        log_warn("second answer to one call ignored");
        return;
    }
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    const char *copy = arena_strdup(call->arena, text);
    call->answered = true;
    call->status = status;
    call->message = copy ? copy : "";
    call->payload = (ProtobufCBinaryData){0, NULL};
}

int64_t svc_call_remaining_ms(const svc_call_t *call) {
    return call->req->deadline_ms - util_now_ms();
}

int64_t svc_call_nested_deadline_ms(const svc_call_t *call, int64_t margin_ms, int64_t cap_ms) {
    int64_t left = svc_call_remaining_ms(call) - margin_ms;
    if (cap_ms > 0 && left > cap_ms)
        left = cap_ms;
    if (left < 100)
        left = 100;
    return util_now_ms() + left;
}

/* ---------------------------------------------------------------- per-thread resources */

/* Creates what one thread owns; runs thread_init when with_init. 0 or -1 (logged). */
static int s_thread_open(s_svc_t *svc, svc_thread_t *t, int index, bool with_init) {
    const svc_def_t *def = svc->def;
    *t = (svc_thread_t){.index = index};
    if (def->schema) {
        t->pg = pg_new(svc->pg_conninfo, def->schema, def->statements);
        if (!t->pg)
            return -1;
    }
    if (def->use_redis) {
        t->redis = rds_new(svc->redis_url);
        if (!t->redis)
            return -1;
    }
    t->rpc = rpc_new(svc->zctx, svc->broker_list);
    t->events = ev_pub_new(svc->zctx, svc->events_pub);
    if (!t->rpc || !t->events)
        return -1;
    if (with_init && def->thread_init && def->thread_init(t) != 0) {
        log_error("thread_init failed for thread %d", index);
        return -1;
    }
    return 0;
}

static void s_thread_close(s_svc_t *svc, svc_thread_t *t, bool with_fini) {
    if (with_fini && svc->def->thread_fini)
        svc->def->thread_fini(t);
    pg_destroy(&t->pg);
    rds_destroy(&t->redis);
    rpc_destroy(&t->rpc);
    ev_pub_destroy(&t->events);
}

/* ---------------------------------------------------------------- handler threads */

static const svc_method_t *s_method_find(const svc_def_t *def, const char *name) {
    for (const svc_method_t *m = def->methods; m && m->method; m++) {
        if (strcmp(m->method, name) == 0)
            return m;
    }
    return NULL;
}

/* Runtime-made answers (the handler never saw the call). */
static void s_answer(svc_call_t *call, Extranet__Status st, const char *msg) {
    call->answered = true;
    call->status = st;
    call->message = msg;
    call->payload = (ProtobufCBinaryData){0, NULL};
}

/* Decodes one request, runs its handler and packs the Reply into the worker's arena. */
static void s_serve(s_worker_t *w, const uint8_t *data, size_t len, uint8_t **ret_out,
                    size_t *ret_len) {
    const svc_def_t *def = w->svc->def;
    ProtobufCAllocator *al = arena_allocator(w->arena);
    svc_call_t call = {.arena = w->arena, .message = ""};
    Extranet__Reply rep = EXTRANET__REPLY__INIT;

    Extranet__Request *req = extranet__request__unpack(al, len, data);
    if (!req) {
        log_warn("undecodable request envelope (%zu bytes)", len);
        s_answer(&call, EXTRANET__STATUS__INVALID, "malformed request envelope");
    } else if (strlen(req->request_id) > REQUEST_ID_MAX) {
        s_answer(&call, EXTRANET__STATUS__INVALID, "request_id too long");
    } else {
        rep.request_id = req->request_id;
        log_set_request_id(req->request_id);
        const svc_method_t *m = NULL;
        if (req->deadline_ms <= 0) {
            s_answer(&call, EXTRANET__STATUS__INVALID, "deadline_ms missing");
        } else if (req->deadline_ms <= util_now_ms()) {
            /* Dropped: the caller has given up. The broker still needs a REPLY to count this
             * worker as ready again (7/MDP), so it gets a short DEADLINE_EXCEEDED that the
             * caller discards as stale. */
            log_debug("%s: deadline passed before start; dropped", req->method);
            s_answer(&call, EXTRANET__STATUS__DEADLINE_EXCEEDED, "deadline passed");
        } else if (!(m = s_method_find(def, req->method))) {
            s_answer(&call, EXTRANET__STATUS__INVALID, "unknown method");
        } else {
            const ProtobufCMessage *msg = NULL;
            if (m->request)
                msg =
                    protobuf_c_message_unpack(m->request, al, req->payload.len, req->payload.data);
            if (m->request && !msg) {
                s_answer(&call, EXTRANET__STATUS__INVALID, "malformed payload");
            } else {
                call.req = req;
                call.msg = msg;
                m->fn(&w->t, &call);
                if (!call.answered) {
                    log_error("%s: handler returned without an answer", req->method);
                    s_answer(&call, EXTRANET__STATUS__INTERNAL, "internal error");
                }
            }
        }
    }
    rep.status = call.status;
    rep.message = (char *)(call.message ? call.message : "");
    rep.payload = call.payload;
    rep.retry_after_s = call.retry_after_s;
    size_t n = extranet__reply__get_packed_size(&rep);
    uint8_t *out = arena_alloc(w->arena, n ? n : 1);
    if (!out) {
        /* Arena exhausted by the handler: answer with the bare status, which fits the spare
         * buffer (request_id is at most REQUEST_ID_MAX). */
        log_error("arena exhausted packing a %zu-byte reply", n);
        rep.status = EXTRANET__STATUS__INTERNAL;
        rep.message = "out of memory";
        rep.payload = (ProtobufCBinaryData){0, NULL};
        rep.retry_after_s = 0;
        if (extranet__reply__get_packed_size(&rep) > sizeof w->spare)
            rep.request_id = "";
        out = w->spare;
    }
    *ret_len = extranet__reply__pack(&rep, out);
    *ret_out = out;
}

static void *s_handler_main(void *arg) {
    s_worker_t *w = arg;
    for (;;) {
        zmq_msg_t f[3];
        int n = 0;
        int rc = mdp_frames_recv(w->pipe_h, f, 3, &n, false);
        if (rc == -EINTR || rc == -EPROTO)
            continue;
        if (rc < 0) {
            log_error("handler %d: pipe: %s", w->t.index, zmq_strerror(-rc));
            break;
        }
        s_hdr_t hdr = {0};
        if (zmq_msg_size(&f[0]) == sizeof hdr)
            memcpy(&hdr, zmq_msg_data(&f[0]), sizeof hdr);
        if (hdr.type == H_STOP) {
            mdp_frames_close(f, n);
            break;
        }
        if (hdr.type != H_REQUEST || n != 3) {
            log_error("handler %d: bad pipe message", w->t.index);
            mdp_frames_close(f, n);
            continue;
        }
        uint8_t *out = NULL;
        size_t outlen = 0;
        s_serve(w, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]), &out, &outlen);
        hdr.type = H_REPLY;
        /* Always hand something back, even an empty body, so the I/O thread's in-flight
         * count stays exact. */
        if (zmq_send(w->pipe_h, &hdr, sizeof hdr, ZMQ_SNDMORE) < 0 ||
            zmq_msg_send(&f[1], w->pipe_h, ZMQ_SNDMORE) < 0 ||
            zmq_send(w->pipe_h, out ? (void *)out : (void *)"", outlen, 0) < 0) {
            log_error("handler %d: pipe send: %s", w->t.index, zmq_strerror(zmq_errno()));
            mdp_frames_close(f, n);
            break;
        }
        mdp_frames_close(f, n);
        arena_reset(w->arena);
        log_set_request_id(NULL);
    }
    return NULL;
}

/* ---------------------------------------------------------------- the I/O thread */

static int s_send_cmd(void *sock, int cmd, const void *extra, size_t extra_len) {
    uint8_t c = (uint8_t)cmd;
    const void *bufs[4] = {"", MDPW_WORKER, &c, extra};
    size_t lens[4] = {0, strlen(MDPW_WORKER), 1, extra_len};
    return mdp_send_parts(sock, bufs, lens, extra ? 4 : 3);
}

static int s_link_open(s_svc_t *svc, s_link_t *l, int b) {
    l->sock = mdp_sock_new(svc->link_ctx[b], ZMQ_DEALER, 0);
    if (!l->sock)
        return -1;
    if (zmq_connect(l->sock, svc->brokers[b]) != 0) {
        log_error("broker %s: %s", svc->brokers[b], zmq_strerror(zmq_errno()));
        mdp_sock_close(&l->sock);
        return -1;
    }
    l->gen++;
    l->heard_ms = util_mono_ms();
    l->outstanding = 0;
    l->disconnected = false;
    l->broker_left = false;
    /* No ZMQ_IMMEDIATE here: READY waits in the queue until the broker is up. */
    int rc = s_send_cmd(l->sock, MDPW_READY, svc->def->name, strlen(svc->def->name));
    if (rc < 0)
        log_warn("READY to %s: %s", svc->brokers[b], zmq_strerror(-rc));
    return 0;
}

static int s_link_reopen(s_svc_t *svc, s_link_t *l, int b) {
    mdp_sock_close(&l->sock);
    return s_link_open(svc, l, b);
}

static void s_link_disconnect(s_link_t *l) {
    if (l->disconnected || !l->sock)
        return;
    int rc = s_send_cmd(l->sock, MDPW_DISCONNECT, NULL, 0);
    if (rc < 0)
        log_warn("DISCONNECT: %s", zmq_strerror(-rc));
    l->disconnected = true;
}

/* "" | MDPW01 | REPLY | client | "" | body; addr and body are moved when sent. */
static int s_send_reply(void *sock, zmq_msg_t *addr, const void *body, size_t len,
                        zmq_msg_t *body_msg) {
    uint8_t c = MDPW_REPLY;
    if (zmq_send(sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -zmq_errno();
    if (zmq_send(sock, MDPW_WORKER, strlen(MDPW_WORKER), ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, &c, 1, ZMQ_SNDMORE) < 0 || zmq_msg_send(addr, sock, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, "", 0, ZMQ_SNDMORE) < 0)
        return -zmq_errno();
    int rc = body_msg ? zmq_msg_send(body_msg, sock, 0) : zmq_send(sock, body, len, 0);
    return rc < 0 ? -zmq_errno() : 0;
}

/* A reply the I/O thread makes itself (the request never reached a handler). */
static void s_reply_direct(s_link_t *l, zmq_msg_t *addr, Extranet__Status st, const char *msg) {
    Extranet__Reply rep = EXTRANET__REPLY__INIT;
    rep.status = st;
    rep.message = (char *)msg;
    uint8_t buf[256];
    size_t n = extranet__reply__get_packed_size(&rep);
    if (n > sizeof buf)
        return;
    n = extranet__reply__pack(&rep, buf);
    int rc = s_send_reply(l->sock, addr, buf, n, NULL);
    if (rc < 0)
        log_warn("REPLY: %s", zmq_strerror(-rc));
}

/* One message from broker b on worker w's link. Returns 0, -EAGAIN when nothing was waiting,
 * or -errno for a socket failure (the caller reconnects the link). */
static int s_on_broker(s_svc_t *svc, s_worker_t *w, int b, bool stopping) {
    s_link_t *l = &w->links[b];
    zmq_msg_t f[BROKER_FRAMES_MAX];
    int n = 0;
    int rc = mdp_frames_recv(l->sock, f, BROKER_FRAMES_MAX, &n, true);
    if (rc == -EPROTO) {
        log_warn("broker %s: message with too many frames dropped", svc->brokers[b]);
        return 0;
    }
    if (rc < 0)
        return rc;
    l->heard_ms = util_mono_ms(); /* any command counts as a heartbeat (7/MDP) */
    if (n < 3 || zmq_msg_size(&f[0]) != 0 || !mdp_frame_is(&f[1], MDPW_WORKER) ||
        zmq_msg_size(&f[2]) != 1) {
        log_warn("broker %s: malformed MDPW01 message dropped", svc->brokers[b]);
        mdp_frames_close(f, n);
        return 0;
    }
    int cmd = *(const uint8_t *)zmq_msg_data(&f[2]);
    switch (cmd) {
    case MDPW_REQUEST:
        if (l->disconnected) {
            /* It crossed our DISCONNECT on the wire; the broker requeues such a request for
             * another worker (7/MDP: we said we take nothing more), so serving it would run
             * it twice. */
            log_info("request after DISCONNECT left to the broker to requeue");
        } else if (n == 6 && zmq_msg_size(&f[4]) == 0) {
            s_hdr_t hdr = {.type = H_REQUEST, .link = (uint8_t)b, .gen = l->gen};
            if (zmq_send(w->pipe_io, &hdr, sizeof hdr, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
                zmq_msg_send(&f[3], w->pipe_io, ZMQ_SNDMORE) < 0 ||
                zmq_msg_send(&f[5], w->pipe_io, 0) < 0) {
                log_error("handler %d: pipe: %s", w->t.index, zmq_strerror(zmq_errno()));
                s_reply_direct(l, &f[3], EXTRANET__STATUS__INTERNAL, "internal error");
            } else {
                l->outstanding++;
                w->inflight++;
            }
        } else if (n >= 5 && zmq_msg_size(&f[4]) == 0) {
            log_warn("broker %s: REQUEST with %d body frames", svc->brokers[b], n - 5);
            s_reply_direct(l, &f[3], EXTRANET__STATUS__INVALID, "malformed request");
        } else if (n >= 4) {
            /* The broker holds this worker busy until it gets a REPLY: always give one. */
            log_warn("broker %s: REQUEST without the empty delimiter", svc->brokers[b]);
            s_reply_direct(l, &f[3], EXTRANET__STATUS__INVALID, "malformed request");
        } else {
            log_warn("broker %s: REQUEST without a client address dropped", svc->brokers[b]);
        }
        break;
    case MDPW_HEARTBEAT:
        break; /* our own heartbeats go out on the timer, busy or not */
    case MDPW_DISCONNECT:
        if (stopping) {
            /* RFC 7: after DISCONNECT, no further commands; a REPLY still being worked on is
             * dropped (s_on_handler). */
            l->disconnected = true;
            l->broker_left = true;
        } else {
            log_info("broker %s sent DISCONNECT; registering again", svc->brokers[b]);
            mdp_frames_close(f, n);
            return s_link_reopen(svc, l, b) == 0 ? 0 : -EIO;
        }
        break;
    default:
        log_warn("broker %s: unexpected command %d dropped", svc->brokers[b], cmd);
        break;
    }
    mdp_frames_close(f, n);
    return 0;
}

/* One answer from worker w's handler: forward it as REPLY on the link it came from. */
static int s_on_handler(s_svc_t *svc, s_worker_t *w, bool stopping) {
    zmq_msg_t f[3];
    int n = 0;
    int rc = mdp_frames_recv(w->pipe_io, f, 3, &n, true);
    if (rc < 0)
        return rc == -EPROTO ? 0 : rc;
    s_hdr_t hdr = {0};
    if (zmq_msg_size(&f[0]) == sizeof hdr)
        memcpy(&hdr, zmq_msg_data(&f[0]), sizeof hdr);
    if (n != 3 || hdr.type != H_REPLY || hdr.link >= svc->nbrokers) {
        log_error("handler %d: bad pipe message", w->t.index);
        mdp_frames_close(f, n);
        return 0;
    }
    w->inflight--;
    s_link_t *l = &w->links[hdr.link];
    if (hdr.gen != l->gen || !l->sock) {
        log_warn("reply for a broker session since reset dropped");
    } else if (l->broker_left) {
        l->outstanding--;
        log_warn("reply dropped: broker %s said DISCONNECT", svc->brokers[hdr.link]);
    } else {
        l->outstanding--;
        l->heard_ms = util_mono_ms(); /* it cannot have beaten for us while we worked */
        rc = s_send_reply(l->sock, &f[1], NULL, 0, &f[2]);
        if (rc < 0)
            log_warn("REPLY to %s dropped: %s", svc->brokers[hdr.link], zmq_strerror(-rc));
        /* Drain rule: a worker busy at SIGTERM answers first, then says goodbye. */
        if (stopping && l->outstanding == 0)
            s_link_disconnect(l);
    }
    mdp_frames_close(f, n);
    return 0;
}

static void s_heartbeat(s_svc_t *svc, bool stopping) {
    int64_t now = util_mono_ms();
    for (long i = 0; i < svc->nthreads; i++) {
        for (int b = 0; b < svc->nbrokers; b++) {
            s_link_t *l = &svc->workers[i].links[b];
            if (l->disconnected)
                continue;
            /* Liveness counts idle silence only: a broker need not beat for a busy worker,
             * and reconnecting would lose the reply being worked on. */
            if (!stopping && l->outstanding == 0 &&
                now - l->heard_ms > (int64_t)MDP_HEARTBEAT_MS * MDP_LIVENESS) {
                log_warn("broker %s silent for %d beats; reconnecting", svc->brokers[b],
                         MDP_LIVENESS);
                if (s_link_reopen(svc, l, b) != 0)
                    continue;
            }
            if (l->sock) {
                int rc = s_send_cmd(l->sock, MDPW_HEARTBEAT, NULL, 0);
                if (rc < 0 && rc != -EAGAIN)
                    log_warn("HEARTBEAT: %s", zmq_strerror(-rc));
            }
        }
    }
}

static bool s_all_idle(s_svc_t *svc) {
    for (long i = 0; i < svc->nthreads; i++) {
        if (svc->workers[i].inflight > 0)
            return false;
    }
    return true;
}

static int s_io_run(s_svc_t *svc) {
    long nt = svc->nthreads;
    int nb = svc->nbrokers;
    size_t nitems = 1 + (size_t)nt + (size_t)nt * (size_t)nb;
    zmq_pollitem_t *items = calloc(nitems, sizeof *items);
    if (!items) {
        log_error("out of memory");
        return -1;
    }
    bool stopping = false;
    int64_t drain_deadline = 0;
    int64_t next_hb = util_mono_ms() + MDP_HEARTBEAT_MS;
    int ret = 0;
    for (long i = 0; i < nt; i++) {
        for (int b = 0; b < nb; b++) {
            if (s_link_open(svc, &svc->workers[i].links[b], b) != 0) {
                ret = -1;
                goto out;
            }
        }
    }
    for (;;) {
        items[0] = (zmq_pollitem_t){.socket = svc->ctl_io, .events = ZMQ_POLLIN};
        for (long i = 0; i < nt; i++) {
            s_worker_t *w = &svc->workers[i];
            items[1 + i] = (zmq_pollitem_t){.socket = w->pipe_io, .events = ZMQ_POLLIN};
            /* A link whose reconnect failed has no socket: fd -1 makes poll(2) skip it (a
             * NULL socket would otherwise poll fd 0). */
            for (int b = 0; b < nb; b++)
                items[1 + nt + i * nb + b] =
                    w->links[b].sock
                        ? (zmq_pollitem_t){.socket = w->links[b].sock, .events = ZMQ_POLLIN}
                        : (zmq_pollitem_t){.socket = NULL, .fd = -1, .events = 0};
        }
        int64_t now = util_mono_ms();
        int64_t until = next_hb;
        if (stopping && drain_deadline < until)
            until = drain_deadline;
        long wait = until > now ? (long)(until - now) : 0;
        if (zmq_poll(items, (int)nitems, wait) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            log_error("zmq_poll: %s", zmq_strerror(zmq_errno()));
            ret = -1;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmq_msg_t f[MDP_MAX_FRAMES];
            int n = 0;
            if (mdp_frames_recv(svc->ctl_io, f, MDP_MAX_FRAMES, &n, true) == 0)
                mdp_frames_close(f, n);
            if (!stopping) {
                stopping = true;
                drain_deadline = util_mono_ms() + svc->drain_ms;
                /* Idle sessions leave now; busy ones after their REPLY (s_on_handler). */
                for (long i = 0; i < nt; i++)
                    for (int b = 0; b < nb; b++)
                        if (svc->workers[i].links[b].outstanding == 0)
                            s_link_disconnect(&svc->workers[i].links[b]);
            }
        }
        for (long i = 0; i < nt; i++) {
            s_worker_t *w = &svc->workers[i];
            if (items[1 + i].revents & ZMQ_POLLIN) {
                for (int k = 0; k < READ_BATCH; k++) {
                    int rc = s_on_handler(svc, w, stopping);
                    if (rc == -EAGAIN)
                        break;
                    if (rc < 0) {
                        log_error("pipe %ld: %s", i, zmq_strerror(-rc));
                        ret = -1;
                        goto out;
                    }
                }
            }
            for (int b = 0; b < nb; b++) {
                if (!(items[1 + nt + i * nb + b].revents & ZMQ_POLLIN))
                    continue;
                for (int k = 0; k < READ_BATCH; k++) {
                    int rc = s_on_broker(svc, w, b, stopping);
                    if (rc == -EAGAIN)
                        break;
                    if (rc == -ETERM) {
                        ret = -1;
                        goto out;
                    }
                    if (rc < 0) {
                        log_warn("broker %s: %s; reconnecting", svc->brokers[b], zmq_strerror(-rc));
                        if (s_link_reopen(svc, &w->links[b], b) != 0) {
                            ret = -1;
                            goto out;
                        }
                        break;
                    }
                }
            }
        }
        now = util_mono_ms();
        if (now >= next_hb) {
            s_heartbeat(svc, stopping);
            next_hb = now + MDP_HEARTBEAT_MS;
        }
        if (stopping && (s_all_idle(svc) || now >= drain_deadline)) {
            if (!s_all_idle(svc))
                log_warn("drain time over with requests still in flight");
            break;
        }
    }
out:;
    /* The last REPLY/DISCONNECT may still be queued (a big reply takes a while to write):
     * linger for it within what is left of the drain, at most LINK_LINGER_MAX_MS. */
    int linger = 0;
    if (stopping) {
        int64_t left = drain_deadline - util_mono_ms();
        linger = left <= 0 ? 0 : left > LINK_LINGER_MAX_MS ? LINK_LINGER_MAX_MS : (int)left;
    }
    for (long i = 0; i < nt; i++) {
        s_worker_t *w = &svc->workers[i];
        s_hdr_t stop = {.type = H_STOP};
        if (zmq_send(w->pipe_io, &stop, sizeof stop, ZMQ_DONTWAIT) < 0)
            log_error("handler %ld: stop: %s", i, zmq_strerror(zmq_errno()));
        for (int b = 0; b < nb; b++) {
            if (w->links[b].sock &&
                zmq_setsockopt(w->links[b].sock, ZMQ_LINGER, &linger, sizeof linger) != 0)
                log_warn("zmq_setsockopt(ZMQ_LINGER): %s", zmq_strerror(zmq_errno()));
            mdp_sock_close(&w->links[b].sock);
        }
    }
    free(items);
    return ret;
}

static void *s_io_main(void *arg) {
    s_svc_t *svc = arg;
    atomic_store(&svc->io_rc, s_io_run(svc));
    atomic_store(&svc->io_exited, true);
    return NULL;
}

/* ---------------------------------------------------------------- the tick thread */

/* clk's now + ms. */
static void s_abs_after(clockid_t clk, struct timespec *ts, int64_t ms) {
    if (clock_gettime(clk, ts) != 0)
        *ts = (struct timespec){0, 0}; /* cannot fail for our clocks; wait 0 if it did */
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *s_tick_main(void *arg) {
    s_svc_t *svc = arg;
    int64_t next = util_mono_ms() + svc->def->tick_ms;
    if (pthread_mutex_lock(&svc->mu) != 0)
        return NULL;
    while (!svc_stopping()) {
        int64_t left = next - util_mono_ms();
        if (left <= 0) {
            (void)pthread_mutex_unlock(&svc->mu);
            svc->def->tick(&svc->tick);
            next = util_mono_ms() + svc->def->tick_ms;
            if (pthread_mutex_lock(&svc->mu) != 0)
                return NULL;
            continue;
        }
        struct timespec ts;
        s_abs_after(CLOCK_MONOTONIC, &ts, left);
        int rc = pthread_cond_timedwait(&svc->cv, &svc->mu, &ts);
        if (rc != 0 && rc != ETIMEDOUT && rc != EINTR) {
            log_error("pthread_cond_timedwait: %s", strerror(rc));
            break;
        }
    }
    (void)pthread_mutex_unlock(&svc->mu);
    return NULL;
}

/* ---------------------------------------------------------------- main */

static const char s_runtime_usage[] =
    "Runtime environment:\n"
    "  EXTRANET_BROKER      comma list of broker MDP endpoints (tcp://127.0.0.1:5555)\n"
    "  EXTRANET_EVENTS_PUB  comma list of broker XSUB endpoints (tcp://127.0.0.1:5556)\n"
    "  EXTRANET_PG          libpq conninfo (services with a database)\n"
    "  EXTRANET_PG_MIGRATE  conninfo for the migrations only (default: EXTRANET_PG), so the\n"
    "                       service can run as a role that does not own its tables\n"
    "  EXTRANET_REDIS       host:port or redis://host:port (127.0.0.1:6379)\n"
    "  EXTRANET_THREADS     handler threads, 1..256 (4)\n"
    "  EXTRANET_DRAIN_MS    how long SIGTERM waits for requests in flight (10000)\n"
    "  EXTRANET_LOG         debug|info|warn|error (info)\n";

static int s_config(s_svc_t *svc) {
    svc->broker_list = cfg_str("EXTRANET_BROKER", "tcp://127.0.0.1:5555");
    svc->events_pub = cfg_str("EXTRANET_EVENTS_PUB", "tcp://127.0.0.1:5556");
    svc->pg_conninfo = cfg_str("EXTRANET_PG", "");
    svc->pg_migrate_conninfo = cfg_str("EXTRANET_PG_MIGRATE", svc->pg_conninfo);
    svc->redis_url = cfg_str("EXTRANET_REDIS", "127.0.0.1:6379");
    if (cfg_long("EXTRANET_THREADS", 4, 1, THREADS_MAX, &svc->nthreads) != 0 ||
        cfg_long("EXTRANET_DRAIN_MS", 10000, 0, 3600000, &svc->drain_ms) != 0)
        return -1;
    svc->nbrokers = util_split_list(svc->broker_list, svc->brokers, MDP_MAX_BROKERS);
    if (svc->nbrokers <= 0) {
        svc->nbrokers = 0;
        log_error("EXTRANET_BROKER: no usable endpoint (at most %d)", MDP_MAX_BROKERS);
        return -1;
    }
    return 0;
}

/* Makes an inproc PAIR pipe; 0 or -1 (logged). */
static int s_pipe(void *zctx, const char *name, void **ret_a, void **ret_b) {
    *ret_a = mdp_sock_new(zctx, ZMQ_PAIR, 0);
    *ret_b = mdp_sock_new(zctx, ZMQ_PAIR, 0);
    if (!*ret_a || !*ret_b || zmq_bind(*ret_a, name) != 0 || zmq_connect(*ret_b, name) != 0) {
        log_error("pipe %s: %s", name, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static int s_setup(s_svc_t *svc) {
    const svc_def_t *def = svc->def;
    svc->zctx = zmq_ctx_new();
    if (!svc->zctx) {
        log_error("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    /* Each handler thread holds a pipe pair, a DEALER per broker for MDP and for rpc, a PUB. */
    int maxsock = (int)(svc->nthreads + 2) * (4 + 2 * svc->nbrokers) + 64;
    if (maxsock > ZMQ_MAX_SOCKETS_DFLT && zmq_ctx_set(svc->zctx, ZMQ_MAX_SOCKETS, maxsock) != 0) {
        log_error("zmq_ctx_set: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    for (int b = 0; b < svc->nbrokers; b++) {
        svc->link_ctx[b] = zmq_ctx_new();
        if (!svc->link_ctx[b]) {
            log_error("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
            return -1;
        }
        int links = (int)svc->nthreads + 16;
        if (links > ZMQ_MAX_SOCKETS_DFLT &&
            zmq_ctx_set(svc->link_ctx[b], ZMQ_MAX_SOCKETS, links) != 0) {
            log_error("zmq_ctx_set: %s", zmq_strerror(zmq_errno()));
            return -1;
        }
    }
    if (def->start) {
        svc_thread_t tmp;
        int rc = s_thread_open(svc, &tmp, -1, false);
        if (rc == 0 && def->start(&tmp) != 0) {
            log_error("start failed");
            rc = -1;
        }
        s_thread_close(svc, &tmp, false);
        if (rc != 0)
            return -1;
    }
    if (s_pipe(svc->zctx, "inproc://svc-ctl", &svc->ctl_io, &svc->ctl_main) != 0)
        return -1;
    svc->workers = calloc((size_t)svc->nthreads, sizeof *svc->workers);
    if (!svc->workers) {
        log_error("out of memory");
        return -1;
    }
    for (long i = 0; i < svc->nthreads; i++) {
        s_worker_t *w = &svc->workers[i];
        w->svc = svc;
        char name[64];
        snprintf(name, sizeof name, "inproc://svc-w%ld", i);
        if (s_pipe(svc->zctx, name, &w->pipe_io, &w->pipe_h) != 0)
            return -1;
        w->arena = arena_new(ARENA_LIMIT);
        if (!w->arena) {
            log_error("out of memory");
            return -1;
        }
        if (s_thread_open(svc, &w->t, (int)i, true) != 0) {
            /* thread_init did not run or failed: nothing for thread_fini to undo */
            s_thread_close(svc, &w->t, false);
            return -1;
        }
        w->opened = true;
    }
    if (def->tick && def->tick_ms > 0) {
        if (s_thread_open(svc, &svc->tick, -1, true) != 0) {
            s_thread_close(svc, &svc->tick, false);
            return -1;
        }
        svc->tick_opened = true;
    }
    return 0;
}

static int s_start_threads(s_svc_t *svc) {
    int rc;
    for (long i = 0; i < svc->nthreads; i++) {
        s_worker_t *w = &svc->workers[i];
        if ((rc = pthread_create(&w->tid, NULL, s_handler_main, w)) != 0) {
            log_error("pthread_create: %s", strerror(rc));
            return -1;
        }
        w->running = true;
    }
    if ((rc = pthread_create(&svc->io_tid, NULL, s_io_main, svc)) != 0) {
        log_error("pthread_create: %s", strerror(rc));
        return -1;
    }
    svc->io_running = true;
    if (svc->tick_opened) {
        if ((rc = pthread_create(&svc->tick_tid, NULL, s_tick_main, svc)) != 0) {
            log_error("pthread_create: %s", strerror(rc));
            return -1;
        }
        svc->tick_running = true;
    }
    return 0;
}

/* Waits for SIGTERM/SIGINT (blocked in every thread, taken here synchronously: no work in a
 * signal handler) or for the I/O thread to die. Returns 0 on a signal, -1 otherwise. */
static int s_wait_signal(s_svc_t *svc, const sigset_t *set) {
    for (;;) {
        struct timespec ts = {0, 200 * 1000000L};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("signal %d: draining", sig);
            return 0;
        }
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            log_error("sigtimedwait: %s", strerror(errno));
            return -1;
        }
        if (atomic_load(&svc->io_exited)) {
            log_error("I/O thread stopped; shutting down");
            return -1;
        }
    }
}

/* Stops and joins every thread. Returns false when a handler could not be joined (it is
 * stuck past the drain); its resources and the zmq context are then left to process exit. */
static bool s_stop_threads(s_svc_t *svc) {
    /* The tick thread's work (a tick may wait seconds on an rpc_call) is not drained by the
     * I/O thread: it gets the whole drain time, counted from now, plus the grace. */
    struct timespec tick_until; /* CLOCK_REALTIME: pthread_timedjoin_np's clock */
    s_abs_after(CLOCK_REALTIME, &tick_until, svc->drain_ms + JOIN_GRACE_MS);
    atomic_store(&s_stop, true);
    if (svc->cv_ready && pthread_mutex_lock(&svc->mu) == 0) {
        (void)pthread_cond_broadcast(&svc->cv);
        (void)pthread_mutex_unlock(&svc->mu);
    }
    /* The I/O thread drains first (the tick thread may be inside a long call meanwhile);
     * the handlers then get JOIN_GRACE_MS, the tick thread until tick_until. */
    int rc;
    if (svc->io_running) {
        if (!atomic_load(&svc->io_exited) && zmq_send(svc->ctl_main, "stop", 4, 0) < 0)
            log_error("stop I/O thread: %s", zmq_strerror(zmq_errno()));
        if ((rc = pthread_join(svc->io_tid, NULL)) != 0)
            log_error("pthread_join: %s", strerror(rc));
        svc->io_running = false;
    } else if (svc->workers) {
        /* The I/O thread never ran: tell the handlers ourselves. */
        for (long i = 0; i < svc->nthreads; i++) {
            s_hdr_t stop = {.type = H_STOP};
            if (svc->workers[i].pipe_io &&
                zmq_send(svc->workers[i].pipe_io, &stop, sizeof stop, ZMQ_DONTWAIT) < 0)
                log_error("stop handler: %s", zmq_strerror(zmq_errno()));
        }
    }
    bool all = true;
    struct timespec until;
    s_abs_after(CLOCK_REALTIME, &until, JOIN_GRACE_MS);
    if (svc->tick_running) {
        rc = pthread_timedjoin_np(svc->tick_tid, NULL, &tick_until);
        if (rc == 0) {
            svc->tick_running = false;
        } else {
            log_error("tick thread still busy after the drain");
            all = false;
        }
    }
    for (long i = 0; svc->workers && i < svc->nthreads; i++) {
        s_worker_t *w = &svc->workers[i];
        if (!w->running)
            continue;
        rc = pthread_timedjoin_np(w->tid, NULL, &until);
        if (rc == 0) {
            w->running = false;
        } else {
            log_error("handler %ld still busy after the drain", i);
            all = false;
        }
    }
    return all;
}

static void s_teardown(s_svc_t *svc) {
    for (long i = 0; svc->workers && i < svc->nthreads; i++) {
        s_worker_t *w = &svc->workers[i];
        if (w->opened)
            s_thread_close(svc, &w->t, true);
        arena_destroy(&w->arena);
        mdp_sock_close(&w->pipe_io);
        mdp_sock_close(&w->pipe_h);
    }
    free(svc->workers);
    svc->workers = NULL;
    if (svc->tick_opened)
        s_thread_close(svc, &svc->tick, true);
    mdp_sock_close(&svc->ctl_io);
    mdp_sock_close(&svc->ctl_main);
    if (svc->zctx)
        mdp_ctx_term(svc->zctx);
    svc->zctx = NULL;
    /* The link sockets were closed by the I/O thread, which has been joined. */
    for (int b = 0; b < MDP_MAX_BROKERS; b++) {
        if (svc->link_ctx[b])
            mdp_ctx_term(svc->link_ctx[b]);
        svc->link_ctx[b] = NULL;
    }
}

int svc_main(const svc_def_t *def, int argc, char **argv) {
    char usage[4096];
    snprintf(usage, sizeof usage, "%s\n%s", def->usage ? def->usage : "", s_runtime_usage);
    int arc = cfg_handle_args(argc, argv, def->name, usage);
    if (arc != 0)
        return arc > 0 ? 0 : 2;
    log_init(def->name);

    /* Static: a handler stuck past the drain still reaches its state after we return. */
    static s_svc_t svc;
    svc = (s_svc_t){.def = def};
    int ret = 1;
    sigset_t set;
    if (s_config(&svc) != 0)
        goto done;
    if (sodium_init() < 0) {
        log_error("sodium_init failed");
        goto done;
    }
    if (def->schema && def->migrations &&
        pg_migrate(svc.pg_migrate_conninfo, def->schema, def->migrations) != 0)
        goto done;
    /* Block the stop signals before any thread exists (ZeroMQ's own included), so only
     * s_wait_signal ever takes them. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (rc != 0) {
        log_error("pthread_sigmask: %s", strerror(rc));
        goto done;
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        log_error("signal: %s", strerror(errno));
        goto done;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&svc.cv, &ca) != 0 || pthread_mutex_init(&svc.mu, NULL) != 0) {
        log_error("pthread cond/mutex init failed");
        goto done;
    }
    (void)pthread_condattr_destroy(&ca);
    svc.cv_ready = true;
    bool joined = true;
    if (s_setup(&svc) == 0 && s_start_threads(&svc) == 0) {
        log_info("serving \"%s\" with %ld threads via %s", def->name, svc.nthreads,
                 svc.broker_list);
        ret = s_wait_signal(&svc, &set) == 0 ? 0 : 1;
    }
    joined = s_stop_threads(&svc);
    if (atomic_load(&svc.io_rc) != 0)
        ret = 1;
    if (!joined) {
        ret = 1;
        goto done_no_free;
    }
    s_teardown(&svc);
    log_info("stopped");
done:
    for (int i = 0; i < svc.nbrokers; i++)
        free(svc.brokers[i]);
    if (svc.cv_ready) {
        (void)pthread_cond_destroy(&svc.cv);
        (void)pthread_mutex_destroy(&svc.mu);
    }
    return ret;
done_no_free:
    log_error("exiting with handlers still running");
    return ret;
}
