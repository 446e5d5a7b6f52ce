/* Streamed audit exports (export.h). Each export is a libmicrohttpd content reader plus one
 * gw_req_t of its own that the loop thread sends for the next page, as it sends any request
 * (deadline, shutdown answer, exactly one completion), except that the completion calls
 * s_on_page() instead of resuming an HTTP request. One mutex guards every export's flags and
 * buffers. Ownership: libmicrohttpd's response owns the export until its free callback; if a
 * page is still in the loop then, the export is marked gone and s_on_page() frees it (the loop
 * completes every request exactly once, so it always does). */
#include "export.h"
#include "audit.pb-c.h"
#include "auth.h"
#include "envelope.pb-c.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    gw_req_t fetch; /* the next page's request (loop's while fetching; payload, reply owned) */
    struct MHD_Connection *conn;
    Extranet__Audit__ExportRequest *rq; /* the client's filters and page size (owned) */
    char cursor[32];                    /* next_cursor of the last page decoded */
    Extranet__Audit__ExportReply *page; /* the page being written (owned), or NULL */
    size_t off, page_len;               /* bytes of page->data written / in all */
    Extranet__Reply *next;              /* the next page as the loop got it (owned), or NULL */
    char why[320];                      /* why it failed */
    bool fetching;                      /* fetch handed to the loop, s_on_page not called yet */
    bool failed;                        /* a page failed: the body ends with an error */
    bool last;                          /* the page decoded last had no next_cursor */
    bool suspended; /* the reader suspended the connection: s_on_page resumes it */
    bool gone;      /* the response was freed while fetching: s_on_page frees */
    long pages;
    long long records;
} s_export_t;

static struct {
    pthread_mutex_t mu;
    export_cfg_t cfg;
    long count;
} s = {.mu = PTHREAD_MUTEX_INITIALIZER,
       .cfg = {.max_exports = 4, .page = 1000, .deadline_ms = 10000}};

/* The mutex is a static default one: failing to take or give it back is a programmer error
 * (corrupt memory), not a condition to serve on. */
static void s_lock(void) {
    int err = pthread_mutex_lock(&s.mu);
    if (err != 0) {
        log_error("export: pthread_mutex_lock: %s", strerror(err));
        abort();
    }
}

static void s_unlock(void) {
    int err = pthread_mutex_unlock(&s.mu);
    if (err != 0) {
        log_error("export: pthread_mutex_unlock: %s", strerror(err));
        abort();
    }
}

void export_init(const export_cfg_t *cfg) {
    s_lock();
    s.cfg = *cfg;
    s_unlock();
}

void export_prepare(ProtobufCMessage *msg) {
    if (!msg || msg->descriptor != &extranet__audit__export_request__descriptor)
        return;
    Extranet__Audit__ExportRequest *rq = (Extranet__Audit__ExportRequest *)msg;
    if (rq->limit == 0) {
        s_lock();
        rq->limit = (int32_t)s.cfg.page;
        s_unlock();
    }
}

long export_count(void) {
    s_lock();
    long n = s.count;
    s_unlock();
    return n;
}

/* Frees ex and everything it owns (not linked anywhere; the count is the caller's). */
static void s_destroy(s_export_t *ex) {
    free(ex->fetch.payload);
    if (ex->fetch.reply)
        extranet__reply__free_unpacked(ex->fetch.reply, NULL);
    if (ex->next)
        extranet__reply__free_unpacked(ex->next, NULL);
    if (ex->page)
        extranet__audit__export_reply__free_unpacked(ex->page, NULL);
    if (ex->rq)
        extranet__audit__export_request__free_unpacked(ex->rq, NULL);
    free(ex);
}

static void s_fail(s_export_t *ex, const char *why) {
    if (!ex->failed)
        snprintf(ex->why, sizeof ex->why, "%s", why);
    ex->failed = true;
}

