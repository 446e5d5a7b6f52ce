/* Broker benchmark: request/reply through our Majordomo broker versus raw ZeroMQ DEALER<->ROUTER
 * echo on the same machine, 1 KiB payloads, 1 and 32 requests in flight (issue 2, item 7).
 * Prints req/s, p50/p99 latency and the broker/raw ratios with PASS/MISS against the targets;
 * always exits 0 when it could measure (it is a measurement, not a test). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define PAYLOAD      1024
#define MAX_WORKERS  64
#define HEARTBEAT_MS 1000 /* MDP_HEARTBEAT_MS of the runtime (services/runtime/.../mdp.h) */

static int64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((noreturn)) static void s_die(const char *what) {
    fprintf(stderr, "broker_bench: %s: %s\n", what, zmq_strerror(errno));
    exit(1);
}

/* ---- latency samples ------------------------------------------------------------------- */

typedef struct {
    int64_t *v;
    size_t n, cap;
} samples_t;

static void s_sample_add(samples_t *s, int64_t ns) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        int64_t *nv = realloc(s->v, s->cap * sizeof *nv);
        if (!nv) {
            fprintf(stderr, "broker_bench: out of memory\n");
            exit(1);
        }
        s->v = nv;
    }
    s->v[s->n++] = ns;
}

static int s_cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double s_pct_us(samples_t *s, double p) {
    if (!s->n)
        return 0;
    size_t i = (size_t)(p * (double)(s->n - 1));
    return (double)s->v[i] / 1000.0;
}

typedef struct {
    double rps, p50_us, p99_us;
    size_t n;
} result_t;

/* ---- raw echo: a ROUTER that sends every message straight back --------------------------- */

static atomic_bool s_stop_threads;

static void *s_raw_echo(void *router) {
    int timeout = 100;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    while (!atomic_load(&s_stop_threads)) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, router, 0) < 0) {
            zmq_msg_close(&id);
            if (errno == EAGAIN)
                continue;
            break;
        }
        zmq_msg_init(&body);
        if (zmq_msg_recv(&body, router, 0) < 0 || zmq_msg_send(&id, router, ZMQ_SNDMORE) < 0 ||
            zmq_msg_send(&body, router, 0) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            break;
        }
    }
    zmq_close(router);
    return NULL;
}

/* ---- MDP echo workers: n DEALERs in one thread, each one MDP worker (RFC 7) ------------------ */

typedef struct {
    char endpoint[256];
    int n;
    atomic_bool stop;
} workers_arg_t;

