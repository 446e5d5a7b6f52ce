/* Unit tests of mdp_client.c and rpc.c against in-process fake brokers (ROUTER sockets on
 * tcp://127.0.0.1:*): exact MDPC01 framing, round-robin with a suspect broker tried last,
 * ZMQ_IMMEDIATE failover, rejection of malformed replies, and rpc_call's matching by
 * request_id, status mapping and deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four headers it needs */

#include "extranet/mdp.h"
#include "extranet/rpc.h"
#include "extranet/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Everything a test opens lives here, so teardown can close it even after a failed assertion
 * (zmq_ctx_term would otherwise wait forever for the test's sockets). */
typedef struct {
    void *zctx;
    void *router[2];
    char ep[2][64];
    mdp_client_t *c[2];
    rpc_t *rpc;
} fx_t;

static void *s_router(void *zctx, char *ret_ep) {
    void *r = zmq_socket(zctx, ZMQ_ROUTER);
    assert_non_null(r);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(r, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    size_t len = 64;
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ret_ep, &len), 0);
    return r;
}

static int setup(void **state) {
    fx_t *fx = calloc(1, sizeof *fx);
    fx->zctx = zmq_ctx_new();
    for (int i = 0; i < 2; i++)
        fx->router[i] = s_router(fx->zctx, fx->ep[i]);
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fx_t *fx = *state;
    mdp_client_destroy(&fx->c[0]);
    mdp_client_destroy(&fx->c[1]);
    rpc_destroy(&fx->rpc);
    for (int i = 0; i < 2; i++)
        zmq_close(fx->router[i]);
    zmq_ctx_term(fx->zctx);
    free(fx);
    return 0;
}

/* Receives one message on a router into frames; returns the frame count, 0 on timeout. */
static int s_recv_all(void *sock, zmq_msg_t *f, int max, int timeout_ms) {
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return 0;
    int n = 0;
    for (;;) {
        assert_true(n < max);
        zmq_msg_init(&f[n]);
        assert_true(zmq_msg_recv(&f[n], sock, 0) >= 0);
        int more = zmq_msg_more(&f[n]);
        n++;
        if (!more)
            return n;
    }
}

