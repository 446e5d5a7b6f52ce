/* The dispatch table of the echo service: echo.Echo returns the data it got, after sleeping
 * sleep_ms (capped), with the pid and handler thread that served it, so tests can see load
 * spread over threads and processes. echo_tick publishes the same facts as an event. */
#include "extranet/log.h"
#include "extranet/svc.h"
#include <errno.h>
#include <time.h>
#include <unistd.h>

/* Longest sleep a caller may ask for; keeps a test typo from pinning a thread for long. */
#define ECHO_SLEEP_MAX_MS 30000

static void s_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void s_echo(svc_thread_t *t, svc_call_t *call) {
    const Extranet__EchoRequest *rq = (const Extranet__EchoRequest *)call->msg;
    if (rq->sleep_ms < 0) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "sleep_ms must not be negative");
        return;
    }
    s_sleep_ms(rq->sleep_ms > ECHO_SLEEP_MAX_MS ? ECHO_SLEEP_MAX_MS : rq->sleep_ms);
    Extranet__EchoReply rp = EXTRANET__ECHO_REPLY__INIT;
    rp.data = rq->data; /* borrowed from the request; packed before the arena is reset */
    rp.worker_pid = (int32_t)getpid();
    rp.worker_thread = t->index;
    svc_reply_ok(call, &rp.base);
}

/* Tick thread: one "echo.tick" event per tick, payload EchoReply{worker_pid, worker_thread -1}. */
void echo_tick(svc_thread_t *t) {
    Extranet__EchoReply rp = EXTRANET__ECHO_REPLY__INIT;
    rp.worker_pid = (int32_t)getpid();
    rp.worker_thread = t->index;
    int rc = ev_publish(t->events, "echo.tick", &rp.base);
    if (rc != 0)
        log_warn("publishing echo.tick failed (%d)", rc);
}

const svc_method_t echo_methods[] = {
    {"echo.Echo", s_echo, &extranet__echo_request__descriptor},
    {NULL, NULL, NULL},
};
