/* gateway: env -> config -> route check -> loop thread + libmicrohttpd -> wait for SIGTERM,
 * then stop accepting, answer every suspended request (503), drain, stop, free. */
#include "auth.h"
#include "clientip.h"
#include "cors.h"
#include "export.h"
#include "extranet/cfg.h"
#include "extranet/log.h"
#include "extranet/mdp.h"
#include "http.h"
#include "loop.h"
#include "metrics.h"
#include "ratelimit.h"
#include "routes.h"
#include "sse.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <zmq.h>

static const char *s_usage =
    "gateway: the HTTP/JSON API (libmicrohttpd) in front of the broker.\n"
    "  --routes                       print the route table as JSON lines and exit\n"
    "Environment:\n"
    "  EXTRANET_HTTP_ADDR             listen address host:port (127.0.0.1:8080)\n"
    "  EXTRANET_BROKER                broker MDP endpoints, comma list (tcp://127.0.0.1:5555)\n"
    "  EXTRANET_REDIS                 Redis for the session cache and rate limits "
    "(127.0.0.1:6379)\n"
    "  EXTRANET_HTTP_THREADS          libmicrohttpd thread pool size (2)\n"
    "  EXTRANET_HTTP_MAX_CONNECTIONS  open connections at most (10000)\n"
    "  EXTRANET_HTTP_TIMEOUT_S        idle / slow client timeout in seconds (15)\n"
    "  EXTRANET_HTTP_MEMORY_LIMIT     per-connection memory of libmicrohttpd, bytes (32768)\n"
    "  EXTRANET_MAX_HEADER            request line + headers, bytes (8192; more: 431)\n"
    "  EXTRANET_MAX_BODY              request body, bytes (1048576; more: 413)\n"
    "  EXTRANET_DEADLINE_MS           per-request deadline (10000; then 504)\n"
    "  EXTRANET_TRUSTED_PROXIES       peers whose X-Forwarded-For counts (addresses/CIDRs)\n"
    "  EXTRANET_CORS_ORIGINS          allowed browser origins, comma list (none)\n"
    "  EXTRANET_REQUIRED_SERVICES     services /readyz requires (identity,expiry; empty or\n"
    "                                 none: only a reachable broker)\n"
    "  EXTRANET_LOGIN_RATE_ACCOUNT    login attempts per account per window (10)\n"
    "  EXTRANET_LOGIN_RATE_IP         login attempts per client ip per window (30)\n"
    "  EXTRANET_LOGIN_RATE_WINDOW_S   rate limit window in seconds (300)\n"
    "  EXTRANET_EVENTS                the brokers' XPUB endpoints (tcp://127.0.0.1:5557)\n"
    "  EXTRANET_MAX_STREAMS           open event streams at most (1000)\n"
    "  EXTRANET_MAX_EXPORTS           streamed audit exports at once (4; more: 503)\n"
    "  EXTRANET_EXPORT_PAGE           records per audit.Export call of an export (1000)\n"
    "  EXTRANET_DEBUG_ROUTES          1: enable test-only routes (GET /api/v1/debug/echo)\n"
    "  EXTRANET_LOG                   debug|info|warn|error (info)\n";

typedef struct {
    http_cfg_t http;
    const char *brokers, *redis, *proxies, *origins, *required, *events;
    long max_streams, max_exports, export_page;
    ratelimit_cfg_t rate;
    bool debug;
} s_cfg_t;

