/* Redis through hiredis: a lazily connected context with short timeouts, dropped on any I/O
 * error and re-made on a later call. Failed connects back off so a dead Redis costs one
 * connect attempt per RDS_BACKOFF_MS, not one per request: callers treat NULL as a miss. */
#include "extranet/rds.h"
#include "extranet/log.h"
#include "extranet/util.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define RDS_CONNECT_TIMEOUT_MS 500
#define RDS_IO_TIMEOUT_MS 1000
#define RDS_BACKOFF_MS 200
#define RDS_DEFAULT_PORT 6379

struct rds {
    char *host;
    int port;
    long db;          /* SELECTed after connect when > 0 */
    char *user;       /* AUTH user from the url, or NULL */
    char *password;   /* AUTH password from the url, or NULL; never logged */
    bool url_invalid; /* every call fails: the operator's url could not be parsed */
    redisContext *ctx;
    int64_t next_connect_ms; /* monotonic; no connect attempt before it */
    int pending;             /* commands appended since the last pipeline */
    bool append_failed;
};

static bool s_parse_long(const char *s, size_t n, long min, long max, long *ret) {
    if (n == 0 || n > 10)
        return false;
    long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        x = x * 10 + (s[i] - '0');
    }
    if (x < min || x > max)
        return false;
    *ret = x;
    return true;
}

/* "redis://[[user]:password@]host[:port][/db]" or "host[:port]"; host may be "[v6]".
 * Returns 0, -EINVAL or -ENOMEM. */
static int s_parse_url(rds_t *self, const char *url) {
    const char *p = url;
    const char *db = NULL;
    size_t len;
    if (!strncmp(p, "redis://", 8)) {
        p += 8;
        const char *slash = strchr(p, '/');
        const char *at = memchr(p, '@', slash ? (size_t)(slash - p) : strlen(p));
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            if (!colon)
                return -EINVAL;
            if (colon > p && !(self->user = strndup(p, (size_t)(colon - p))))
                return -ENOMEM;
            if (!(self->password = strndup(colon + 1, (size_t)(at - colon - 1))))
                return -ENOMEM;
            p = at + 1;
        }
        if (slash) {
            db = slash + 1;
            len = (size_t)(slash - p);
        } else {
            len = strlen(p);
        }
    } else {
        len = strlen(p);
    }
    const char *hb = p, *he;
    const char *port = NULL;
    if (len > 0 && *p == '[') {
        const char *close = memchr(p, ']', len);
        if (!close)
            return -EINVAL;
        hb = p + 1;
        he = close;
        if (close + 1 < p + len) {
            if (close[1] != ':')
                return -EINVAL;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', len);
        he = colon ? colon : p + len;
        port = colon ? colon + 1 : NULL;
    }
    if (he == hb)
        return -EINVAL;
    long v = RDS_DEFAULT_PORT;
    if (port && !s_parse_long(port, (size_t)(p + len - port), 1, 65535, &v))
        return -EINVAL;
    self->port = (int)v;
    self->db = 0;
    if (db && *db && !s_parse_long(db, strlen(db), 0, 1000000, &self->db))
        return -EINVAL;
    self->host = strndup(hb, (size_t)(he - hb));
    return self->host ? 0 : -ENOMEM;
}

rds_t *rds_new(const char *url) {
    rds_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    int rc = s_parse_url(self, url ? url : "");
    if (rc == -ENOMEM) {
        rds_destroy(&self);
        return NULL;
    }
    if (rc < 0) {
        log_error("EXTRANET_REDIS is not host:port or redis://host:port[/db]; Redis disabled");
        self->url_invalid = true;
    }
    return self;
}

static void s_drop(rds_t *self) {
    redisFree(self->ctx); /* NULL-safe */
    self->ctx = NULL;
    self->pending = 0;
    self->append_failed = false;
}

