/* Unit tests of events.c over inproc sockets standing in for two brokers' forwarders: what
 * ev_publish puts on the wire, topic-prefix filtering, de-duplication by event_id (the copy from
 * the second broker is skipped; an id evicted from the ring is new again), malformed drops. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four headers it needs */

#include "extranet/events.h"
#include "extranet/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *zctx;
    void *pub[2]; /* stand-ins for two brokers' XPUB sides */
    ev_sub_t *sub;
} fx_t;

static int s_n;

static void s_send2(void *sock, const char *topic, const void *body, size_t len) {
    assert_int_equal(zmq_send(sock, topic, strlen(topic), ZMQ_SNDMORE), (int)strlen(topic));
    assert_int_equal(zmq_send(sock, body, len, 0), (int)len);
}

static size_t s_event(const char *id, const char *topic, uint8_t *buf) {
    Extranet__Event ev = EXTRANET__EVENT__INIT;
    ev.event_id = (char *)id;
    ev.topic = (char *)topic;
    ev.time_ms = util_now_ms();
    return extranet__event__pack(&ev, buf);
}

static int setup(void **state) {
    fx_t *fx = calloc(1, sizeof *fx);
    fx->zctx = zmq_ctx_new();
    char eps[2][64], list[140];
    for (int i = 0; i < 2; i++) {
        fx->pub[i] = zmq_socket(fx->zctx, ZMQ_PUB);
        snprintf(eps[i], sizeof eps[i], "inproc://ev-test-%d-%d", s_n, i);
        assert_int_equal(zmq_bind(fx->pub[i], eps[i]), 0);
    }
    s_n++;
    snprintf(list, sizeof list, "%s,%s", eps[0], eps[1]);
    const char *topics[] = {"test.", "other.one", NULL};
    fx->sub = ev_sub_new(fx->zctx, list, topics);
    assert_non_null(fx->sub);
    /* Subscriptions travel asynchronously: publish fresh warm-up events on both until one
     * arrives through each. */
    for (int i = 0; i < 2; i++) {
        bool got = false;
        for (int k = 0; k < 500 && !got; k++) {
            char id[37];
            uint8_t buf[256];
            util_uuid_v4(id);
            s_send2(fx->pub[i], "test.warmup", buf, s_event(id, "test.warmup", buf));
            Extranet__Event *ev = NULL;
            if (ev_sub_recv(fx->sub, &ev, 10) == 0) {
                got = true;
                extranet__event__free_unpacked(ev, NULL);
            }
        }
        assert_true(got);
    }
    /* Late warm-up copies may still be in flight: drain them. */
    Extranet__Event *ev = NULL;
    while (ev_sub_recv(fx->sub, &ev, 50) == 0)
        extranet__event__free_unpacked(ev, NULL);
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fx_t *fx = *state;
    ev_sub_destroy(&fx->sub);
    assert_null(fx->sub);
    for (int i = 0; i < 2; i++)
        zmq_close(fx->pub[i]);
    zmq_ctx_term(fx->zctx);
    free(fx);
    return 0;
}

static void test_duplicate_from_second_broker_skipped(void **state) {
    fx_t *fx = *state;
    char id[37];
    util_uuid_v4(id);
    uint8_t buf[256];
    size_t n = s_event(id, "test.dup", buf);
    s_send2(fx->pub[0], "test.dup", buf, n);
    s_send2(fx->pub[1], "test.dup", buf, n);
    Extranet__Event *ev = NULL;
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
    assert_string_equal(ev->event_id, id);
    assert_string_equal(ev->topic, "test.dup");
    extranet__event__free_unpacked(ev, NULL);
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 200), -EAGAIN);
}

static void test_ring_evicts_old_ids(void **state) {
    fx_t *fx = *state;
    char first[37];
    util_uuid_v4(first);
    uint8_t buf[256];
    size_t n0 = s_event(first, "test.ring", buf);
    uint8_t firstbuf[256];
    memcpy(firstbuf, buf, n0);
    s_send2(fx->pub[0], "test.ring", firstbuf, n0);
    Extranet__Event *ev = NULL;
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
    extranet__event__free_unpacked(ev, NULL);
    /* 600 other events push it out of the 512-entry ring. */
    for (int k = 0; k < 600; k++) {
        char id[37];
        util_uuid_v4(id);
        s_send2(fx->pub[0], "test.ring", buf, s_event(id, "test.ring", buf));
        assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
        extranet__event__free_unpacked(ev, NULL);
    }
    s_send2(fx->pub[1], "test.ring", firstbuf, n0);
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
    assert_string_equal(ev->event_id, first);
    extranet__event__free_unpacked(ev, NULL);
}