static int s_send_parts(void *sock, const void *const *parts, const size_t *lens, int n) {
    for (int i = 0; i < n; i++)
        if (zmq_send(sock, parts[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    return 0;
}

static void s_worker_command(void *sock, uint8_t cmd, const char *service) {
    const void *p[] = {"", "MDPW01", &cmd, service};
    size_t l[] = {0, 6, 1, service ? strlen(service) : 0};
    if (s_send_parts(sock, p, l, service ? 4 : 3) < 0)
        s_die("worker send");
}

static void *s_mdp_workers(void *argp) {
    workers_arg_t *a = argp;
    /* Its own context, so its own I/O thread: like a real service process, the workers do not
     * share the load generator's I/O thread. */
    void *zctx = zmq_ctx_new();
    if (!zctx)
        s_die("zmq_ctx_new");
    void *socks[MAX_WORKERS] = {0};
    zmq_pollitem_t items[MAX_WORKERS] = {{0}};
    if (a->n < 1 || a->n > MAX_WORKERS)
        s_die("worker count");
    int linger = 0;
    for (int i = 0; i < a->n; i++) {
        socks[i] = zmq_socket(zctx, ZMQ_DEALER);
        if (!socks[i] || zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger) < 0 ||
            zmq_connect(socks[i], a->endpoint) < 0)
            s_die("worker socket");
        s_worker_command(socks[i], 1, "bench"); /* READY */
        items[i] = (zmq_pollitem_t){socks[i], 0, ZMQ_POLLIN, 0};
    }
    int64_t next_hb = s_now_ns() + (int64_t)HEARTBEAT_MS * 1000000;
    while (!atomic_load(&a->stop)) {
        if (zmq_poll(items, a->n, 100) < 0 && errno != EINTR)
            s_die("worker poll");
        for (int i = 0; i < a->n; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            /* "" | MDPW01 | cmd | [client | "" | body] */
            zmq_msg_t f[6];
            int n = 0, more = 1;
            while (more) {
                zmq_msg_t sink, *m = n < 6 ? &f[n] : &sink;
                zmq_msg_init(m);
                if (zmq_msg_recv(m, socks[i], 0) < 0)
                    s_die("worker recv");
                more = zmq_msg_more(m);
                if (m == &sink)
                    zmq_msg_close(m);
                else
                    n++;
            }
            if (n == 6 && zmq_msg_size(&f[2]) == 1 && *(uint8_t *)zmq_msg_data(&f[2]) == 2) {
                uint8_t reply = 3;
                if (zmq_send(socks[i], "", 0, ZMQ_SNDMORE) < 0 ||
                    zmq_send(socks[i], "MDPW01", 6, ZMQ_SNDMORE) < 0 ||
                    zmq_send(socks[i], &reply, 1, ZMQ_SNDMORE) < 0 ||
                    zmq_msg_send(&f[3], socks[i], ZMQ_SNDMORE) < 0 ||
                    zmq_send(socks[i], "", 0, ZMQ_SNDMORE) < 0 ||
                    zmq_msg_send(&f[5], socks[i], 0) < 0)
                    s_die("worker reply");
            }
            for (int k = 0; k < n; k++)
                zmq_msg_close(&f[k]);
        }
        if (s_now_ns() >= next_hb) {
            for (int i = 0; i < a->n; i++)
                s_worker_command(socks[i], 4, NULL); /* HEARTBEAT */
            next_hb = s_now_ns() + (int64_t)HEARTBEAT_MS * 1000000;
        }
    }
    for (int i = 0; i < a->n; i++) {
        s_worker_command(socks[i], 5, NULL); /* DISCONNECT */
        zmq_close(socks[i]);
    }
    zmq_ctx_term(zctx);
    return NULL;
}

/* ---- the load generator: one DEALER, `window` requests in flight --------------------------- */

static void s_send_request(void *dealer, bool mdp, uint8_t *payload) {
    int64_t t = s_now_ns();
    memcpy(payload, &t, sizeof t);
    if (mdp) {
        if (zmq_send(dealer, "", 0, ZMQ_SNDMORE) < 0 ||
            zmq_send(dealer, "MDPC01", 6, ZMQ_SNDMORE) < 0 ||
            zmq_send(dealer, "bench", 5, ZMQ_SNDMORE) < 0)
            s_die("client send");
    }
    if (zmq_send(dealer, payload, PAYLOAD, 0) < 0)
        s_die("client send");
}

/* Receives one reply and returns its latency in ns, or -1 on timeout. */
static int64_t s_recv_reply(void *dealer) {
    zmq_msg_t m;
    int64_t sent = -1;
    int more = 1;
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, dealer, 0) < 0) {
            zmq_msg_close(&m);
            if (errno == EAGAIN)
                return -1;
            s_die("client recv");
        }
        more = zmq_msg_more(&m);
        if (!more && zmq_msg_size(&m) == PAYLOAD)
            memcpy(&sent, zmq_msg_data(&m), sizeof sent);
        zmq_msg_close(&m);
    }
    if (sent < 0) {
        fprintf(stderr, "broker_bench: malformed reply\n");
        exit(1);
    }
    return s_now_ns() - sent;
}

static result_t s_run(void *zctx, const char *endpoint, bool mdp, int window, double seconds) {
    void *dealer = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0, timeout = 5000;
    if (!dealer || zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
        zmq_connect(dealer, endpoint) < 0)
        s_die("client socket");
    uint8_t payload[PAYLOAD];
    for (int i = 0; i < PAYLOAD; i++)
        payload[i] = (uint8_t)i;
    samples_t s = {0};
    /* Warm-up: connections, the broker's service entry, caches. */
    int64_t warm_end = s_now_ns() + 300000000;
    int inflight = 0;
    for (; inflight < window; inflight++)
        s_send_request(dealer, mdp, payload);
    while (s_now_ns() < warm_end) {
        if (s_recv_reply(dealer) < 0)
            goto timeout;
        s_send_request(dealer, mdp, payload);
    }
    int64_t start = s_now_ns(), end = start + (int64_t)(seconds * 1e9);
    while (s_now_ns() < end) {
        int64_t lat = s_recv_reply(dealer);
        if (lat < 0)
            goto timeout;
        s_sample_add(&s, lat);
        s_send_request(dealer, mdp, payload);
    }
    int64_t elapsed = s_now_ns() - start;
    for (; inflight > 0; inflight--)
        if (s_recv_reply(dealer) < 0)
            goto timeout;
    zmq_close(dealer);
    qsort(s.v, s.n, sizeof *s.v, s_cmp);
    result_t r = {(double)s.n / ((double)elapsed / 1e9), s_pct_us(&s, 0.50), s_pct_us(&s, 0.99),
                  s.n};
    free(s.v);
    return r;
timeout:
    fprintf(stderr, "broker_bench: no reply within 5 s (%s, window %d)\n", mdp ? "broker" : "raw",
            window);
    exit(1);
}

/* ---- starting the broker binary on kernel-chosen ports -------------------------------------- */