void rds_destroy(rds_t **self_p) {
    if (!self_p || !*self_p)
        return;
    rds_t *self = *self_p;
    s_drop(self);
    free(self->host);
    free(self->user);
    if (self->password) {
        explicit_bzero(self->password, strlen(self->password));
        free(self->password);
    }
    free(self);
    *self_p = NULL;
}

/* Runs one setup command on a fresh context; false on any failure. */
static bool s_setup_ok(redisContext *ctx, redisReply *r, const char *what) {
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        log_warn("redis: %s failed: %s", what,
                 r ? (r->str ? r->str : "error") : (ctx->errstr[0] ? ctx->errstr : "I/O"));
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Makes sure a context exists: at most one connect attempt, none while backing off. */
static int s_ensure(rds_t *self) {
    if (self->ctx)
        return 0;
    if (self->url_invalid)
        return -EINVAL;
    int64_t now = util_mono_ms();
    if (now < self->next_connect_ms)
        return -EAGAIN;
    struct timeval ct = {.tv_sec = 0, .tv_usec = RDS_CONNECT_TIMEOUT_MS * 1000};
    redisContext *ctx = redisConnectWithTimeout(self->host, self->port, ct);
    if (!ctx || ctx->err) {
        log_debug("redis: connect %s:%d failed: %s", self->host, self->port,
                  ctx ? ctx->errstr : "out of memory");
        goto fail;
    }
    struct timeval io = {.tv_sec = RDS_IO_TIMEOUT_MS / 1000,
                         .tv_usec = (RDS_IO_TIMEOUT_MS % 1000) * 1000};
    if (redisSetTimeout(ctx, io) != REDIS_OK) {
        log_debug("redis: set timeout failed: %s", ctx->errstr);
        goto fail;
    }
    if (self->password) {
        redisReply *r = self->user ? redisCommand(ctx, "AUTH %s %s", self->user, self->password)
                                   : redisCommand(ctx, "AUTH %s", self->password);
        if (!s_setup_ok(ctx, r, "AUTH"))
            goto fail;
    }
    if (self->db > 0 && !s_setup_ok(ctx, redisCommand(ctx, "SELECT %ld", self->db), "SELECT"))
        goto fail;
    self->ctx = ctx;
    self->next_connect_ms = 0;
    return 0;
fail:
    redisFree(ctx);
    self->next_connect_ms = now + RDS_BACKOFF_MS;
    return -EIO;
}

/* True when a failed context most likely died before the command reached Redis (closed or
 * reset by the peer), so sending it again on a new connection is safe; a timeout is not. */
static bool s_retryable(const redisContext *ctx) {
    if (ctx->err == REDIS_ERR_EOF)
        return true;
    return ctx->err == REDIS_ERR_IO && (errno == ECONNRESET || errno == EPIPE);
}

typedef redisReply *(*s_run_fn)(redisContext *ctx, void *arg);

static redisReply *s_run(rds_t *self, s_run_fn run, void *arg) {
    if (!self)
        return NULL;
    if (self->pending > 0 || self->append_failed) {
        /* Appended commands without their pipeline would answer this one: start clean. */
        log_warn("redis: command issued with %d appended commands pending", self->pending);
        s_drop(self);
    }
    bool fresh = self->ctx == NULL;
    for (;;) {
        if (s_ensure(self) < 0)
            return NULL;
        redisReply *r = run(self->ctx, arg);
        if (!r) {
            bool retry = !fresh && s_retryable(self->ctx);
            log_debug("redis: %s", self->ctx->errstr[0] ? self->ctx->errstr : "I/O error");
            s_drop(self);
            if (retry) {
                fresh = true; /* the one reconnect of this call */
                continue;
            }
            /* A timeout: Redis accepts but does not answer (paused, overloaded). Back off as
             * after a failed connect, so the next requests do not each wait for it again. */
            self->next_connect_ms = util_mono_ms() + RDS_BACKOFF_MS;
            return NULL;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            log_debug("redis: error reply: %s", r->str ? r->str : "");
            freeReplyObject(r);
            return NULL;
        }
        return r;
    }
}

typedef struct {
    const char *fmt;
    va_list *ap;
} s_fmt_arg_t;

static redisReply *s_run_fmt(redisContext *ctx, void *arg) {
    s_fmt_arg_t *a = arg;
    va_list cp;
    va_copy(cp, *a->ap);
    redisReply *r = redisvCommand(ctx, a->fmt, cp);
    va_end(cp);
    return r;
}

redisReply *rds_command(rds_t *self, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    s_fmt_arg_t a = {fmt, &ap};
    redisReply *r = s_run(self, s_run_fmt, &a);
    va_end(ap);
    return r;
}

typedef struct {
    int argc;
    const char **argv;
    const size_t *argvlen;
} s_argv_arg_t;

static redisReply *s_run_argv(redisContext *ctx, void *arg) {
    s_argv_arg_t *a = arg;
    return redisCommandArgv(ctx, a->argc, a->argv, a->argvlen);
}

redisReply *rds_commandargv(rds_t *self, int argc, const char **argv, const size_t *argvlen) {
    s_argv_arg_t a = {argc, argv, argvlen};
    return s_run(self, s_run_argv, &a);
}

int rds_append(rds_t *self, const char *fmt, ...) {
    if (!self)
        return -EINVAL;
    if (self->append_failed)
        return -EIO;
    if (s_ensure(self) < 0) {
        self->append_failed = true;
        return -EIO;
    }
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAppendCommand(self->ctx, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        log_debug("redis: append failed: %s", self->ctx->errstr);
        self->append_failed = true;
        return -EIO;
    }
    self->pending++;
    return 0;
}

/* Reads all n replies even after an error reply, so the connection stays in step; any error
 * (I/O or a reply of type error) fails the whole pipeline, as rds_command would. */
int rds_pipeline(rds_t *self, int n, redisReply **ret_replies) {
    if (!self || n < 0 || (n > 0 && !ret_replies))
        return -EINVAL;
    if (n == 0 && self->pending == 0 && !self->append_failed)
        return 0;
    if (self->append_failed || n != self->pending || !self->ctx) {
        if (n != self->pending && !self->append_failed)
            log_error("redis: pipeline of %d with %d appended commands", n, self->pending);
        s_drop(self); /* discards whatever was buffered */
        return -EIO;
    }
    bool error_reply = false;
    for (int i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(self->ctx, &r) != REDIS_OK || !r) {
            log_debug("redis: pipeline: %s", self->ctx->errstr[0] ? self->ctx->errstr : "I/O");
            for (int j = 0; j < i; j++) {
                freeReplyObject(ret_replies[j]);
                ret_replies[j] = NULL;
            }
            s_drop(self);
            self->next_connect_ms = util_mono_ms() + RDS_BACKOFF_MS;
            return -EIO;
        }
        ret_replies[i] = r;
        if (ret_replies[i]->type == REDIS_REPLY_ERROR) {
            log_debug("redis: pipeline error reply: %s", ret_replies[i]->str);
            error_reply = true;
        }
    }
    self->pending = 0;
    if (error_reply) {
        for (int i = 0; i < n; i++) {
            freeReplyObject(ret_replies[i]);
            ret_replies[i] = NULL;
        }
        return -EIO;
    }
    return 0;
}

bool rds_lease(rds_t *self, const char *key, int ttl_ms, char lease[RDS_LEASE_LEN + 1]) {
    if (!self)
        return false;
    unsigned char rnd[RDS_LEASE_LEN / 2];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(lease, RDS_LEASE_LEN + 1, rnd, sizeof rnd);
    redisReply *rep = rds_command(self, "SET %s %s NX PX %d", key, lease, ttl_ms);
    bool ok = rep && rep->type == REDIS_REPLY_STATUS && rep->str && !strcmp(rep->str, "OK");
    if (rep)
        freeReplyObject(rep);
    return ok;
}
