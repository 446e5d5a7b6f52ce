/* The service runtime: what every service's main.c calls. It reads the environment, logs,
 * migrates the service's schema, then runs EXTRANET_THREADS handler threads behind one
 * Majordomo I/O thread (one DEALER per broker per handler thread, so each handler thread is
 * one MDP worker; heartbeats are sent by the I/O thread even while a handler is busy), an
 * optional background tick thread, and exits cleanly on SIGTERM/SIGINT: it stops taking
 * requests (MDP DISCONNECT), finishes the ones in flight, then returns.
 *
 * Environment: EXTRANET_BROKER, EXTRANET_EVENTS_PUB, EXTRANET_PG, EXTRANET_REDIS,
 * EXTRANET_THREADS (default 4), EXTRANET_LOG, EXTRANET_DRAIN_MS (default 10000). */
#ifndef EXTRANET_SVC_H
#define EXTRANET_SVC_H
#include "extranet/arena.h"
#include "extranet/common.h"
#include "extranet/events.h"
#include "extranet/pg.h"
#include "extranet/rds.h"
#include "extranet/rpc.h"
#include "envelope.pb-c.h"
#include <stdbool.h>

/* What one thread (handler or tick) owns. Every member is owned by the runtime. */
typedef struct svc_thread {
    int index;          /* 0..threads-1; -1 for the tick thread */
    pg_t *pg;           /* NULL when the service has no schema */
    rds_t *redis;       /* NULL when the service does not use Redis */
    rpc_t *rpc;         /* calls to other services */
    ev_pub_t *events;   /* publishing */
    void *user;         /* the service's own per-thread state (thread_init/fini) */
} svc_thread_t;

/* One request being handled. `req` and `msg` are borrowed and live in `arena` until the reply
 * has been sent. The handler answers with exactly one svc_reply_ok / svc_fail. */
typedef struct svc_call {
    const Extranet__Request *req;      /* the envelope: request_id, method, actor, deadline */
    const ProtobufCMessage *msg;       /* req->payload decoded with the method's descriptor */
    arena_t *arena;
    /* set by svc_reply_ok / svc_fail: */
    Extranet__Status status;
    const char *message;
    ProtobufCBinaryData payload;
    int retry_after_s;
    bool answered;
} svc_call_t;

typedef void (*svc_handler_fn)(svc_thread_t *t, svc_call_t *call);

/* A dispatch table row: full method name, handler, request message type ({NULL} ends). */
typedef struct {
    const char *method;                              /* "identity.Login" */
    svc_handler_fn fn;
    const ProtobufCMessageDescriptor *request;
} svc_method_t;

typedef struct {
    const char *name;                    /* service name registered with the broker */
    const char *usage;                   /* --help text: the service's own env variables */
    const svc_method_t *methods;
    const char *schema;                  /* PostgreSQL schema; NULL = no database */
    const pg_migration_t *migrations;    /* usually service_migrations */
    const pg_stmt_t *statements;         /* prepared on every connection */
    bool use_redis;
    int (*start)(svc_thread_t *t);       /* once, after migrations, before workers; may be NULL */
    int (*thread_init)(svc_thread_t *t); /* may be NULL */
    void (*thread_fini)(svc_thread_t *t);/* may be NULL */
    void (*tick)(svc_thread_t *t);       /* background work every tick_ms on its own thread */
    int tick_ms;
} svc_def_t;

/* Runs the service until SIGTERM/SIGINT. Returns the process exit code. */
int svc_main(const svc_def_t *def, int argc, char **argv);

/* True once shutdown has begun (for long loops in tick handlers). */
bool svc_stopping(void);

/* Answers OK with msg (may be NULL for an empty reply), packed into the call's arena. */
void svc_reply_ok(svc_call_t *call, const ProtobufCMessage *msg);
/* Answers with a non-OK status and a message safe to show to the caller. */
void svc_fail(svc_call_t *call, Extranet__Status status, const char *fmt, ...) PRINTF_LIKE(3, 4);

/* Remaining time of the call in ms (may be <= 0), for nested calls and statement timeouts. */
int64_t svc_call_remaining_ms(const svc_call_t *call);
/* The absolute deadline (epoch ms) of a call made while answering this one: its remaining
 * time minus margin_ms (to answer in), at least 100 ms, at most cap_ms when cap_ms > 0. */
int64_t svc_call_nested_deadline_ms(const svc_call_t *call, int64_t margin_ms, int64_t cap_ms);
#endif
