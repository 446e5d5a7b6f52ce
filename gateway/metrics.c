/* The gateway's Prometheus metrics: fixed tables sized from the route table, one mutex,
 * rendered on demand. Label values are route patterns (never raw paths: bounded cardinality)
 * and HTTP methods from a fixed list ("OTHER" for the rest). */
#include "metrics.h"
#include "export.h"
#include "sse.h"
#include "routes.h"
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double s_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define S_NB ((int)(sizeof s_bounds / sizeof s_bounds[0]))
static const char *const s_methods[] = {"GET",    "POST",    "PUT",  "PATCH",
                                        "DELETE", "OPTIONS", "HEAD", "OTHER"};
#define S_NM           ((int)(sizeof s_methods / sizeof s_methods[0]))
#define S_NSTATUS      512 /* status - 100 */
#define S_MAX_UPSTREAM 64

typedef struct {
    uint64_t buckets[S_NB]; /* non-cumulative; summed when rendered */
    uint64_t count;
    double sum;
} s_hist_t;

typedef struct {
    char service[32];
    char kind[16];
    uint64_t count;
} s_upstream_t;

static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static int s_nroutes;      /* rows + 1 (the last slot is "unmatched") */
static uint64_t *s_counts; /* [route][method][status] */
static s_hist_t *s_hists;  /* [route] */
static long s_in_flight;
static s_upstream_t s_up[S_MAX_UPSTREAM];
static int s_nup;

int metrics_init(void) {
    int n;
    routes_table(&n);
    s_nroutes = n + 1;
    s_counts = calloc((size_t)s_nroutes * S_NM * S_NSTATUS, sizeof *s_counts);
    s_hists = calloc((size_t)s_nroutes, sizeof *s_hists);
    if (!s_counts || !s_hists) {
        metrics_fini();
        return -ENOMEM;
    }
    return 0;
}

void metrics_fini(void) {
    free(s_counts);
    free(s_hists);
    s_counts = NULL;
    s_hists = NULL;
}

void metrics_in_flight_add(int delta) {
    __atomic_add_fetch(&s_in_flight, delta, __ATOMIC_RELAXED);
}

static int s_method_index(const char *m) {
    for (int i = 0; i < S_NM - 1; i++)
        if (strcmp(s_methods[i], m) == 0)
            return i;
    return S_NM - 1;
}

void metrics_observe(int route_index, const char *method, int status, double seconds) {
    if (!s_counts)
        return;
    int r = (route_index < 0 || route_index >= s_nroutes - 1) ? s_nroutes - 1 : route_index;
    int st = (status < 100 || status >= 100 + S_NSTATUS) ? 500 : status;
    int b = 0;
    while (b < S_NB && seconds > s_bounds[b])
        b++;
    pthread_mutex_lock(&s_mu);
    s_counts[((size_t)r * S_NM + (size_t)s_method_index(method)) * S_NSTATUS +
             (size_t)(st - 100)]++;
    if (b < S_NB)
        s_hists[r].buckets[b]++;
    s_hists[r].count++;
    s_hists[r].sum += seconds;
    pthread_mutex_unlock(&s_mu);
}

void metrics_upstream_error(const char *service, const char *kind) {
    pthread_mutex_lock(&s_mu);
    int i = 0;
    for (; i < s_nup; i++)
        if (strcmp(s_up[i].service, service) == 0 && strcmp(s_up[i].kind, kind) == 0)
            break;
    if (i == s_nup && s_nup < S_MAX_UPSTREAM) {
        snprintf(s_up[i].service, sizeof s_up[i].service, "%s", service);
        snprintf(s_up[i].kind, sizeof s_up[i].kind, "%s", kind);
        s_nup++;
    }
    if (i < s_nup)
        s_up[i].count++;
    pthread_mutex_unlock(&s_mu);
}

/* A growing text buffer; on OOM it stops growing and reports failure at the end. */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} s_buf_t;

static void s_printf(s_buf_t *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void s_printf(s_buf_t *b, const char *fmt, ...) {
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static const char *s_route_label(const gw_route_t *table, int n, int r) {
    return r < n ? table[r].pattern : "unmatched";
}

char *metrics_render(size_t *ret_len) {
    int n;
    const gw_route_t *table = routes_table(&n);
    s_buf_t b = {.p = malloc(16384), .cap = 16384};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';
    pthread_mutex_lock(&s_mu);
    s_printf(&b, "# HELP extranet_http_requests_total HTTP requests answered, by route pattern, "
                 "method and status.\n# TYPE extranet_http_requests_total counter\n");
    for (int r = 0; r < s_nroutes; r++)
        for (int m = 0; m < S_NM; m++)
            for (int s = 0; s < S_NSTATUS; s++) {
                uint64_t c = s_counts[((size_t)r * S_NM + (size_t)m) * S_NSTATUS + (size_t)s];
                if (c)
                    s_printf(&b,
                             "extranet_http_requests_total{route=\"%s\",method=\"%s\","
                             "status=\"%d\"} %llu\n",
                             s_route_label(table, n, r), s_methods[m], s + 100,
                             (unsigned long long)c);
            }
    s_printf(&b, "# HELP extranet_http_request_duration_seconds Time from the request's "
                 "headers to its response being queued, by route pattern.\n"
                 "# TYPE extranet_http_request_duration_seconds histogram\n");
    for (int r = 0; r < s_nroutes; r++) {
        const s_hist_t *h = &s_hists[r];
        if (!h->count)
            continue;
        const char *label = s_route_label(table, n, r);
        uint64_t cum = 0;
        for (int i = 0; i < S_NB; i++) {
            cum += h->buckets[i];
            s_printf(&b,
                     "extranet_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                     label, s_bounds[i], (unsigned long long)cum);
        }
        s_printf(&b,
                 "extranet_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                 label, (unsigned long long)h->count);
        s_printf(&b, "extranet_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", label,
                 h->sum);
        s_printf(&b, "extranet_http_request_duration_seconds_count{route=\"%s\"} %llu\n", label,
                 (unsigned long long)h->count);
    }
    s_printf(&b,
             "# HELP extranet_http_in_flight HTTP requests being handled.\n"
             "# TYPE extranet_http_in_flight gauge\nextranet_http_in_flight %ld\n",
             __atomic_load_n(&s_in_flight, __ATOMIC_RELAXED));
    s_printf(&b,
             "# HELP extranet_streams_open Event streams (GET /api/v1/stream) open now.\n"
             "# TYPE extranet_streams_open gauge\nextranet_streams_open %ld\n",
             sse_count());
    s_printf(&b,
             "# HELP extranet_exports_running Streamed audit exports being written now.\n"
             "# TYPE extranet_exports_running gauge\nextranet_exports_running %ld\n",
             export_count());
    s_printf(&b, "# HELP extranet_upstream_errors_total Failed calls to services, by service "
                 "and kind (deadline, unavailable, internal, send, bad_reply).\n"
                 "# TYPE extranet_upstream_errors_total counter\n");
    for (int i = 0; i < s_nup; i++)
        s_printf(&b, "extranet_upstream_errors_total{service=\"%s\",kind=\"%s\"} %llu\n",
                 s_up[i].service, s_up[i].kind, (unsigned long long)s_up[i].count);
    pthread_mutex_unlock(&s_mu);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (ret_len)
        *ret_len = b.len;
    return b.p;
}