static pid_t s_broker_pid;
static char s_broker_log[] = "/tmp/broker_bench_XXXXXX";

static void s_broker_start(const char *bin, char *ret_endpoint, size_t len) {
    int fd = mkstemp(s_broker_log);
    if (fd < 0) {
        perror("broker_bench: mkstemp");
        exit(1);
    }
    s_broker_pid = fork();
    if (s_broker_pid < 0) {
        perror("broker_bench: fork");
        exit(1);
    }
    if (s_broker_pid == 0) {
        dup2(fd, 2);
        dup2(fd, 1);
        setenv("EXTRANET_BROKER_BIND", "tcp://127.0.0.1:*", 1);
        setenv("EXTRANET_EVENTS_BIND", "tcp://127.0.0.1:*", 1);
        setenv("EXTRANET_EVENTS_PUB_BIND", "tcp://127.0.0.1:*", 1);
        setenv("EXTRANET_LOG", "info", 1);
        execl(bin, bin, (char *)NULL);
        perror("broker_bench: exec broker");
        _exit(127);
    }
    close(fd);
    /* The broker logs "bound mdp tcp://127.0.0.1:<port>" once it listens. */
    for (int tries = 0; tries < 500; tries++) {
        FILE *f = fopen(s_broker_log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            char *p = strstr(line, "bound mdp ");
            if (p) {
                p += strlen("bound mdp ");
                size_t n = strcspn(p, "\"");
                if (n < len) {
                    memcpy(ret_endpoint, p, n);
                    ret_endpoint[n] = '\0';
                    fclose(f);
                    return;
                }
            }
        }
        if (f)
            fclose(f);
        int status;
        if (waitpid(s_broker_pid, &status, WNOHANG) == s_broker_pid) {
            fprintf(stderr, "broker_bench: broker exited early; log in %s\n", s_broker_log);
            exit(1);
        }
        usleep(20000);
    }
    fprintf(stderr, "broker_bench: broker did not report its endpoint; log in %s\n", s_broker_log);
    kill(s_broker_pid, SIGTERM);
    exit(1);
}

/* CPU time (user + system) the broker process has used so far, in ms; -1 if unknown. */
static long s_broker_cpu_ms(void) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)s_broker_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the parenthesised command name: state is field 3, utime 14, stime 15. */
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    int field = 3;
    char *save = NULL;
    for (char *tok = p ? strtok_r(p + 1, " ", &save) : NULL; tok && field <= 15;
         tok = strtok_r(NULL, " ", &save), field++) {
        if (field == 14)
            ut = strtoul(tok, NULL, 10);
        else if (field == 15)
            st = strtoul(tok, NULL, 10);
    }
    if (field <= 15)
        return -1;
    return (long)((ut + st) * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

static int s_broker_stop(void) {
    int status = 0;
    kill(s_broker_pid, SIGTERM);
    if (waitpid(s_broker_pid, &status, 0) < 0)
        return -1;
    unlink(s_broker_log);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- raw echo in its own process: the same ROUTER loop, but like the broker a separate
 * process with its own ZeroMQ I/O thread. Forked before the parent creates any ZeroMQ context. */

static pid_t s_echo_pid;

static void s_echo_process_start(char *ret_endpoint, size_t len) {
    int fds[2];
    if (pipe(fds) < 0) {
        perror("broker_bench: pipe");
        exit(1);
    }
    s_echo_pid = fork();
    if (s_echo_pid < 0) {
        perror("broker_bench: fork");
        exit(1);
    }
    if (s_echo_pid == 0) {
        close(fds[0]);
        void *zctx = zmq_ctx_new();
        void *router = zctx ? zmq_socket(zctx, ZMQ_ROUTER) : NULL;
        int linger = 0;
        char ep[256];
        size_t n = sizeof ep;
        if (!router || zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
            zmq_bind(router, "tcp://127.0.0.1:*") < 0 ||
            zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &n) < 0)
            _exit(1);
        if (write(fds[1], ep, strlen(ep) + 1) < 0)
            _exit(1);
        close(fds[1]);
        s_raw_echo(router); /* runs until the parent kills this process */
        _exit(0);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], ret_endpoint, len - 1);
    close(fds[0]);
    if (n <= 0) {
        fprintf(stderr, "broker_bench: echo process failed to start\n");
        exit(1);
    }
    ret_endpoint[n] = '\0';
}

static void s_echo_process_stop(void) {
    kill(s_echo_pid, SIGKILL);
    waitpid(s_echo_pid, NULL, 0);
}

/* ---- main -------------------------------------------------------------------------------- */

