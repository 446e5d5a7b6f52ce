/* The gateway's event streams (sse.h): the registry of open streams, their content reader and
 * free callback (libmicrohttpd threads), and the event thread (subscriber + session re-checks).
 * One mutex guards the registry and every stream's buffer and flags. A stream's memory belongs
 * to libmicrohttpd's response once sse_open() returns: the free callback unlinks it under the
 * mutex, so the event thread only ever touches linked streams, and only under the mutex; the
 * re-check's blocking calls (Redis, identity) run without the mutex and find their stream again
 * by serial. */
#include "sse.h"
#include "auth.h"
#include "envelope.pb-c.h"
#include "extranet/events.h"
#include "extranet/iso.h"
#include "extranet/log.h"
#include "extranet/rds.h"
#include "extranet/rpc.h"
#include "extranet/util.h"
#include "identity.pb-c.h"
#include "membership.pb-c.h"
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CHECK_BATCH 64   /* re-checks per loop turn: events are never kept waiting long */
#define S_CHECK_MS    2000 /* deadline of one identity.Authenticate */

typedef struct sse_stream {
    struct MHD_Connection *conn;
    uint64_t serial;
    char user_id[40], session_id[40], token_sha256[65], client_ip[64];
    char *buf; /* pending bytes [off, len) */
    size_t off, len, cap;
    bool closed;    /* send what is buffered, then end */
    bool suspended; /* the reader suspended the connection: resume on new data or close */
    bool linked;    /* in the registry (a refused stream never was) */
    int64_t next_check_ms, next_ping_ms; /* monotonic */
    struct sse_stream *prev, *next;
} sse_stream_t;

static struct {
    pthread_mutex_t mu;
    sse_stream_t *head;
    long count, max;
    uint64_t serial;
    bool refusing; /* sse_close_all() ran */
    void *zctx;
    char *brokers, *events;
    pthread_t thread;
    bool started;
    bool stop; /* atomic */
} s = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* --- one stream (mutex held) -------------------------------------------------------------- */

static void s_wake(sse_stream_t *st) {
    if (st->suspended) {
        st->suspended = false;
        MHD_resume_connection(st->conn);
    }
}

static void s_close(sse_stream_t *st, const char *why) {
    if (!st->closed) {
        st->closed = true;
        log_debug("stream of %s closed: %s", st->user_id, why);
    }
    s_wake(st);
}

/* Appends text; a stream that cannot keep up is closed instead of growing without bound. */
static void s_append(sse_stream_t *st, const char *text) {
    size_t n = strlen(text);
    if (st->closed)
        return;
    if (st->off > 0 && st->off == st->len)
        st->off = st->len = 0;
    if (st->len + n > SSE_MAX_BUFFER) {
        s_close(st, "reader too slow");
        return;
    }
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 1024;
        while (cap < st->len + n)
            cap *= 2;
        char *b = realloc(st->buf, cap);
        if (!b) {
            s_close(st, "out of memory");
            return;
        }
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, text, n);
    st->len += n;
    s_wake(st);
}

/* "event: <name>\ndata: <json>\n\n" (json stolen). */
static void s_append_event(sse_stream_t *st, const char *name, json_t *data) {
    char *js = data ? json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(data);
    if (!js) {
        s_close(st, "out of memory");
        return;
    }
    size_t n = strlen(name) + strlen(js) + 32;
    char *line = malloc(n);
    if (!line) {
        free(js);
        s_close(st, "out of memory");
        return;
    }
    snprintf(line, n, "event: %s\ndata: %s\n\n", name, js);
    s_append(st, line);
    free(line);
    free(js);
}

/* --- libmicrohttpd callbacks (its threads) ------------------------------------------------ */

static ssize_t s_reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    sse_stream_t *st = cls;
    pthread_mutex_lock(&s.mu);
    ssize_t n;
    if (st->len > st->off) {
        size_t k = st->len - st->off < max ? st->len - st->off : max;
        memcpy(out, st->buf + st->off, k);
        st->off += k;
        n = (ssize_t)k;
    } else if (st->closed) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing to send: park the connection (no thread, no busy loop) until the event
         * thread resumes it. Under the mutex, so a wake-up cannot slip in between. */
        st->suspended = true;
        MHD_suspend_connection(st->conn);
        n = 0;
    }
    pthread_mutex_unlock(&s.mu);
    return n;
}

