/* The producer side of audit (audit.h): audit_record() puts one record into the service's
 * audit_outbox inside the caller's transaction; audit_relay_tick() ships the outbox to
 * audit.Append and deletes rows only after the OK, in the transaction that locked them. */
#include "extranet/audit.h"

#include "audit.pb-c.h"
#include "extranet/log.h"
#include "extranet/svc.h"
#include "extranet/util.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_CALL_MS    3000 /* deadline of one Append */
#define RELAY_BACKOFF_MS 2000 /* pause after a failed Append (audit down) */
#define RELAY_BUDGET_MS  2000 /* work per tick, so the tick's other duties are not starved */

const char *audit_actor_kind(Extranet__ActorKind kind) {
    switch (kind) {
    case EXTRANET__ACTOR_KIND__ADMIN:
        return "admin";
    case EXTRANET__ACTOR_KIND__EMPLOYEE:
        return "employee";
    case EXTRANET__ACTOR_KIND__EXTRANET:
        return "extranet";
    case EXTRANET__ACTOR_KIND__SYSTEM:
        return "system";
    default:
        return "anonymous";
    }
}

static bool s_field_ok(const char *s) {
    return !s || strlen(s) <= AUDIT_FIELD_MAX;
}

/* True when text is a JSON object (what details must be). */
static bool s_details_ok(const char *text) {
    if (strlen(text) > AUDIT_DETAILS_MAX)
        return false;
    json_error_t err;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    bool ok = j && json_is_object(j);
    json_decref(j);
    return ok;
}

int audit_record(pg_t *tx, const Extranet__Actor *actor, const char *action,
                 const char *target_type, const char *target_id, const char *group_id,
                 const char *outcome, const char *request_id, const char *details_json) {
    if (!tx || !action || !action[0])
        return -EINVAL;
    const char *details = details_json ? details_json : "{}";
    if (!s_field_ok(action) || !s_field_ok(target_type) || !s_field_ok(target_id) ||
        !s_field_ok(group_id) || !s_field_ok(outcome) || !s_field_ok(request_id) ||
        (actor && (!s_field_ok(actor->user_id) || !s_field_ok(actor->client_ip) ||
                   !s_field_ok(actor->session_id))) ||
        !s_details_ok(details)) {
        log_error("audit record %s refused: a field is too long or details is not an object",
                  action);
        return -EINVAL;
    }
    char event_id[37];
    util_uuid_v4(event_id);
#define OR_EMPTY(s) ((s) ? (s) : "")
    const char *p[12] = {
        event_id,
        actor ? OR_EMPTY(actor->user_id) : "",
        audit_actor_kind(actor ? actor->kind : EXTRANET__ACTOR_KIND__ANONYMOUS),
        actor ? OR_EMPTY(actor->client_ip) : "",
        actor ? OR_EMPTY(actor->session_id) : "",
        action,
        OR_EMPTY(target_type),
        OR_EMPTY(target_id),
        OR_EMPTY(group_id),
        OR_EMPTY(outcome),
        OR_EMPTY(request_id),
        details,
    };
#undef OR_EMPTY
    return pg_exec(tx, "audit_outbox_insert", p, NULL);
}

