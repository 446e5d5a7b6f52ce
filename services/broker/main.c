/* The broker process: environment -> config -> broker_new -> poll loop until SIGTERM/SIGINT ->
 * clean shutdown (DISCONNECT to every worker). All the work is in broker.c. */
#include "broker.h"

#include "extranet/cfg.h"
#include "extranet/log.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static const char s_usage[] =
    "The Majordomo (ZeroMQ RFC 7/MDP + 8/MMI) broker and the event forwarder.\n"
    "\n"
    "Environment:\n"
    "  EXTRANET_BROKER_BIND      ROUTER endpoints for clients and workers, comma-separated\n"
    "                            (tcp://*:5555)\n"
    "  EXTRANET_EVENTS_BIND      XPUB endpoints subscribers connect to (tcp://*:5557)\n"
    "  EXTRANET_EVENTS_PUB_BIND  XSUB endpoints publishers connect to (tcp://*:5556)\n"
    "  EXTRANET_QUEUE_MS         how long a request waits for a worker of its service before\n"
    "                            it is dropped, 0..3600000 (5000)\n"
    "  EXTRANET_QUEUE_MAX        requests queued per service; beyond it the oldest is dropped,\n"
    "                            1..1000000 (10000)\n"
    "  EXTRANET_QUEUE_BYTES      body bytes queued in all services together; beyond it the\n"
    "                            service's oldest go first, else the new request is refused,\n"
    "                            1..1099511627776 (268435456 = 256 MiB)\n"
    "  EXTRANET_LOG              debug|info|warn|error (info)\n";

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

int main(int argc, char **argv) {
    int arg = cfg_handle_args(argc, argv, "broker", s_usage);
    if (arg != 0)
        return arg > 0 ? 0 : 2;
    log_init("broker");

    broker_cfg_t cfg = {
        .mdp_bind = cfg_str("EXTRANET_BROKER_BIND", "tcp://*:5555"),
        .events_bind = cfg_str("EXTRANET_EVENTS_BIND", "tcp://*:5557"),
        .events_pub_bind = cfg_str("EXTRANET_EVENTS_PUB_BIND", "tcp://*:5556"),
    };
    if (cfg_long("EXTRANET_QUEUE_MS", 5000, 0, 3600000, &cfg.queue_ms) < 0 ||
        cfg_long("EXTRANET_QUEUE_MAX", 10000, 1, 1000000, &cfg.queue_max) < 0 ||
        cfg_long("EXTRANET_QUEUE_BYTES", 256L * 1024 * 1024, 1, 1L << 40, &cfg.queue_bytes) < 0)
        return 2;

    /* No SA_RESTART: zmq_poll returns EINTR at once and the loop sees the flag. libzmq's own
     * threads block every signal, so the signal lands on this thread. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
        log_error("sigaction: %s", strerror(errno));
        return 1;
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        log_error("signal(SIGPIPE): %s", strerror(errno));
        return 1;
    }

    void *zctx = zmq_ctx_new();
    if (!zctx) {
        log_error("zmq_ctx_new: %s", zmq_strerror(errno));
        return 1;
    }
    int status = 1;
    broker_t *broker = broker_new(zctx, &cfg);
    if (broker) {
        log_info("broker %s running (queue %ld ms, %ld per service, %ld bytes in all)",
                 EXTRANET_VERSION, cfg.queue_ms, cfg.queue_max, cfg.queue_bytes);
        status = broker_run(broker, &s_stop) == 0 ? 0 : 1;
        broker_destroy(&broker);
    }
    int trc;
    while ((trc = zmq_ctx_term(zctx)) < 0 && errno == EINTR)
        ;
    if (trc < 0)
        log_error("zmq_ctx_term: %s", zmq_strerror(errno));
    log_info("exit %d", status);
    return status;
}