static void s_free(void *cls) {
    sse_stream_t *st = cls;
    pthread_mutex_lock(&s.mu);
    if (st->linked) {
        if (st->prev)
            st->prev->next = st->next;
        else
            s.head = st->next;
        if (st->next)
            st->next->prev = st->prev;
        s.count--;
    }
    pthread_mutex_unlock(&s.mu);
    free(st->buf);
    free(st);
}

struct MHD_Response *sse_open(const gw_req_t *req, bool *ret_full) {
    *ret_full = false;
    sse_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->conn = req->conn;
    snprintf(st->user_id, sizeof st->user_id, "%s", req->actor_user_id);
    snprintf(st->session_id, sizeof st->session_id, "%s", req->actor_session_id);
    snprintf(st->token_sha256, sizeof st->token_sha256, "%s", req->token_sha256);
    snprintf(st->client_ip, sizeof st->client_ip, "%s", req->client_ip);
    int64_t now = util_mono_ms();
    st->next_check_ms = now + SSE_RECHECK_MS;
    st->next_ping_ms = now + SSE_PING_MS;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, s_reader, st, s_free);
    if (!resp) {
        free(st);
        return NULL;
    }
    pthread_mutex_lock(&s.mu);
    if (s.refusing || !s.started || s.count >= s.max) {
        pthread_mutex_unlock(&s.mu);
        *ret_full = true;
        MHD_destroy_response(resp); /* frees st through s_free (not linked: nothing to undo) */
        return NULL;
    }
    st->serial = ++s.serial;
    st->linked = true;
    st->next = s.head;
    if (s.head)
        s.head->prev = st;
    s.head = st;
    s.count++;
    s_append_event(st, "ready", json_pack("{s:s}", "user_id", st->user_id));
    pthread_mutex_unlock(&s.mu);
    return resp;
}

long sse_count(void) {
    pthread_mutex_lock(&s.mu);
    long n = s.count;
    pthread_mutex_unlock(&s.mu);
    return n;
}

/* --- the event thread --------------------------------------------------------------------- */

static void s_on_membership(const Extranet__Event *ev) {
    Extranet__Membership__MembershipChanged *m =
        extranet__membership__membership_changed__unpack(NULL, ev->payload.len, ev->payload.data);
    if (!m) {
        log_warn("malformed membership.changed event dropped");
        return;
    }
    pthread_mutex_lock(&s.mu);
    /* Authorized at send time: only the user whose membership it is hears of it. */
    for (sse_stream_t *st = s.head; st; st = st->next)
        if (m->user_id && !strcmp(st->user_id, m->user_id))
            s_append_event(st, "membership",
                           json_pack("{s:s, s:s, s:s}", "group_id", m->group_id ? m->group_id : "",
                                     "role", m->role ? m->role : "", "reason",
                                     m->reason ? m->reason : ""));
    pthread_mutex_unlock(&s.mu);
    extranet__membership__membership_changed__free_unpacked(m, NULL);
}

static void s_on_revoked(const Extranet__Event *ev) {
    Extranet__Identity__SessionRevoked *r =
        extranet__identity__session_revoked__unpack(NULL, ev->payload.len, ev->payload.data);
    if (!r) {
        log_warn("malformed session.revoked event dropped");
        return;
    }
    pthread_mutex_lock(&s.mu);
    for (sse_stream_t *st = s.head; st; st = st->next) {
        bool hit = r->n_session_ids == 0 && r->user_id && !strcmp(st->user_id, r->user_id);
        for (size_t i = 0; !hit && i < r->n_session_ids; i++)
            hit = r->session_ids[i] && !strcmp(st->session_id, r->session_ids[i]);
        if (hit)
            s_close(st, "session revoked");
    }
    pthread_mutex_unlock(&s.mu);
    extranet__identity__session_revoked__free_unpacked(r, NULL);
}