/* Makes page (stolen) the one being written and remembers its cursor. Mutex held. */
static void s_set_page(s_export_t *ex, Extranet__Audit__ExportReply *page) {
    if (!page || !page->data || !page->next_cursor ||
        strlen(page->next_cursor) >= sizeof ex->cursor) {
        if (page)
            extranet__audit__export_reply__free_unpacked(page, NULL);
        s_fail(ex, "malformed page from audit");
        return;
    }
    if (page->next_cursor[0] && !strcmp(page->next_cursor, ex->cursor)) {
        /* a cursor that does not move would repeat this page forever */
        extranet__audit__export_reply__free_unpacked(page, NULL);
        s_fail(ex, "audit's next_cursor did not advance");
        return;
    }
    ex->page = page;
    ex->off = 0;
    ex->page_len = strlen(page->data);
    ex->pages++;
    ex->records += page->count;
    ex->last = page->next_cursor[0] == '\0';
    memcpy(ex->cursor, page->next_cursor, strlen(page->next_cursor) + 1);
}

/* Decodes the page the loop fetched (ex->next). Mutex held. */
static void s_take_next(s_export_t *ex) {
    Extranet__Reply *rep = ex->next;
    ex->next = NULL;
    Extranet__Audit__ExportReply *page =
        extranet__audit__export_reply__unpack(NULL, rep->payload.len, rep->payload.data);
    extranet__reply__free_unpacked(rep, NULL);
    s_set_page(ex, page);
}

/* The loop thread, once per page fetched: hands the answer to the reader and wakes it. */
static void s_on_page(gw_req_t *f) {
    s_export_t *ex = f->on_done_arg;
    s_lock();
    ex->fetching = false;
    if (ex->gone) {
        s.count--;
        s_unlock();
        s_destroy(ex);
        return;
    }
    if (f->status == EXTRANET__STATUS__OK && f->reply) {
        ex->next = f->reply;
    } else {
        char why[320];
        snprintf(why, sizeof why, "%s", f->message[0] ? f->message : "page failed");
        s_fail(ex, why);
        if (f->reply)
            extranet__reply__free_unpacked(f->reply, NULL);
    }
    f->reply = NULL;
    if (ex->suspended) {
        ex->suspended = false;
        MHD_resume_connection(ex->conn);
    }
    s_unlock();
}

/* Hands the request for the page after ex->cursor to the loop: identity.Authenticate first
 * (the session is confirmed again for every page, so a revoked session or a demoted admin
 * ends the export), then audit.Export. Mutex held. Returns 0 or -errno. */
static int s_fetch(s_export_t *ex) {
    Extranet__Audit__ExportRequest rq = *ex->rq;
    rq.cursor = ex->cursor;
    size_t len = extranet__audit__export_request__get_packed_size(&rq);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return -ENOMEM;
    gw_req_t *f = &ex->fetch;
    free(f->payload);
    f->payload = buf;
    f->payload_len = extranet__audit__export_request__pack(&rq, buf);
    f->phase = GW_PHASE_AUTH;
    f->status = EXTRANET__STATUS__OK;
    f->message[0] = '\0';
    f->deferred_status = EXTRANET__STATUS__OK;
    f->deadline_ms = util_now_ms() + s.cfg.deadline_ms;
    f->deadline_mono = util_mono_ms() + s.cfg.deadline_ms;
    ex->fetching = true;
    int rc = loop_submit(s.cfg.loop, f);
    if (rc < 0)
        ex->fetching = false;
    return rc;
}

/* --- libmicrohttpd callbacks (its threads) ------------------------------------------------ */

