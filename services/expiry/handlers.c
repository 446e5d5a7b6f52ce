/* expiry's request handlers, one per method of proto/expiry.proto, and their dispatch table.
 * Each reads straight through: check the actor, validate, one statement, answer. */
#include "expiry.h"

#include "expiry.pb-c.h"
#include "extranet/log.h"
#include "rules.h"
#include "store.h"

#include <errno.h>
#include <string.h>

#define LIST_DEFAULT 100
#define LIST_MAX     1000

/* Answers FORBIDDEN and returns false unless the actor may schedule/cancel. */
static bool s_may_schedule_or_reply(svc_call_t *call) {
    const Extranet__Actor *a = call->req->actor;
    if (a && expiry_may_schedule(a->kind))
        return true;
    svc_fail(call, EXTRANET__STATUS__FORBIDDEN, "expiry timers are managed by services only");
    return false;
}

/* The kinds-table row for kind with subject normalized into out, or NULL after answering
 * INVALID. */
static const expiry_kind_t *s_kind_subject_or_reply(svc_call_t *call, const char *kind,
                                                    const char *subject, char *out, size_t outlen) {
    const expiry_kind_t *k = expiry_kind_find(kind);
    if (!k) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "unknown timer kind");
        return NULL;
    }
    if (expiry_subject_normalize(k, subject, out, outlen) < 0) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "subject is not valid for kind %s", k->kind);
        return NULL;
    }
    return k;
}

/* Answers for a failed store call: out of request memory (a List too large for the arena), or
 * the database, whose failures pg_exec has logged already. */
static void s_store_failed(svc_call_t *call, int rc) {
    if (rc == -ENOMEM) {
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "too many timers; lower the limit");
        return;
    }
    svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "timer store unavailable, try again");
}

static void s_schedule(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Expiry__ScheduleRequest *rq = (const void *)call->msg;
    if (!s_may_schedule_or_reply(call))
        return;
    const Extranet__Expiry__Timer *tm = rq->timer;
    if (!tm) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "timer is required");
        return;
    }
    char subject[EXPIRY_SUBJECT_MAX + 1];
    const expiry_kind_t *k =
        s_kind_subject_or_reply(call, tm->kind, tm->subject, subject, sizeof subject);
    if (!k)
        return;
    if (!expiry_time_valid(tm->due_at)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "due_at must be an RFC 3339 date-time");
        return;
    }
    int rc = expiry_store_schedule(t->pg, k->kind, subject, tm->due_at);
    if (rc < 0) {
        s_store_failed(call, rc);
        return;
    }
    log_info("timer %s %s due at %s", k->kind, subject, tm->due_at);
    Extranet__Empty empty = EXTRANET__EMPTY__INIT;
    svc_reply_ok(call, &empty.base);
}

static void s_cancel(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Expiry__CancelRequest *rq = (const void *)call->msg;
    if (!s_may_schedule_or_reply(call))
        return;
    char subject[EXPIRY_SUBJECT_MAX + 1];
    const expiry_kind_t *k =
        s_kind_subject_or_reply(call, rq->kind, rq->subject, subject, sizeof subject);
    if (!k)
        return;
    int rc = expiry_store_cancel(t->pg, k->kind, subject);
    if (rc < 0) {
        s_store_failed(call, rc);
        return;
    }
    log_info("timer %s %s cancelled", k->kind, subject);
    Extranet__Empty empty = EXTRANET__EMPTY__INIT;
    svc_reply_ok(call, &empty.base);
}

static void s_list(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Expiry__ListRequest *rq = (const void *)call->msg;
    const Extranet__Actor *a = call->req->actor;
    if (!a || !expiry_may_list(a->kind)) {
        svc_fail(call, EXTRANET__STATUS__FORBIDDEN, "listing timers needs an admin");
        return;
    }
    if (!expiry_state_filter_valid(rq->state)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "state must be pending, done or cancelled");
        return;
    }
    if (strlen(rq->kind) > EXPIRY_KIND_MAX || strlen(rq->subject) > EXPIRY_SUBJECT_MAX) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "kind or subject too long");
        return;
    }
    if (rq->limit < 0 || rq->limit > LIST_MAX) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "limit must be within 0..%d", LIST_MAX);
        return;
    }
    int limit = rq->limit == 0 ? LIST_DEFAULT : rq->limit;
    Extranet__Expiry__ListReply reply = EXTRANET__EXPIRY__LIST_REPLY__INIT;
    int rc = expiry_store_list(t->pg, call->arena, rq->kind, rq->subject, rq->state, limit,
                               &reply.timers, &reply.n_timers);
    if (rc < 0) {
        s_store_failed(call, rc);
        return;
    }
    svc_reply_ok(call, &reply.base);
}

const svc_method_t expiry_methods[] = {
    {"expiry.Schedule", s_schedule, &extranet__expiry__schedule_request__descriptor},
    {"expiry.Cancel", s_cancel, &extranet__expiry__cancel_request__descriptor},
    {"expiry.List", s_list, &extranet__expiry__list_request__descriptor},
    {NULL, NULL, NULL},
};