static void s_drain_events(ev_sub_t *sub) {
    for (int k = 0; k < 1000; k++) {
        Extranet__Event *ev = NULL;
        if (ev_sub_recv(sub, &ev, 0) != 0)
            return;
        if (ev->topic && !strcmp(ev->topic, "membership.changed"))
            s_on_membership(ev);
        else if (ev->topic && !strcmp(ev->topic, "session.revoked"))
            s_on_revoked(ev);
        extranet__event__free_unpacked(ev, NULL);
    }
}

typedef struct {
    uint64_t serial;
    char token_sha256[65], user_id[40], session_id[40], client_ip[64];
} s_due_t;

typedef enum { S_CONFIRMED, S_REFUSED, S_UNKNOWN } s_verdict_t;

/* The session cache first, the way auth.c looks sessions up: identity deletes sess:{h} before
 * it answers a logout, revocation or deactivation, and the entry's valid_until_ms includes the
 * user's expires_at (R9). A cache hit also leaves the session's idle clock alone (only real
 * requests should keep a session alive, not an open tab). S_UNKNOWN: miss, stale entry, or
 * Redis unusable; identity decides. */
static s_verdict_t s_cache_check(const s_due_t *d) {
    int64_t started;
    rds_t *r = auth_redis_acquire(&started);
    if (!r)
        return S_UNKNOWN;
    iso_lookup_t l;
    int rc = iso_lookup(r, d->token_sha256, NULL, NULL, &l);
    auth_redis_release(rc == 0, started);
    if (rc != 0 || !l.session_found)
        return S_UNKNOWN;
    return !strcmp(l.session.user_id, d->user_id) && !strcmp(l.session.session_id, d->session_id) &&
                   !l.session.mfa_pending
               ? S_CONFIRMED
               : S_REFUSED;
}

/* identity.Authenticate: whether identity confirms the stream's session as the same, usable
 * one. *ret_unreachable is set when no answer came (identity down or slow). */
static bool s_identity_check(rpc_t *rpc, const s_due_t *d, bool *ret_unreachable) {
    Extranet__Actor actor = EXTRANET__ACTOR__INIT;
    actor.kind = EXTRANET__ACTOR_KIND__ANONYMOUS;
    actor.client_ip = (char *)d->client_ip;
    Extranet__Identity__AuthenticateRequest areq = EXTRANET__IDENTITY__AUTHENTICATE_REQUEST__INIT;
    areq.token_sha256 = (char *)d->token_sha256;
    ProtobufCMessage *rep = NULL;
    char err[128];
    int rc =
        rpc_call(rpc, "identity.Authenticate", &actor, NULL, util_now_ms() + S_CHECK_MS, &areq.base,
                 &extranet__identity__authenticate_reply__descriptor, &rep, err, sizeof err);
    *ret_unreachable = rc == -(1000 + EXTRANET__STATUS__UNAVAILABLE) ||
                       rc == -(1000 + EXTRANET__STATUS__DEADLINE_EXCEEDED);
    if (rc != 0)
        return false; /* revoked, expired, or identity unreachable: fail closed */
    const Extranet__Identity__AuthenticateReply *ar = (const void *)rep;
    bool ok = ar->user_id && !strcmp(ar->user_id, d->user_id) && ar->session_id &&
              !strcmp(ar->session_id, d->session_id) && !ar->mfa_pending &&
              ar->valid_until_ms > util_now_ms();
    protobuf_c_message_free_unpacked(rep, NULL);
    return ok;
}

/* Re-checks the streams whose turn came, and sends the pings that are due. Events are drained
 * between checks, so a session.revoked never waits behind a batch of re-checks. Once identity
 * gave no answer, the rest of the batch that the cache cannot confirm closes without asking
 * (fail closed), so an unreachable identity ends every stream within one re-check period
 * instead of one 2 s deadline per stream. */