static ssize_t s_reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    s_export_t *ex = cls;
    s_lock();
    for (;;) {
        if (!ex->failed && !ex->page && ex->next)
            s_take_next(ex);
        /* The next page is fetched while this one is written (at most two in memory). */
        if (!ex->failed && ex->page && !ex->last && !ex->fetching && !ex->next) {
            int rc = s_fetch(ex);
            if (rc < 0)
                s_fail(ex, rc == -ESHUTDOWN ? "shutting down" : "out of memory");
        }
        if (ex->failed) {
            /* An error, not an end: libmicrohttpd closes the connection without the last
             * chunk, so the client cannot take the truncated body for the whole export. */
            log_set_request_id(ex->fetch.request_id);
            log_warn("audit export aborted after %ld pages (%lld records): %s", ex->pages,
                     ex->records, ex->why);
            log_set_request_id(NULL);
            s_unlock();
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (ex->page && ex->off < ex->page_len) {
            size_t k = ex->page_len - ex->off < max ? ex->page_len - ex->off : max;
            memcpy(out, ex->page->data + ex->off, k);
            ex->off += k;
            s_unlock();
            return (ssize_t)k;
        }
        if (ex->page) { /* written out: freed before the next one is decoded */
            extranet__audit__export_reply__free_unpacked(ex->page, NULL);
            ex->page = NULL;
            continue;
        }
        if (ex->next)
            continue;
        if (ex->last) {
            s_unlock();
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (!ex->fetching) { /* not asked for yet (cannot happen: the prefetch did) */
            int rc = s_fetch(ex);
            if (rc < 0) {
                s_fail(ex, rc == -ESHUTDOWN ? "shutting down" : "out of memory");
                continue;
            }
        }
        /* Waiting for the loop: park the connection (no thread, no busy loop) until s_on_page
         * resumes it. Under the mutex, so its wake-up cannot slip in between. */
        ex->suspended = true;
        MHD_suspend_connection(ex->conn);
        s_unlock();
        return 0;
    }
}

static void s_free(void *cls) {
    s_export_t *ex = cls;
    s_lock();
    if (!ex->last || ex->page || ex->next || ex->fetching) {
        if (!ex->failed) {
            log_set_request_id(ex->fetch.request_id);
            log_info("audit export ended by the client after %ld pages (%lld records)", ex->pages,
                     ex->records);
            log_set_request_id(NULL);
        }
    }
    if (ex->fetching) { /* the loop still holds ex->fetch: s_on_page frees */
        ex->gone = true;
        s_unlock();
        return;
    }
    s.count--;
    s_unlock();
    s_destroy(ex);
}

/* A new export for req's connection, its first page decoded; not counted yet. NULL on OOM
 * or a malformed request / page (logged). */
static s_export_t *s_new(const gw_req_t *req) {
    s_export_t *ex = calloc(1, sizeof *ex);
    if (!ex)
        return NULL;
    ex->conn = req->conn;
    gw_req_t *f = &ex->fetch;
    memcpy(f->request_id, req->request_id, sizeof f->request_id);
    memcpy(f->client_ip, req->client_ip, sizeof f->client_ip);
    memcpy(f->token_sha256, req->token_sha256, sizeof f->token_sha256);
    f->match = req->match;
    f->start_us = req->start_us;
    f->state = GW_REQ_SUSPENDED;
    f->on_done = s_on_page;
    f->on_done_arg = ex;
    auth_actor_anonymous(f);
    ex->rq = extranet__audit__export_request__unpack(NULL, req->payload_len, req->payload);
    Extranet__Audit__ExportReply *first =
        req->reply ? extranet__audit__export_reply__unpack(NULL, req->reply->payload.len,
                                                           req->reply->payload.data)
                   : NULL;
    if (!ex->rq || !first) {
        if (first)
            extranet__audit__export_reply__free_unpacked(first, NULL);
        log_set_request_id(req->request_id);
        log_warn("audit export: malformed %s", ex->rq ? "first page" : "request");
        log_set_request_id(NULL);
        s_destroy(ex);
        return NULL;
    }
    s_set_page(ex, first);
    if (ex->failed) {
        log_set_request_id(req->request_id);
        log_warn("audit export: %s", ex->why);
        log_set_request_id(NULL);
        s_destroy(ex);
        return NULL;
    }
    return ex;
}

struct MHD_Response *export_open(const gw_req_t *req, bool *ret_full, const char **ret_content_type,
                                 char ret_filename[64]) {
    *ret_full = false;
    s_export_t *ex = s_new(req);
    if (!ex)
        return NULL;
    bool csv = ex->rq->format && !strcmp(ex->rq->format, "csv");
    *ret_content_type = csv ? "text/csv; charset=utf-8" : "application/x-ndjson";
    time_t now = time(NULL);
    struct tm tm;
    char stamp[32] = "now";
    if (gmtime_r(&now, &tm) && strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm) == 0)
        snprintf(stamp, sizeof stamp, "now");
    snprintf(ret_filename, 64, "audit-%s.%s", stamp, csv ? "csv" : "jsonl");
    /* Counted before the response exists, so its free callback always has one to give back. */
    s_lock();
    if (s.count >= s.cfg.max_exports) {
        s_unlock();
        *ret_full = true;
        s_destroy(ex);
        return NULL;
    }
    s.count++;
    s_unlock();
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, s_reader, ex, s_free);
    if (!resp) {
        s_lock();
        s.count--;
        s_unlock();
        s_destroy(ex);
        return NULL;
    }
    return resp;
}