static void s_print(const char *name, int window, int workers, result_t r) {
    printf("  %-13s in-flight %2d  workers %2d  %8.0f req/s  p50 %7.1f us  p99 %8.1f us  (%zu)\n",
           name, window, workers, r.rps, r.p50_us, r.p99_us, r.n);
}

/* Prints the ratios of the broker against one baseline and counts the targets missed. */
static int s_compare(const char *baseline, result_t brk, result_t raw) {
    double tput = brk.rps / raw.rps, p50 = brk.p50_us / raw.p50_us;
    bool ok_t = tput >= 0.6, ok_l = p50 <= 2.0;
    printf("    vs %-13s throughput %.2fx (>= 0.60x) %s   p50 %.2fx (<= 2.00x) %s   p99 %.2fx\n",
           baseline, tput, ok_t ? "PASS" : "MISS", p50, ok_l ? "PASS" : "MISS",
           brk.p99_us / raw.p99_us);
    return !ok_t + !ok_l;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        printf("usage: broker_bench <path to broker binary> [seconds per case, default 3]\n");
        return argc < 2 ? 2 : 0;
    }
    double seconds = argc > 2 ? strtod(argv[2], NULL) : 3.0;
    if (!(seconds > 0 && seconds <= 30)) {
        fprintf(stderr, "broker_bench: seconds must be in (0, 30]\n");
        return 2;
    }
    /* Children first, while this process has no ZeroMQ context (fork safety). */
    char proc_ep[256], broker_ep[256];
    s_echo_process_start(proc_ep, sizeof proc_ep);
    s_broker_start(argv[1], broker_ep, sizeof broker_ep);

    void *zctx = zmq_ctx_new();
    if (!zctx)
        s_die("zmq_ctx_new");
    void *router = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0;
    if (!router || zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_bind(router, "tcp://127.0.0.1:*") < 0)
        s_die("raw router");
    char thread_ep[256];
    size_t len = sizeof thread_ep;
    if (zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, thread_ep, &len) < 0)
        s_die("raw endpoint");
    pthread_t echo;
    if (pthread_create(&echo, NULL, s_raw_echo, router) != 0) {
        fprintf(stderr, "broker_bench: pthread_create failed\n");
        return 1;
    }

    printf("broker benchmark: %d-byte payloads, %.1f s per case, tcp on loopback, %ld CPUs\n",
           PAYLOAD, seconds, sysconf(_SC_NPROCESSORS_ONLN));
    printf(
        "  raw-thread  = DEALER <-> ROUTER echo on a thread of this process (shared I/O thread)\n"
        "  raw-process = DEALER <-> ROUTER echo in its own process\n"
        "  broker      = DEALER -> broker -> MDP worker -> broker -> DEALER, as many workers\n"
        "                as requests in flight (an MDP worker takes one request at a time)\n");
    const int windows[] = {1, 32};
    int missed = 0;
    for (int i = 0; i < 2; i++) {
        int w = windows[i];
        result_t raw_t = s_run(zctx, thread_ep, false, w, seconds);
        result_t raw_p = s_run(zctx, proc_ep, false, w, seconds);
        workers_arg_t wa = {.n = w};
        snprintf(wa.endpoint, sizeof wa.endpoint, "%s", broker_ep);
        atomic_init(&wa.stop, false);
        pthread_t wt;
        if (pthread_create(&wt, NULL, s_mdp_workers, &wa) != 0) {
            fprintf(stderr, "broker_bench: pthread_create failed\n");
            return 1;
        }
        long cpu0 = s_broker_cpu_ms();
        int64_t t0 = s_now_ns();
        result_t brk = s_run(zctx, broker_ep, true, w, seconds);
        long cpu1 = s_broker_cpu_ms();
        double wall_ms = (double)(s_now_ns() - t0) / 1e6;
        atomic_store(&wa.stop, true);
        pthread_join(wt, NULL);
        s_print("raw-thread", w, 0, raw_t);
        s_print("raw-process", w, 0, raw_p);
        s_print("broker", w, wa.n, brk);
        if (cpu0 >= 0 && cpu1 >= 0)
            printf("    broker process CPU (main + I/O thread): %.0f%% of one core, %.1f us per "
                   "request\n",
                   100.0 * (double)(cpu1 - cpu0) / wall_ms,
                   brk.n ? 1000.0 * (double)(cpu1 - cpu0) / (double)brk.n : 0.0);
        missed += s_compare("raw-thread", brk, raw_t);
        missed += s_compare("raw-process", brk, raw_p);
    }
    atomic_store(&s_stop_threads, true);
    pthread_join(echo, NULL);
    int brc = s_broker_stop();
    s_echo_process_stop();
    zmq_ctx_term(zctx);
    printf("targets (throughput >= 0.6x raw, p50 <= 2x raw): %d of 8 comparisons missed; "
           "broker exit status %d\n",
           missed, brc);
    return 0;
}