static void s_recheck(rpc_t *rpc, ev_sub_t *sub) {
    s_due_t due[S_CHECK_BATCH];
    int n = 0;
    int64_t now = util_mono_ms();
    pthread_mutex_lock(&s.mu);
    for (sse_stream_t *st = s.head; st; st = st->next) {
        if (st->closed)
            continue;
        if (st->next_ping_ms <= now) {
            st->next_ping_ms = now + SSE_PING_MS;
            s_append(st, ": ping\n\n");
        }
        if (st->next_check_ms <= now && n < S_CHECK_BATCH) {
            st->next_check_ms = now + SSE_RECHECK_MS;
            s_due_t *d = &due[n++];
            d->serial = st->serial;
            memcpy(d->token_sha256, st->token_sha256, sizeof d->token_sha256);
            memcpy(d->user_id, st->user_id, sizeof d->user_id);
            memcpy(d->session_id, st->session_id, sizeof d->session_id);
            memcpy(d->client_ip, st->client_ip, sizeof d->client_ip);
        }
    }
    pthread_mutex_unlock(&s.mu);
    bool identity_down = false;
    for (int i = 0; i < n && !__atomic_load_n(&s.stop, __ATOMIC_RELAXED); i++) {
        s_drain_events(sub);
        s_verdict_t v = s_cache_check(&due[i]);
        if (v == S_CONFIRMED)
            continue;
        if (v == S_UNKNOWN && !identity_down) {
            bool unreachable = false;
            if (s_identity_check(rpc, &due[i], &unreachable))
                continue;
            identity_down = unreachable;
        }
        pthread_mutex_lock(&s.mu);
        for (sse_stream_t *st = s.head; st; st = st->next)
            if (st->serial == due[i].serial)
                s_close(st, "session no longer valid");
        pthread_mutex_unlock(&s.mu);
    }
}

static void *s_run(void *arg) {
    (void)arg;
    log_init("gateway");
    static const char *const topics[] = {"membership.changed", "session.revoked", NULL};
    ev_sub_t *sub = ev_sub_new(s.zctx, s.events, topics);
    rpc_t *rpc = rpc_new(s.zctx, s.brokers);
    if (!sub || !rpc) {
        /* Without events no stream could be kept honest: refuse them all (503). */
        log_error("streams disabled: cannot subscribe to %s or reach %s", s.events, s.brokers);
        pthread_mutex_lock(&s.mu);
        s.refusing = true;
        pthread_mutex_unlock(&s.mu);
        ev_sub_destroy(&sub);
        rpc_destroy(&rpc);
        return NULL;
    }
    while (!__atomic_load_n(&s.stop, __ATOMIC_RELAXED)) {
        zmq_pollitem_t items[8];
        int n = ev_sub_pollitems(sub, items, 8);
        int rc = zmq_poll(items, n, 500);
        if (rc < 0 && zmq_errno() != EINTR) {
            log_error("streams: zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (rc > 0)
            s_drain_events(sub);
        s_recheck(rpc, sub);
    }
    ev_sub_destroy(&sub);
    rpc_destroy(&rpc);
    return NULL;
}

int sse_init(void *zctx, const char *brokers, const char *events, long max_streams) {
    s.zctx = zctx;
    s.max = max_streams;
    s.brokers = strdup(brokers);
    s.events = strdup(events);
    if (!s.brokers || !s.events) {
        sse_fini();
        return -ENOMEM;
    }
    int err = pthread_create(&s.thread, NULL, s_run, NULL);
    if (err != 0) {
        log_error("streams: cannot start their thread: %s", strerror(err));
        sse_fini();
        return -err;
    }
    pthread_mutex_lock(&s.mu);
    s.started = true;
    pthread_mutex_unlock(&s.mu);
    return 0;
}

void sse_close_all(void) {
    pthread_mutex_lock(&s.mu);
    s.refusing = true;
    for (sse_stream_t *st = s.head; st; st = st->next)
        s_close(st, "shutting down");
    pthread_mutex_unlock(&s.mu);
}

void sse_fini(void) {
    bool started;
    pthread_mutex_lock(&s.mu);
    started = s.started;
    s.started = false;
    pthread_mutex_unlock(&s.mu);
    if (started) {
        __atomic_store_n(&s.stop, true, __ATOMIC_RELAXED);
        int err = pthread_join(s.thread, NULL);
        if (err != 0)
            log_error("streams: cannot join their thread: %s", strerror(err));
    }
    free(s.brokers);
    free(s.events);
    s.brokers = s.events = NULL;
}
