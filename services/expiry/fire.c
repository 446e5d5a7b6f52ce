/* Firing due timers on the tick thread: claim a batch (a short transaction of its own), then call
 * each timer's owner with no database lock held, then record done or a retry with backoff, each
 * only under the same claim. Runs outside any request, so expiry calling identity while identity
 * calls expiry.Schedule is never a cycle of requests waiting on each other. */
#include "expiry.h"

#include "extranet/audit.h"
#include "extranet/log.h"
#include "extranet/status.h"
#include "extranet/util.h"
#include "rules.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

expiry_config_t expiry_config = {
    .call_ms = 5000,
    .lease_ms = 30000,
    .batch = 16,
    .backoff_ms = 1000,
    .backoff_max_ms = 60000,
    .kinds = "{}",
};

/* A call is only started while the lease leaves room for its whole deadline plus this margin,
 * so no copy can claim the row again while our call may still be running. */
#define LEASE_MARGIN_MS 1000
/* One tick handles at most this many batches before giving the thread back. */
#define MAX_ROUNDS 64

/* Jitter only spreads retries out; it needs no secrecy. Used by the one tick thread alone. */
static uint32_t s_rand(void) {
    static uint32_t x;
    if (x == 0)
        x = (uint32_t)util_mono_ms() ^ ((uint32_t)getpid() << 16) ^ 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

static void s_record_retry(svc_thread_t *t, const expiry_claim_t *c, const char *error) {
    int64_t delay = expiry_backoff_ms(c->attempts, expiry_config.backoff_ms,
                                      expiry_config.backoff_max_ms, s_rand());
    bool applied = false;
    if (expiry_store_retry(t->pg, c, delay, error, &applied) < 0) {
        log_warn("timer %s: could not record the failed attempt; due again after its lease", c->id);
        return;
    }
    log_warn("timer %s (%s %s) attempt %d failed: %s; next in %" PRId64 " ms%s", c->id, c->kind,
             c->subject, c->attempts, error, delay, applied ? "" : " (claim superseded)");
}

/* Marks the claim done and, when that applied, writes its timer.fired audit record in the
 * same transaction (a superseded claim fired nothing that counts). */
static int s_record_done(svc_thread_t *t, const expiry_claim_t *c, const Extranet__Actor *actor,
                         const char *rid, const char *note, bool *ret_applied) {
    /* kind comes from the kinds table and subject is uuids joined by ':' (both validated),
     * so neither needs JSON escaping. */
    char details[EXPIRY_KIND_MAX + EXPIRY_SUBJECT_MAX + 64];
    snprintf(details, sizeof details, "{\"kind\":\"%s\",\"subject\":\"%s\",\"attempts\":%d}",
             c->kind, c->subject, c->attempts);
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 || (rc = expiry_store_done(t->pg, c, note, ret_applied)) != 0 ||
        (*ret_applied && (rc = audit_record(t->pg, actor, "timer.fired", "timer", c->id, NULL,
                                            note ? "fail" : "ok", rid, details)) != 0) ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        return rc;
    }
    return 0;
}

static void s_fire_one(svc_thread_t *t, const expiry_claim_t *c) {
    const expiry_kind_t *k = expiry_kind_find(c->kind);
    ProtobufCMessage *req = NULL;
    if (!k || expiry_kind_build_request(k, c->subject, &req) < 0) {
        /* Only a row written by hand gets here (claims are filtered by known kinds, Schedule
         * validates subjects): retry slowly and say why, rather than drop a timer. */
        s_record_retry(t, c, k ? "invalid subject for its kind" : "unknown kind");
        return;
    }
    char rid[37];
    util_uuid_v4(rid);
    log_set_request_id(rid);
    Extranet__Actor actor = EXTRANET__ACTOR__INIT;
    actor.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    char err[256] = "";
    int rc = rpc_call(t->rpc, k->method, &actor, rid, util_now_ms() + expiry_config.call_ms, req,
                      NULL, NULL, err, sizeof err);
    free(req);

    char text[400];
    if (rc == 0)
        text[0] = '\0';
    else if (ERR_IS_STATUS(rc))
        snprintf(text, sizeof text, "%s: %s", status_name(ERR_TO_STATUS(rc)), err);
    else
        snprintf(text, sizeof text, "transport error %d", -rc);

    if (expiry_outcome_of(rc) == EXPIRY_OUTCOME_RETRY) {
        s_record_retry(t, c, text);
    } else {
        bool applied = false;
        if (s_record_done(t, c, &actor, rid, rc == 0 ? NULL : text, &applied) < 0)
            log_warn("timer %s fired but could not be marked done; it fires again after its "
                     "lease (the owner's method is idempotent)",
                     c->id);
        else
            log_info("timer %s (%s %s) fired: %s -> %s%s", c->id, c->kind, c->subject, k->method,
                     rc == 0 ? "ok" : text, applied ? "" : " (claim superseded, left pending)");
    }
    log_set_request_id(NULL);
}

/* Gives back the claims [from, n) that were not called: they are due again at once. */
static void s_release_rest(svc_thread_t *t, const expiry_claim_t *claims, int from, int n) {
    for (int i = from; i < n; i++)
        if (expiry_store_release(t->pg, &claims[i], NULL) < 0)
            log_warn("timer %s: could not release its claim; due again after its lease",
                     claims[i].id);
}

void expiry_fire_tick(svc_thread_t *t) {
    if (!t->pg || !t->rpc)
        return;
    int batch = expiry_config.batch;
    expiry_claim_t *claims = calloc((size_t)batch, sizeof *claims);
    if (!claims) {
        log_error("out of memory for %d claims", batch);
        return;
    }
    for (int round = 0; round < MAX_ROUNDS && !svc_stopping(); round++) {
        int n = 0;
        if (expiry_store_claim(t->pg, batch, expiry_config.lease_ms, expiry_config.kinds, claims,
                               &n) < 0)
            break; /* logged by pg_exec; the next tick tries again */
        int64_t claimed_at = util_mono_ms();
        int i = 0;
        for (; i < n; i++) {
            int64_t used = util_mono_ms() - claimed_at;
            if (svc_stopping() ||
                used + expiry_config.call_ms + LEASE_MARGIN_MS > expiry_config.lease_ms)
                break;
            s_fire_one(t, &claims[i]);
        }
        s_release_rest(t, claims, i, n);
        if (n < batch)
            break; /* nothing more is due right now */
    }
    free(claims);
    (void)audit_relay_tick(t); /* logs its own failures; rows wait in the outbox */
}
