/* JSON-lines logging on stderr, one object per line, written with a single write(2) so lines of
 * concurrent threads never interleave. Escapes by hand (no allocation on the common path) and
 * replaces invalid UTF-8 with U+FFFD so a line is always valid JSON. */
#include "extranet/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_SERVICE_MAX 64
#define LOG_REQUEST_ID_MAX 128
#define LOG_MSG_MAX 8192 /* longer messages are cut: a log line is not a data channel */

static char s_service[LOG_SERVICE_MAX] = "extranet";
static atomic_int s_level = LOG_INFO;
static _Thread_local char s_request_id[LOG_REQUEST_ID_MAX];

static const char *const s_level_names[] = {"debug", "info", "warn", "error"};

const char *log_service(void) {
    return s_service;
}

void log_init(const char *service) {
    if (service && *service)
        snprintf(s_service, sizeof s_service, "%s", service);
    const char *lvl = getenv("EXTRANET_LOG");
    int level = LOG_INFO;
    if (lvl && *lvl) {
        if (!strcasecmp(lvl, "debug"))
            level = LOG_DEBUG;
        else if (!strcasecmp(lvl, "info"))
            level = LOG_INFO;
        else if (!strcasecmp(lvl, "warn") || !strcasecmp(lvl, "warning"))
            level = LOG_WARN;
        else if (!strcasecmp(lvl, "error"))
            level = LOG_ERROR;
        else {
            atomic_store(&s_level, LOG_INFO);
            log_warn("EXTRANET_LOG is not one of debug|info|warn|error; using info");
            return;
        }
    }
    atomic_store(&s_level, level);
}

void log_set_request_id(const char *request_id) {
    if (!request_id)
        s_request_id[0] = '\0';
    else
        snprintf(s_request_id, sizeof s_request_id, "%s", request_id);
}

const char *log_request_id(void) {
    return s_request_id[0] ? s_request_id : NULL;
}

/* A growable line buffer: starts on the stack, moves to the heap only for long lines. */
typedef struct {
    char *buf;
    size_t len, cap;
    bool heap, failed;
} s_line_t;

static void s_put(s_line_t *l, const char *s, size_t n) {
    if (l->failed)
        return;
    if (l->len + n > l->cap) {
        size_t cap = l->cap * 2;
        while (cap < l->len + n)
            cap *= 2;
        char *nb = l->heap ? realloc(l->buf, cap) : malloc(cap);
        if (!nb) {
            l->failed = true;
            return;
        }
        if (!l->heap)
            memcpy(nb, l->buf, l->len);
        l->buf = nb;
        l->cap = cap;
        l->heap = true;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void s_puts(s_line_t *l, const char *s) {
    s_put(l, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (RFC 3629 §4), or 0 when it is invalid. */
static size_t s_utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    size_t n;
    unsigned int cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else
        return 0;
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Appends s as a JSON string literal (RFC 8259 §7). */
static void s_put_json_string(s_line_t *l, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    s_put(l, "\"", 1);
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            s_put(l, esc, 2);
            i++;
        } else if (c == '\n') {
            s_put(l, "\\n", 2);
            i++;
        } else if (c == '\r') {
            s_put(l, "\\r", 2);
            i++;
        } else if (c == '\t') {
            s_put(l, "\\t", 2);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            s_put(l, esc, 6);
            i++;
        } else {
            size_t n = s_utf8_len(p + i, len - i);
            if (n == 0) {
                s_put(l, "\\ufffd", 6);
                i++;
            } else {
                s_put(l, (const char *)p + i, n);
                i += n;
            }
        }
    }
    s_put(l, "\"", 1);
}

static void s_write_all(const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing stderr */
        }
        buf += n;
        len -= (size_t)n;
    }
}

void log_write(log_level_t level, const char *file, const char *func, int line, const char *fmt,
               ...) {
    if ((int)level < atomic_load(&s_level))
        return;
    if ((int)level < LOG_DEBUG || (int)level > LOG_ERROR)
        level = LOG_ERROR;

    char msg[LOG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int mn = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (mn < 0)
        snprintf(msg, sizeof msg, "(unformattable log message)");

    struct timespec ts;
    struct tm tm;
    char tbuf[40] = "1970-01-01T00:00:00.000Z";
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && gmtime_r(&ts.tv_sec, &tm)) {
        size_t n = strftime(tbuf, sizeof tbuf - 6, "%Y-%m-%dT%H:%M:%S", &tm);
        unsigned ms = (unsigned)(ts.tv_nsec / 1000000L) % 1000u;
        if (n > 0) {
            tbuf[n] = '.';
            tbuf[n + 1] = (char)('0' + ms / 100);
            tbuf[n + 2] = (char)('0' + ms / 10 % 10);
            tbuf[n + 3] = (char)('0' + ms % 10);
            tbuf[n + 4] = 'Z';
            tbuf[n + 5] = '\0';
        } else {
            snprintf(tbuf, sizeof tbuf, "1970-01-01T00:00:00.000Z");
        }
    }

    char stack[1024];
    s_line_t l = {.buf = stack, .cap = sizeof stack};
    s_puts(&l, "{\"time\":\"");
    s_puts(&l, tbuf);
    s_puts(&l, "\",\"level\":\"");
    s_puts(&l, s_level_names[level]);
    s_puts(&l, "\",\"service\":");
    s_put_json_string(&l, s_service);
    if (s_request_id[0]) {
        s_puts(&l, ",\"request_id\":");
        s_put_json_string(&l, s_request_id);
    }
    s_puts(&l, ",\"msg\":");
    s_put_json_string(&l, msg);
    if (level >= LOG_WARN) {
        const char *base = file ? strrchr(file, '/') : NULL;
        base = base ? base + 1 : (file ? file : "?");
        char src[512];
        snprintf(src, sizeof src, "%s:%s:%d", base, func ? func : "?", line);
        s_puts(&l, ",\"src\":");
        s_put_json_string(&l, src);
    }
    s_puts(&l, "}\n");
    if (!l.failed)
        s_write_all(l.buf, l.len);
    else {
        static const char oom[] = "{\"level\":\"error\",\"msg\":\"log line dropped: out of memory\"}\n";
        s_write_all(oom, sizeof oom - 1);
    }
    if (l.heap)
        free(l.buf);
}