static void test_topic_prefix_filter(void **state) {
    fx_t *fx = *state;
    char id[37];
    uint8_t buf[256];
    util_uuid_v4(id);
    s_send2(fx->pub[0], "unrelated.topic", buf, s_event(id, "unrelated.topic", buf));
    Extranet__Event *ev = NULL;
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 200), -EAGAIN);
    util_uuid_v4(id);
    s_send2(fx->pub[0], "other.one", buf, s_event(id, "other.one", buf));
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
    assert_string_equal(ev->topic, "other.one");
    extranet__event__free_unpacked(ev, NULL);
}

static void test_malformed_dropped(void **state) {
    fx_t *fx = *state;
    char id[37];
    uint8_t buf[256];
    Extranet__Event *ev = NULL;
    /* not protobuf */
    s_send2(fx->pub[0], "test.bad", "\xff\xff\xff", 3);
    /* topic frame and event topic disagree */
    util_uuid_v4(id);
    s_send2(fx->pub[0], "test.a", buf, s_event(id, "test.b", buf));
    /* event_id not a uuid */
    s_send2(fx->pub[0], "test.c", buf, s_event("not-a-uuid", "test.c", buf));
    /* three frames */
    util_uuid_v4(id);
    size_t n = s_event(id, "test.d", buf);
    zmq_send(fx->pub[0], "test.d", 6, ZMQ_SNDMORE);
    zmq_send(fx->pub[0], buf, n, ZMQ_SNDMORE);
    zmq_send(fx->pub[0], "x", 1, 0);
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 300), -EAGAIN);
    /* and a good one still gets through afterwards */
    util_uuid_v4(id);
    s_send2(fx->pub[1], "test.ok", buf, s_event(id, "test.ok", buf));
    assert_int_equal(ev_sub_recv(fx->sub, &ev, 1000), 0);
    assert_string_equal(ev->event_id, id);
    extranet__event__free_unpacked(ev, NULL);
}

static void test_publish_wire_format(void **state) {
    (void)state;
    void *zctx = zmq_ctx_new();
    void *sink[2];
    char list[140];
    char eps[2][64];
    for (int i = 0; i < 2; i++) {
        sink[i] = zmq_socket(zctx, ZMQ_SUB);
        assert_int_equal(zmq_setsockopt(sink[i], ZMQ_SUBSCRIBE, "", 0), 0);
        snprintf(eps[i], sizeof eps[i], "inproc://ev-sink-%d", i);
        assert_int_equal(zmq_bind(sink[i], eps[i]), 0);
    }
    snprintf(list, sizeof list, "%s,%s", eps[0], eps[1]);
    ev_pub_t *pub = ev_pub_new(zctx, list);
    assert_non_null(pub);
    Extranet__EchoRequest payload = EXTRANET__ECHO_REQUEST__INIT;
    payload.sleep_ms = 42;
    assert_int_equal(ev_publish(pub, "", &payload.base), -EINVAL);
    /* PUB drops until the subscription has arrived: publish until the first sink sees it. */
    int64_t t0 = util_now_ms();
    zmq_pollitem_t it = {.socket = sink[0], .events = ZMQ_POLLIN};
    bool got = false;
    for (int k = 0; k < 500 && !got; k++) {
        assert_int_equal(ev_publish(pub, "test.wire", &payload.base), 0);
        got = zmq_poll(&it, 1, 10) > 0;
    }
    assert_true(got);
    char topic[64];
    int tl = zmq_recv(sink[0], topic, sizeof topic, 0);
    assert_int_equal(tl, 9);
    assert_memory_equal(topic, "test.wire", 9);
    int more = 0;
    size_t ml = sizeof more;
    zmq_getsockopt(sink[0], ZMQ_RCVMORE, &more, &ml);
    assert_true(more);
    uint8_t buf[512];
    int bl = zmq_recv(sink[0], buf, sizeof buf, 0);
    assert_true(bl > 0 && bl < (int)sizeof buf);
    Extranet__Event *ev = extranet__event__unpack(NULL, (size_t)bl, buf);
    assert_non_null(ev);
    assert_true(util_uuid_valid(ev->event_id));
    assert_string_equal(ev->topic, "test.wire");
    assert_true(ev->time_ms >= t0 && ev->time_ms <= util_now_ms());
    Extranet__EchoRequest *p =
        extranet__echo_request__unpack(NULL, ev->payload.len, ev->payload.data);
    assert_non_null(p);
    assert_int_equal(p->sleep_ms, 42);
    extranet__echo_request__free_unpacked(p, NULL);
    extranet__event__free_unpacked(ev, NULL);
    /* No payload is fine too. */
    assert_int_equal(ev_publish(pub, "test.empty", NULL), 0);
    ev_pub_destroy(&pub);
    assert_null(pub);
    ev_pub_destroy(&pub);
    for (int i = 0; i < 2; i++)
        zmq_close(sink[i]);
    zmq_ctx_term(zctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_duplicate_from_second_broker_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ring_evicts_old_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topic_prefix_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_dropped, setup, teardown),
        cmocka_unit_test(test_publish_wire_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