static void s_close_all(zmq_msg_t *f, int n) {
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static bool s_is(zmq_msg_t *m, const char *s) {
    return zmq_msg_size(m) == strlen(s) && memcmp(zmq_msg_data(m), s, strlen(s)) == 0;
}

/* Sends until a send succeeds and the message lands on some router; returns its index.
 * With ZMQ_IMMEDIATE a send fails until the TCP connection is up. */
static int s_send_landed(fx_t *fx, mdp_client_t *c, const char *body) {
    int64_t end = util_mono_ms() + 5000;
    while (util_mono_ms() < end) {
        if (mdp_client_send(c, "svc", body, strlen(body)) == 0) {
            for (int k = 0; k < 50; k++) {
                for (int i = 0; i < 2; i++) {
                    zmq_msg_t f[8];
                    int n = s_recv_all(fx->router[i], f, 8, 0);
                    if (n) {
                        s_close_all(f, n);
                        return i;
                    }
                }
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
            fail_msg("sent but never arrived");
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("no broker connection came up");
    return -1;
}

/* Both DEALERs connected: send until each router has seen one message. */
static mdp_client_t *s_client_both_up(fx_t *fx) {
    char list[160];
    snprintf(list, sizeof list, "%s,%s", fx->ep[0], fx->ep[1]);
    mdp_client_t *c = fx->c[0] = mdp_client_new(fx->zctx, list);
    assert_non_null(c);
    bool seen[2] = {false, false};
    for (int k = 0; k < 200 && !(seen[0] && seen[1]); k++)
        seen[s_send_landed(fx, c, "probe")] = true;
    assert_true(seen[0] && seen[1]);
    return c;
}

static void test_client_frames(void **state) {
    fx_t *fx = *state;
    mdp_client_t *c = fx->c[0] = mdp_client_new(fx->zctx, fx->ep[0]);
    assert_non_null(c);
    int64_t end = util_mono_ms() + 5000;
    while (mdp_client_send(c, "tasks", "\x00body", 5) == -EAGAIN && util_mono_ms() < end) {
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    zmq_msg_t f[8];
    int n = s_recv_all(fx->router[0], f, 8, 2000);
    assert_int_equal(n, 5); /* identity | "" | MDPC01 | service | body */
    assert_int_equal(zmq_msg_size(&f[1]), 0);
    assert_true(s_is(&f[2], "MDPC01"));
    assert_true(s_is(&f[3], "tasks"));
    assert_int_equal(zmq_msg_size(&f[4]), 5);
    assert_memory_equal(zmq_msg_data(&f[4]), "\x00body", 5);

    /* A reply in the same shape comes back as the body alone. */
    zmq_msg_send(&f[0], fx->router[0], ZMQ_SNDMORE);
    zmq_send(fx->router[0], "", 0, ZMQ_SNDMORE);
    zmq_send(fx->router[0], "MDPC01", 6, ZMQ_SNDMORE);
    zmq_send(fx->router[0], "tasks", 5, ZMQ_SNDMORE);
    zmq_send(fx->router[0], "answer", 6, 0);
    s_close_all(f, n);
    void *body = NULL;
    size_t len = 0;
    assert_int_equal(mdp_client_recv(c, &body, &len, 2000), 0);
    assert_int_equal(len, 6);
    assert_memory_equal(body, "answer", 6);
    free(body);
    assert_int_equal(mdp_client_recv(c, &body, &len, 50), -EAGAIN);
    mdp_client_destroy(&fx->c[0]);
    assert_null(fx->c[0]);
    mdp_client_destroy(&fx->c[0]); /* NULL-safe */
}

static void test_client_rejects_bad_args(void **state) {
    fx_t *fx = *state;
    mdp_client_t *c = fx->c[0] = mdp_client_new(fx->zctx, fx->ep[0]);
    assert_non_null(c);
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(mdp_client_send(c, "", "x", 1), -EINVAL);
    assert_int_equal(mdp_client_send(c, big, "x", 1), -EINVAL);
    assert_int_equal(mdp_client_send(c, "svc", NULL, 3), -EINVAL);
    mdp_client_destroy(&fx->c[0]);
    assert_null(mdp_client_new(fx->zctx, ""));
    assert_null(mdp_client_new(fx->zctx, "not-an-endpoint"));
}

static void test_client_malformed_replies(void **state) {
    fx_t *fx = *state;
    mdp_client_t *c = fx->c[0] = mdp_client_new(fx->zctx, fx->ep[0]);
    assert_non_null(c);
    assert_int_equal(s_send_landed(fx, c, "hello"), 0);
    /* Learn the client's identity from one more request. */
    assert_int_equal(mdp_client_send(c, "svc", "x", 1), 0);
    zmq_msg_t f[8];
    int n = s_recv_all(fx->router[0], f, 8, 2000);
    assert_int_equal(n, 5);
    size_t idlen = zmq_msg_size(&f[0]);
    uint8_t id[256];
    memcpy(id, zmq_msg_data(&f[0]), idlen);
    s_close_all(f, n);

    const char *bad[][5] = {
        {"", "MDPC02", "svc", "body", NULL},  /* wrong protocol */
        {"x", "MDPC01", "svc", "body", NULL}, /* no empty delimiter */
        {"", "MDPC01", "svc", NULL, NULL},    /* no body */
        {"", "MDPC01", "", "body", NULL},     /* empty service */
        {"", "MDPC01", "svc", "a", "b"},      /* two body frames */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int parts = 0;
        while (parts < 5 && bad[k][parts])
            parts++;
        zmq_send(fx->router[0], id, idlen, ZMQ_SNDMORE);
        for (int i = 0; i < parts; i++)
            zmq_send(fx->router[0], bad[k][i], strlen(bad[k][i]), i + 1 < parts ? ZMQ_SNDMORE : 0);
        void *body = NULL;
        size_t len = 0;
        assert_int_equal(mdp_client_recv(c, &body, &len, 2000), -EPROTO);
        assert_null(body);
    }
    mdp_client_destroy(&fx->c[0]);
}

static void test_client_round_robin_and_suspect(void **state) {
    fx_t *fx = *state;
    mdp_client_t *c = s_client_both_up(fx);
    int count[2] = {0, 0};
    for (int k = 0; k < 6; k++)
        count[s_send_landed(fx, c, "rr")]++;
    assert_int_equal(count[0], 3);
    assert_int_equal(count[1], 3);

    /* The broker used last missed a deadline: it is tried last, i.e. not at all while the
     * other one takes sends. */
    int last = s_send_landed(fx, c, "which");
    mdp_client_suspect_last(c);
    for (int k = 0; k < 6; k++)
        assert_int_equal(s_send_landed(fx, c, "avoid"), 1 - last);
    mdp_client_destroy(&fx->c[0]);
}

/* Many requests in flight: the broker to blame for a missed deadline is the one that took that
 * request, not the one that took the latest send (the gateway once blamed the latter). */
static void test_client_suspect_the_broker_of_the_request(void **state) {
    fx_t *fx = *state;
    mdp_client_t *c = s_client_both_up(fx);
    int first = s_send_landed(fx, c, "slow");
    assert_int_equal(mdp_client_last_broker(c), first);
    int second = s_send_landed(fx, c, "fast");
    assert_int_equal(second, 1 - first);
    assert_int_equal(mdp_client_last_broker(c), second);
    mdp_client_suspect(c, first); /* "slow" missed its deadline */
    for (int k = 0; k < 6; k++)
        assert_int_equal(s_send_landed(fx, c, "avoid"), second);
    mdp_client_suspect(c, -1); /* ignored */
    mdp_client_suspect(c, 7);
    mdp_client_destroy(&fx->c[0]);
}

static void test_client_dead_broker_fails_fast(void **state) {
    fx_t *fx = *state;
    /* A port nobody listens on (bound then closed); ZMQ_IMMEDIATE: nothing queues. */
    char ep[64];
    void *r = s_router(fx->zctx, ep);
    zmq_close(r);
    mdp_client_t *c = fx->c[0] = mdp_client_new(fx->zctx, ep);
    assert_non_null(c);
    assert_int_equal(mdp_client_send(c, "svc", "x", 1), -EAGAIN);
    /* With a live second broker the send fails over to it. */
    char list[160];
    snprintf(list, sizeof list, "%s,%s", ep, fx->ep[1]);
    mdp_client_t *c2 = fx->c[1] = mdp_client_new(fx->zctx, list);
    assert_non_null(c2);
    for (int k = 0; k < 4; k++)
        assert_int_equal(s_send_landed(fx, c2, "failover"), 1);
    mdp_client_destroy(&fx->c[0]);
    mdp_client_destroy(&fx->c[1]);
}

/* ------------------------------------------------------------------ rpc_call */

typedef struct {
    void *router;
    int mode; /* 0: stale then OK, 1: NOT_FOUND, 2: never answer, 3: OK after 400 ms */
    char method[64];
    int64_t deadline_ms;
    char client_ip[64];
    char data[64];
} fake_t;

static void s_reply(void *router, zmq_msg_t *id, const Extranet__Reply *rep) {
    uint8_t buf[1024];
    size_t n = extranet__reply__pack(rep, buf);
    zmq_send(router, zmq_msg_data(id), zmq_msg_size(id), ZMQ_SNDMORE);
    zmq_send(router, "", 0, ZMQ_SNDMORE);
    zmq_send(router, "MDPC01", 6, ZMQ_SNDMORE);
    zmq_send(router, "echo", 4, ZMQ_SNDMORE);
    zmq_send(router, buf, n, 0);
}

static void *s_fake_broker(void *arg) {
    fake_t *fk = arg;
    zmq_msg_t f[8];
    int n = s_recv_all(fk->router, f, 8, 5000);
    if (n != 5)
        return NULL;
    Extranet__Request *req =
        extranet__request__unpack(NULL, zmq_msg_size(&f[4]), zmq_msg_data(&f[4]));
    if (req) {
        snprintf(fk->method, sizeof fk->method, "%s", req->method);
        fk->deadline_ms = req->deadline_ms;
        if (req->actor)
            snprintf(fk->client_ip, sizeof fk->client_ip, "%s", req->actor->client_ip);
        Extranet__EchoRequest *er =
            extranet__echo_request__unpack(NULL, req->payload.len, req->payload.data);
        if (er) {
            snprintf(fk->data, sizeof fk->data, "%.*s", (int)er->data.len, er->data.data);
            extranet__echo_request__free_unpacked(er, NULL);
        }
        Extranet__Reply rep = EXTRANET__REPLY__INIT;
        if (fk->mode == 3) {
            struct timespec ts = {0, 400 * 1000000L};
            nanosleep(&ts, NULL);
            rep.request_id = req->request_id;
            rep.status = EXTRANET__STATUS__OK;
            s_reply(fk->router, &f[0], &rep);
        } else if (fk->mode == 0) {
            rep.request_id = "00000000-0000-4000-8000-000000000000"; /* stale */
            rep.status = EXTRANET__STATUS__CONFLICT;
            s_reply(fk->router, &f[0], &rep);
            Extranet__EchoReply er2 = EXTRANET__ECHO_REPLY__INIT;
            er2.data.data = (uint8_t *)"pong";
            er2.data.len = 4;
            er2.worker_thread = 7;
            uint8_t pbuf[64];
            rep.request_id = req->request_id;
            rep.status = EXTRANET__STATUS__OK;
            rep.payload.len = extranet__echo_reply__pack(&er2, pbuf);
            rep.payload.data = pbuf;
            s_reply(fk->router, &f[0], &rep);
        } else if (fk->mode == 1) {
            rep.request_id = req->request_id;
            rep.status = EXTRANET__STATUS__NOT_FOUND;
            rep.message = "no such thing";
            s_reply(fk->router, &f[0], &rep);
        }
        extranet__request__free_unpacked(req, NULL);
    }
    s_close_all(f, n);
    return NULL;
}

static int s_rpc_id(fx_t *fx, rpc_t *rpc, int mode, int64_t timeout_ms, fake_t *fk, const char *rid,
                    ProtobufCMessage **ret, char *err, size_t errlen) {
    memset(fk, 0, sizeof *fk);
    fk->router = fx->router[0];
    fk->mode = mode;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_fake_broker, fk), 0);
    Extranet__Actor actor = EXTRANET__ACTOR__INIT;
    actor.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    actor.client_ip = "192.0.2.7";
    Extranet__EchoRequest er = EXTRANET__ECHO_REQUEST__INIT;
    er.data.data = (uint8_t *)"ping";
    er.data.len = 4;
    int64_t deadline = util_now_ms() + timeout_ms;
    int rc = rpc_call(rpc, "echo.Echo", &actor, rid, deadline, &er.base,
                      &extranet__echo_reply__descriptor, ret, err, errlen);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (mode != 2 || fk->method[0]) {
        assert_string_equal(fk->method, "echo.Echo");
        assert_true(fk->deadline_ms == deadline);
        assert_string_equal(fk->client_ip, "192.0.2.7");
        assert_string_equal(fk->data, "ping");
    }
    return rc;
}

static int s_rpc(fx_t *fx, rpc_t *rpc, int mode, int64_t timeout_ms, fake_t *fk,
                 ProtobufCMessage **ret, char *err, size_t errlen) {
    return s_rpc_id(fx, rpc, mode, timeout_ms, fk, NULL, ret, err, errlen);
}

/* A caller reusing its request_id for two nested calls must not get the first call's late
 * answer as the second's. */
static void test_rpc_call_late_reply_not_matched_later(void **state) {
    fx_t *fx = *state;
    rpc_t *rpc = fx->rpc = rpc_new(fx->zctx, fx->ep[0]);
    fake_t fk;
    ProtobufCMessage *out = NULL;
    char err[64];
    const char *rid = "6f1c1f5e-2f5e-4a59-9a55-0d1f4c1b2a3e";
    assert_int_equal(s_rpc_id(fx, rpc, 3, 200, &fk, rid, &out, err, sizeof err),
                     ERR_STATUS(EXTRANET__STATUS__UNAVAILABLE));
    struct timespec ts = {0, 200 * 1000000L}; /* the late OK is now in our queue */
    nanosleep(&ts, NULL);
    assert_int_equal(s_rpc_id(fx, rpc, 1, 2000, &fk, rid, &out, err, sizeof err),
                     ERR_STATUS(EXTRANET__STATUS__NOT_FOUND));
    assert_null(out);
    rpc_destroy(&fx->rpc);
}

static void test_rpc_call_ok_drops_stale(void **state) {
    fx_t *fx = *state;
    rpc_t *rpc = fx->rpc = rpc_new(fx->zctx, fx->ep[0]);
    assert_non_null(rpc);
    fake_t fk;
    ProtobufCMessage *out = NULL;
    char err[64] = "junk";
    assert_int_equal(s_rpc(fx, rpc, 0, 5000, &fk, &out, err, sizeof err), 0);
    assert_non_null(out);
    Extranet__EchoReply *er = (Extranet__EchoReply *)out;
    assert_int_equal(er->data.len, 4);
    assert_memory_equal(er->data.data, "pong", 4);
    assert_int_equal(er->worker_thread, 7);
    assert_string_equal(err, "");
    protobuf_c_message_free_unpacked(out, NULL);
    rpc_destroy(&fx->rpc);
    assert_null(fx->rpc);
}

static void test_rpc_call_maps_status(void **state) {
    fx_t *fx = *state;
    rpc_t *rpc = fx->rpc = rpc_new(fx->zctx, fx->ep[0]);
    fake_t fk;
    ProtobufCMessage *out = (ProtobufCMessage *)&fk; /* must be reset to NULL */
    char err[64];
    int rc = s_rpc(fx, rpc, 1, 5000, &fk, &out, err, sizeof err);
    assert_int_equal(rc, ERR_STATUS(EXTRANET__STATUS__NOT_FOUND));
    assert_true(ERR_IS_STATUS(rc));
    assert_int_equal(ERR_TO_STATUS(rc), EXTRANET__STATUS__NOT_FOUND);
    assert_string_equal(err, "no such thing");
    assert_null(out);
    rpc_destroy(&fx->rpc);
}

static void test_rpc_call_deadline_unavailable(void **state) {
    fx_t *fx = *state;
    rpc_t *rpc = fx->rpc = rpc_new(fx->zctx, fx->ep[0]);
    fake_t fk;
    ProtobufCMessage *out = NULL;
    char err[64];
    int64_t t0 = util_mono_ms();
    int rc = s_rpc(fx, rpc, 2, 300, &fk, &out, err, sizeof err);
    int64_t took = util_mono_ms() - t0;
    assert_int_equal(rc, ERR_STATUS(EXTRANET__STATUS__UNAVAILABLE));
    assert_true(took >= 290 && took < 2000);
    assert_null(out);
    rpc_destroy(&fx->rpc);
}

static void test_rpc_call_bad_input(void **state) {
    fx_t *fx = *state;
    rpc_t *rpc = fx->rpc = rpc_new(fx->zctx, fx->ep[0]);
    char err[64];
    int64_t dl = util_now_ms() + 1000;
    assert_int_equal(rpc_call(rpc, "nodot", NULL, NULL, dl, NULL, NULL, NULL, err, sizeof err),
                     ERR_STATUS(EXTRANET__STATUS__INVALID));
    assert_int_equal(rpc_call(rpc, ".X", NULL, NULL, dl, NULL, NULL, NULL, err, sizeof err),
                     ERR_STATUS(EXTRANET__STATUS__INVALID));
    assert_int_equal(rpc_call(rpc, "a.", NULL, NULL, dl, NULL, NULL, NULL, NULL, 0),
                     ERR_STATUS(EXTRANET__STATUS__INVALID));
    assert_int_equal(
        rpc_call(rpc, "a.B", NULL, NULL, util_now_ms() - 1, NULL, NULL, NULL, err, sizeof err),
        ERR_STATUS(EXTRANET__STATUS__DEADLINE_EXCEEDED));
    rpc_destroy(&fx->rpc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_rejects_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_malformed_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_round_robin_and_suspect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_suspect_the_broker_of_the_request, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_client_dead_broker_fails_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_call_ok_drops_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_call_maps_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_call_deadline_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_call_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rpc_call_late_reply_not_matched_later, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