/* Fills the Append request from the locked rows (strings in the arena). */
static int s_batch_fill(arena_t *a, PGresult *res, Extranet__Audit__AppendRequest *req,
                        char **ret_ids) {
    int n = PQntuples(res);
    req->records = arena_alloc(a, sizeof(Extranet__Audit__Record *) * (size_t)n);
    Extranet__Audit__Record *recs = arena_alloc(a, sizeof(*recs) * (size_t)n);
    char **ids = arena_alloc(a, sizeof(char *) * (size_t)n);
    size_t idlen = 3;
    if (!req->records || !recs || !ids)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        Extranet__Audit__Record *r = &recs[i];
        extranet__audit__record__init(r);
        r->event_id = ids[i] = pg_col_str(a, res, i, "event_id");
        r->time = pg_col_str(a, res, i, "time");
        r->actor_id = pg_col_str(a, res, i, "actor_id");
        r->actor_kind = pg_col_str(a, res, i, "actor_kind");
        r->actor_ip = pg_col_str(a, res, i, "actor_ip");
        r->actor_session = pg_col_str(a, res, i, "actor_session");
        r->action = pg_col_str(a, res, i, "action");
        r->target_type = pg_col_str(a, res, i, "target_type");
        r->target_id = pg_col_str(a, res, i, "target_id");
        r->group_id = pg_col_str(a, res, i, "group_id");
        r->outcome = pg_col_str(a, res, i, "outcome");
        r->request_id = pg_col_str(a, res, i, "request_id");
        r->details = pg_col_str(a, res, i, "details");
        r->service = (char *)log_service();
        if (!r->event_id || !r->time || !r->actor_id || !r->actor_kind || !r->actor_ip ||
            !r->actor_session || !r->action || !r->target_type || !r->target_id || !r->group_id ||
            !r->outcome || !r->request_id || !r->details)
            return -ENOMEM;
        req->records[i] = r;
        idlen += strlen(r->event_id) + 1;
    }
    req->n_records = (size_t)n;
    /* "{uuid,uuid,...}": uuids from our own uuid column need no quoting. */
    char *arr = arena_alloc(a, idlen);
    if (!arr)
        return -ENOMEM;
    char *q = arr;
    *q++ = '{';
    for (int i = 0; i < n; i++) {
        size_t k = strlen(ids[i]);
        if (i)
            *q++ = ',';
        memcpy(q, ids[i], k);
        q += k;
    }
    *q++ = '}';
    *q = '\0';
    *ret_ids = arr;
    return 0;
}

/* One batch: lock, ship, delete, commit. Returns the rows shipped (0 = outbox empty) or a
 * negative code (rolled back: the rows stay for the next attempt). */
static int s_relay_batch(svc_thread_t *t, arena_t *a) {
    char lim[16];
    snprintf(lim, sizeof lim, "%d", AUDIT_BATCH_MAX);
    const char *p[1] = {lim};
    PGresult *res = NULL;
    int rc = pg_begin(t->pg);
    if (rc != 0)
        return rc;
    if ((rc = pg_exec(t->pg, "audit_outbox_batch", p, &res)) != 0)
        goto fail;
    int n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        pg_rollback(t->pg);
        return 0;
    }
    Extranet__Audit__AppendRequest req = EXTRANET__AUDIT__APPEND_REQUEST__INIT;
    char *ids = NULL;
    rc = s_batch_fill(a, res, &req, &ids);
    PQclear(res);
    res = NULL;
    if (rc != 0)
        goto fail;
    /* The rows stay locked while audit appends: another copy of this service skips them
     * (SKIP LOCKED) instead of shipping them twice at once. */
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    char err[160] = "";
    rc = rpc_call(t->rpc, "audit.Append", &sys, NULL, util_now_ms() + RELAY_CALL_MS, &req.base,
                  NULL, NULL, err, sizeof err);
    if (rc != 0) {
        log_warn("audit.Append of %d records failed (%d: %s); they stay in the outbox", n, rc, err);
        goto fail;
    }
    const char *d[1] = {ids};
    if ((rc = pg_exec(t->pg, "audit_outbox_delete", d, NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0) {
        /* Shipped but not deleted: they ship again and audit drops them as duplicates. */
        log_warn("shipped audit records not deleted from the outbox (%d)", rc);
        pg_rollback(t->pg);
        return rc;
    }
    return n;
fail:
    PQclear(res);
    pg_rollback(t->pg);
    return rc;
}

int audit_relay_tick(svc_thread_t *t) {
    static _Thread_local int64_t next_try_ms;
    if (!t || !t->pg || !t->rpc)
        return -EINVAL;
    int64_t now = util_mono_ms();
    if (now < next_try_ms)
        return 0;
    arena_t *a = arena_new((size_t)8 * 1024 * 1024);
    if (!a)
        return -ENOMEM;
    int total = 0, rc = 0;
    int64_t until = now + RELAY_BUDGET_MS;
    while (!svc_stopping() && util_mono_ms() < until) {
        rc = s_relay_batch(t, a);
        arena_reset(a);
        if (rc <= 0)
            break;
        total += rc;
        if (rc < AUDIT_BATCH_MAX)
            break;
    }
    arena_destroy(&a);
    if (rc < 0) {
        next_try_ms = util_mono_ms() + RELAY_BACKOFF_MS;
        return rc;
    }
    if (total > 0)
        log_debug("%d audit records shipped", total);
    return total;
}