static int s_config(s_cfg_t *c) {
    long threads, maxconn, timeout, mem, hdr, body, deadline, debug;
    if (cfg_long("EXTRANET_HTTP_THREADS", 2, 1, 64, &threads) < 0 ||
        cfg_long("EXTRANET_HTTP_MAX_CONNECTIONS", 10000, 1, 1000000, &maxconn) < 0 ||
        cfg_long("EXTRANET_HTTP_TIMEOUT_S", 15, 1, 3600, &timeout) < 0 ||
        cfg_long("EXTRANET_HTTP_MEMORY_LIMIT", 32768, 8192, 1048576, &mem) < 0 ||
        cfg_long("EXTRANET_MAX_HEADER", 8192, 1024, 1048576, &hdr) < 0 ||
        cfg_long("EXTRANET_MAX_BODY", 1048576, 1024, 64L * 1048576, &body) < 0 ||
        cfg_long("EXTRANET_DEADLINE_MS", 10000, 50, 300000, &deadline) < 0 ||
        cfg_long("EXTRANET_LOGIN_RATE_ACCOUNT", 10, 1, 1000000, &c->rate.per_account) < 0 ||
        cfg_long("EXTRANET_LOGIN_RATE_IP", 30, 1, 1000000, &c->rate.per_ip) < 0 ||
        cfg_long("EXTRANET_LOGIN_RATE_WINDOW_S", 300, 1, 86400, &c->rate.window_s) < 0 ||
        cfg_long("EXTRANET_MAX_STREAMS", 1000, 0, 1000000, &c->max_streams) < 0 ||
        cfg_long("EXTRANET_MAX_EXPORTS", 4, 0, 10000, &c->max_exports) < 0 ||
        cfg_long("EXTRANET_EXPORT_PAGE", 1000, 1, 5000, &c->export_page) < 0 ||
        cfg_long("EXTRANET_DEBUG_ROUTES", 0, 0, 1, &debug) < 0)
        return -1;
    c->http = (http_cfg_t){.addr = cfg_str("EXTRANET_HTTP_ADDR", "127.0.0.1:8080"),
                           .threads = (unsigned)threads,
                           .max_connections = (unsigned)maxconn,
                           .timeout_s = (unsigned)timeout,
                           .memory_limit = (size_t)mem,
                           .max_header = (size_t)hdr,
                           .max_body = (size_t)body,
                           .deadline_ms = deadline};
    c->brokers = cfg_str("EXTRANET_BROKER", "tcp://127.0.0.1:5555");
    c->redis = cfg_str("EXTRANET_REDIS", "127.0.0.1:6379");
    c->events = cfg_str("EXTRANET_EVENTS", "tcp://127.0.0.1:5557");
    c->proxies = cfg_str("EXTRANET_TRUSTED_PROXIES", "");
    c->origins = cfg_str("EXTRANET_CORS_ORIGINS", "");
    /* Set but empty means "no service required" (cfg_str would give the default). */
    const char *req = getenv("EXTRANET_REQUIRED_SERVICES");
    c->required = req && !*req ? "none" : cfg_str("EXTRANET_REQUIRED_SERVICES", "identity,expiry");
    c->debug = debug == 1;
    return 0;
}

/* Thousands of keep-alive connections need as many descriptors as the hard limit allows. */
static void s_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            log_warn("cannot raise RLIMIT_NOFILE");
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--routes") == 0) {
        routes_enable_debug(true);
        routes_print(stdout);
        return 0;
    }
    int a = cfg_handle_args(argc, argv, "gateway", s_usage);
    if (a != 0)
        return a > 0 ? 0 : 2;
    log_init("gateway");
    s_cfg_t c;
    if (s_config(&c) < 0 || routes_check() < 0)
        return 1;
    routes_enable_debug(c.debug);
    s_raise_nofile();

    /* Every thread started from here on inherits the mask: only main sees the signals. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (err != 0) {
        log_error("pthread_sigmask: %s", strerror(err));
        return 1;
    }
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        log_error("signal(SIGPIPE): %s", strerror(errno));
        return 1;
    }

    int rc = 1;
    void *zctx = NULL;
    gw_loop_t *loop = NULL;
    gw_http_t *http = NULL;
    if (metrics_init() < 0 || auth_init(c.redis) < 0 || ratelimit_init(&c.rate) < 0) {
        log_error("out of memory");
        goto done;
    }
    if (clientip_init(c.proxies) < 0) {
        log_error("EXTRANET_TRUSTED_PROXIES: not a list of addresses / CIDR ranges");
        goto done;
    }
    if (cors_init(c.origins) < 0) {
        log_error("EXTRANET_CORS_ORIGINS: bad list");
        goto done;
    }
    zctx = zmq_ctx_new();
    if (!zctx) {
        log_error("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto done;
    }
    if (sse_init(zctx, c.brokers, c.events, c.max_streams) < 0)
        goto done;
    loop = loop_new(zctx, c.brokers, c.required);
    if (!loop)
        goto done;
    export_init(&(export_cfg_t){.loop = loop,
                                .max_exports = c.max_exports,
                                .page = c.export_page,
                                .deadline_ms = c.http.deadline_ms});
    http = http_new(&c.http, loop);
    if (!http)
        goto done;
    log_info("listening on %s (port %u), brokers %s, %u threads%s", c.http.addr,
             (unsigned)http_port(http), c.brokers, c.http.threads,
             c.debug ? ", debug routes on" : "");

    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    log_info("signal %d: shutting down", sig);
    http_quiesce(http);
    sse_close_all();        /* no stream stays suspended for MHD_stop_daemon */
    loop_stop(loop);        /* every suspended request is resumed with 503 */
    http_drain(http, 2000); /* let those answers go out */
    rc = loop_failed(loop) ? 1 : 0;
done:
    sse_close_all();
    http_destroy(&http);
    loop_destroy(&loop);
    sse_fini();
    if (zctx)
        mdp_ctx_term(zctx);
    cors_fini();
    clientip_fini();
    ratelimit_fini();
    auth_fini();
    metrics_fini();
    return rc;
}
