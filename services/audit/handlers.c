/* audit's request handlers, one per method of proto/audit.proto, and their dispatch table:
 * Append (relays, SYSTEM only), Query, Export and Verify (admins; SYSTEM too for tools),
 * QueryGroup (a group's owner, after membership.Check; admins). */
#include "audit_svc.h"

#include "audit.pb-c.h"
#include "chain.h"
#include "extranet/audit.h"
#include "extranet/iso.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUERY_DEFAULT  100
#define QUERY_MAX      1000
#define EXPORT_DEFAULT 1000
#define EXPORT_MAX     5000
#define VERIFY_CHUNK   2000
#define APPEND_MAX     1000
#define FILTER_MAX     256
#define NOT_FOUND_MSG  "not found" /* membership's R1 text: hidden = missing, same body */

static bool s_actor_is(svc_call_t *call, bool admin_ok) {
    const Extranet__Actor *a = call->req->actor;
    if (a && (a->kind == EXTRANET__ACTOR_KIND__SYSTEM ||
              (admin_ok && a->kind == EXTRANET__ACTOR_KIND__ADMIN)))
        return true;
    /* Employees and extranet users alike: the audit log is for admins (README.md). */
    svc_fail(call, EXTRANET__STATUS__FORBIDDEN, "the audit log is for admins only");
    return false;
}

static void s_db_failed(svc_call_t *call, int rc) {
    if (rc == -ENOMEM)
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "too many records; lower the limit");
    else
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "audit store unavailable, try again");
}

/* --- Append --------------------------------------------------------------------------- */

/* Why record r cannot be appended, or NULL. */
static const char *s_record_invalid(const Extranet__Audit__Record *r) {
    if (!util_uuid_valid(r->event_id) || !chain_uuid_canonical(r->event_id))
        return "event_id must be a lower-case uuid";
    if (!chain_time_valid(r->time))
        return "time must be YYYY-MM-DDTHH:MM:SS.ffffffZ";
    if (!r->action[0])
        return "action is required";
    const char *f[] = {r->actor_id, r->actor_kind,  r->actor_ip,  r->actor_session,
                       r->action,   r->target_type, r->target_id, r->group_id,
                       r->outcome,  r->request_id,  r->service};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (strlen(f[i]) > AUDIT_FIELD_MAX)
            return "a field is too long";
    if (strlen(r->details) > AUDIT_DETAILS_MAX)
        return "details is too long";
    return NULL;
}

static bool s_in(char *const *ids, size_t n, const char *id) {
    for (size_t i = 0; i < n; i++)
        if (!strcasecmp(ids[i], id))
            return true;
    return false;
}

static void s_append(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Audit__AppendRequest *rq = (const void *)call->msg;
    if (!s_actor_is(call, false))
        return;
    if (rq->n_records > APPEND_MAX) {
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "at most %d records per Append", APPEND_MAX);
        return;
    }
    Extranet__Audit__AppendReply reply = EXTRANET__AUDIT__APPEND_REPLY__INIT;
    if (rq->n_records == 0) {
        svc_reply_ok(call, &reply.base);
        return;
    }
    size_t len = 3;
    for (size_t i = 0; i < rq->n_records; i++) {
        const char *why = s_record_invalid(rq->records[i]);
        if (why) {
            svc_fail(call, EXTRANET__STATUS__INVALID, "record %zu: %s", i, why);
            return;
        }
        len += 37;
    }
    char *arr = arena_alloc(call->arena, len), *q = arr;
    /* this batch's ids, lower-cased as PostgreSQL prints them */
    char **seen = arena_alloc(call->arena, sizeof(char *) * rq->n_records);
    if (!arr || !seen) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    *q++ = '{';
    /* every id was checked to be a 36-char uuid: len has room for each plus its comma */
    for (size_t i = 0; i < rq->n_records; i++)
        q += snprintf(q, (size_t)(arr + len - q), "%s%s", i ? "," : "", rq->records[i]->event_id);
    *q++ = '}';
    *q = '\0';

    int64_t seq = 0;
    uint8_t prev[CHAIN_HASH_LEN], hash[CHAIN_HASH_LEN];
    char **dups = NULL;
    size_t ndups = 0, nseen = 0;
    int rc;
    /* The head lock serializes appends across every audit copy: the chain cannot fork, and
     * the de-duplication below sees every record committed before it. */
    if ((rc = pg_begin(t->pg)) != 0 || (rc = audit_store_head_lock(t->pg, &seq, prev)) != 0 ||
        (rc = audit_store_existing(t->pg, call->arena, arr, &dups, &ndups)) != 0)
        goto fail;
    for (size_t i = 0; i < rq->n_records; i++) {
        const Extranet__Audit__Record *r = rq->records[i];
        if (s_in(dups, ndups, r->event_id) || s_in(seen, nseen, r->event_id)) {
            reply.duplicates++;
            continue;
        }
        seen[nseen++] = r->event_id;
        chain_record_t c = {seq + 1,          r->event_id,
                            r->time,          r->actor_id,
                            r->actor_kind,    r->actor_ip,
                            r->actor_session, r->action,
                            r->target_type,   r->target_id,
                            r->group_id,      r->outcome,
                            r->request_id,    r->details[0] ? r->details : "{}",
                            r->service};
        chain_hash(prev, &c, hash);
        if ((rc = audit_store_insert(t->pg, &c, prev, hash)) != 0)
            goto fail;
        seq++;
        memcpy(prev, hash, CHAIN_HASH_LEN);
        reply.appended++;
    }
    if (reply.appended > 0 && (rc = audit_store_head_set(t->pg, seq, prev)) != 0)
        goto fail;
    if ((rc = pg_commit(t->pg)) != 0)
        goto fail;
    if (reply.duplicates)
        log_info("append: %d new, %d duplicates dropped", reply.appended, reply.duplicates);
    svc_reply_ok(call, &reply.base);
    return;
fail:
    pg_rollback(t->pg);
    s_db_failed(call, rc);
}

/* --- Query / Export ------------------------------------------------------------------- */

/* A since/until bound: "" or an RFC 3339-looking text PostgreSQL will parse. */
static bool s_time_filter_ok(const char *s) {
    if (!s[0])
        return true;
    if (strlen(s) > 40 || s[0] < '0' || s[0] > '9')
        return false;
    return strspn(s, "0123456789-:.TZtz+ ") == strlen(s);
}

/* A since/until bound: empty, or an RFC 3339-looking text PostgreSQL will parse. */
static bool s_paging_or_reply(svc_call_t *call, const char *const fields[8], const char *cursor,
                              int32_t limit, int def, int max, audit_filter_t *f,
                              int64_t *ret_after, int *ret_limit) {
    for (int i = 0; i < 8; i++)
        if (strlen(fields[i]) > FILTER_MAX) {
            svc_fail(call, EXTRANET__STATUS__INVALID, "a filter is too long");
            return false;
        }
    *f = (audit_filter_t){fields[0], fields[1], fields[2], fields[3],
                          fields[4], fields[5], fields[6], fields[7]};
    if (!s_time_filter_ok(f->since) || !s_time_filter_ok(f->until)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "since and until must be RFC 3339 date-times");
        return false;
    }
    *ret_after = 0;
    if (cursor[0]) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(cursor, &end, 10);
        if (errno || *end || v < 0 || strlen(cursor) > 19) {
            svc_fail(call, EXTRANET__STATUS__INVALID, "invalid cursor");
            return false;
        }
        *ret_after = v;
    }
    if (limit < 0 || limit > max) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "limit must be within 1..%d", max);
        return false;
    }
    *ret_limit = limit ? limit : def;
    return true;
}

/* next_cursor: the last seq when the page is full (there may be more), else "". */
static char *s_next_cursor(arena_t *a, Extranet__Audit__Record **recs, size_t n, int limit) {
    if (n == 0 || (int)n < limit)
        return arena_strdup(a, "");
    return arena_printf(a, "%" PRId64, recs[n - 1]->seq);
}

/* The filtered, paged query both Query and QueryGroup answer with (fields: actor, action,
 * group, target type, target id, since, until, request id). */
static void s_query_reply(svc_thread_t *t, svc_call_t *call, const char *const fields[8],
                          const char *cursor, int32_t limit_in) {
    audit_filter_t f;
    int64_t after;
    int limit;
    if (!s_paging_or_reply(call, fields, cursor, limit_in, QUERY_DEFAULT, QUERY_MAX, &f, &after,
                           &limit))
        return;
    Extranet__Audit__QueryReply reply = EXTRANET__AUDIT__QUERY_REPLY__INIT;
    int rc = audit_store_query(t->pg, call->arena, &f, after, INT64_MAX, limit, &reply.records,
                               &reply.n_records);
    if (rc != 0) {
        s_db_failed(call, rc);
        return;
    }
    reply.next_cursor = s_next_cursor(call->arena, reply.records, reply.n_records, limit);
    if (!reply.next_cursor) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

static void s_query(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Audit__QueryRequest *rq = (const void *)call->msg;
    if (!s_actor_is(call, true))
        return;
    const char *fields[8] = {rq->actor_id,  rq->action, rq->group_id, rq->target_type,
                             rq->target_id, rq->since,  rq->until,    rq->request_id};
    s_query_reply(t, call, fields, rq->cursor, rq->limit);
}

/* May the caller read group gid's records? Admins and SYSTEM: yes. Anyone else must be the
 * group's owner per the runtime's check library (iso_role: mem:{user} when this copy has
 * Redis, else membership.Check as SYSTEM); every other answer, a malformed gid included,
 * replies NOT_FOUND exactly like a missing group (R1). */
static bool s_group_reader_or_reply(svc_thread_t *t, svc_call_t *call, const char *gid) {
    const Extranet__Actor *a = call->req->actor;
    if (!util_uuid_valid(gid)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, NOT_FOUND_MSG);
        return false;
    }
    if (a && (a->kind == EXTRANET__ACTOR_KIND__ADMIN || a->kind == EXTRANET__ACTOR_KIND__SYSTEM))
        return true;
    if (!a || !a->user_id || !util_uuid_valid(a->user_id)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, NOT_FOUND_MSG);
        return false;
    }
    iso_role_t role = ISO_ROLE_NONE;
    if (iso_role(t->redis, t->rpc, call->req->request_id, svc_call_nested_deadline_ms(call, 200, 0),
                 a->user_id, gid, &role) != 0) {
        svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "membership unavailable, try again");
        return false;
    }
    if (role != ISO_ROLE_OWNER) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, NOT_FOUND_MSG);
        return false;
    }
    return true;
}

static void s_query_group(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Audit__GroupQueryRequest *rq = (const void *)call->msg;
    if (!s_group_reader_or_reply(t, call, rq->gid))
        return;
    /* group_id is the path's, lower-cased as the producers write it (a uuid, checked above) */
    char *gid = arena_strdup(call->arena, rq->gid);
    if (!gid) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (char *c = gid; *c; c++)
        if (*c >= 'A' && *c <= 'F')
            *c = (char)(*c - 'A' + 'a');
    const char *fields[8] = {rq->actor_id,  rq->action, gid,       rq->target_type,
                             rq->target_id, rq->since,  rq->until, rq->request_id};
    s_query_reply(t, call, fields, rq->cursor, rq->limit);
}

#define CSV_COLUMNS                                                                                \
    "seq,event_id,time,actor_id,actor_kind,actor_ip,actor_session,action,target_type,target_id,"   \
    "group_id,outcome,request_id,service,details,prev_hash,hash\r\n"

/* Appends s as one RFC 4180 field (quoted when it holds a comma, quote, CR or LF). */
static int s_csv_field(char **buf, size_t *len, size_t *cap, const char *s, bool last) {
    size_t need = *len + 2 * strlen(s) + 5;
    if (need > *cap) {
        size_t ncap = need * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    char *p = *buf + *len;
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    if (quote)
        *p++ = '"';
    for (; *s; s++) {
        if (*s == '"')
            *p++ = '"';
        *p++ = *s;
    }
    if (quote)
        *p++ = '"';
    if (last) {
        *p++ = '\r';
        *p++ = '\n';
    } else {
        *p++ = ',';
    }
    *p = '\0'; /* need counted it: the text stays a C string after every field */
    *len = (size_t)(p - *buf);
    return 0;
}

/* The page as CSV or JSON lines, a new malloc'd string (caller frees); NULL on OOM. */
static char *s_render(Extranet__Audit__Record **recs, size_t n, bool csv, bool header) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[0] = '\0';
    if (csv && header) {
        len = strlen(CSV_COLUMNS);
        memcpy(buf, CSV_COLUMNS, len + 1);
    }
    for (size_t i = 0; i < n; i++) {
        const Extranet__Audit__Record *r = recs[i];
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRId64, r->seq);
        const char *cols[17] = {
            seq,          r->event_id,      r->time,       r->actor_id,    r->actor_kind,
            r->actor_ip,  r->actor_session, r->action,     r->target_type, r->target_id,
            r->group_id,  r->outcome,       r->request_id, r->service,     r->details,
            r->prev_hash, r->hash};
        if (csv) {
            for (int c = 0; c < 17; c++)
                if (s_csv_field(&buf, &len, &cap, cols[c], c == 16) != 0)
                    goto oom;
            continue;
        }
        json_t *o = json_object();
        if (!o)
            goto oom;
        static const char *const names[17] = {
            "seq",           "event_id", "time",        "actor_id",  "actor_kind", "actor_ip",
            "actor_session", "action",   "target_type", "target_id", "group_id",   "outcome",
            "request_id",    "service",  "details",     "prev_hash", "hash"};
        int bad = json_object_set_new(o, names[0], json_integer(r->seq));
        for (int c = 1; c < 17 && !bad; c++)
            bad = json_object_set_new(o, names[c], json_string(cols[c]));
        char *line = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!line)
            goto oom;
        size_t k = strlen(line);
        if (len + k + 2 > cap) {
            size_t ncap = (len + k + 2) * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(line);
                goto oom;
            }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + len, line, k);
        len += k;
        buf[len++] = '\n';
        buf[len] = '\0';
        free(line);
    }
    return buf;
oom:
    free(buf);
    return NULL;
}

static void s_export(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Audit__ExportRequest *rq = (const void *)call->msg;
    if (!s_actor_is(call, true))
        return;
    bool csv = !strcmp(rq->format, "csv");
    if (!csv && rq->format[0] && strcmp(rq->format, "jsonl") != 0) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "format must be jsonl or csv");
        return;
    }
    const char *fields[8] = {rq->actor_id,  rq->action, rq->group_id, rq->target_type,
                             rq->target_id, rq->since,  rq->until,    rq->request_id};
    audit_filter_t f;
    int64_t after;
    int limit;
    if (!s_paging_or_reply(call, fields, rq->cursor, rq->limit, EXPORT_DEFAULT, EXPORT_MAX, &f,
                           &after, &limit))
        return;
    Extranet__Audit__Record **recs = NULL;
    size_t n = 0;
    int rc = audit_store_query(t->pg, call->arena, &f, after, INT64_MAX, limit, &recs, &n);
    if (rc != 0) {
        s_db_failed(call, rc);
        return;
    }
    Extranet__Audit__ExportReply reply = EXTRANET__AUDIT__EXPORT_REPLY__INIT;
    reply.format = csv ? "csv" : "jsonl";
    reply.content_type = csv ? "text/csv" : "application/x-ndjson";
    reply.count = (int32_t)n;
    reply.next_cursor = s_next_cursor(call->arena, recs, n, limit);
    char *text = s_render(recs, n, csv, !rq->cursor[0]);
    reply.data = text ? arena_strdup(call->arena, text) : NULL;
    free(text);
    if (!reply.data || !reply.next_cursor) {
        svc_fail(call, EXTRANET__STATUS__TOO_LARGE, "export page too large; lower the limit");
        return;
    }
    svc_reply_ok(call, &reply.base);
}

/* --- Verify --------------------------------------------------------------------------- */

static bool s_hex32(const char *hex, uint8_t out[CHAIN_HASH_LEN]) {
    size_t n = 0;
    return sodium_hex2bin(out, CHAIN_HASH_LEN, hex, strlen(hex), NULL, &n, NULL) == 0 &&
           n == CHAIN_HASH_LEN;
}

/* Checks one stored record against the running chain; the reason or NULL. */
static const char *s_check(const Extranet__Audit__Record *r, int64_t want_seq,
                           const uint8_t prev[CHAIN_HASH_LEN], uint8_t ret_hash[CHAIN_HASH_LEN],
                           char *why, size_t whylen) {
    if (r->seq != want_seq) {
        snprintf(why, whylen, "record %" PRId64 " is missing (next stored is %" PRId64 ")",
                 want_seq, r->seq);
        return why;
    }
    uint8_t stored_prev[CHAIN_HASH_LEN], stored[CHAIN_HASH_LEN];
    if (!s_hex32(r->prev_hash, stored_prev) || !s_hex32(r->hash, stored))
        return "stored hash is malformed";
    if (sodium_memcmp(stored_prev, prev, CHAIN_HASH_LEN) != 0)
        return "prev_hash does not match the previous record's hash";
    chain_record_t c = {r->seq,      r->event_id,      r->time,       r->actor_id,    r->actor_kind,
                        r->actor_ip, r->actor_session, r->action,     r->target_type, r->target_id,
                        r->group_id, r->outcome,       r->request_id, r->details,     r->service};
    chain_hash(prev, &c, ret_hash);
    if (sodium_memcmp(ret_hash, stored, CHAIN_HASH_LEN) != 0)
        return "hash does not match the record's content";
    return NULL;
}

/* Recomputes records 1..head_seq in chunks inside the caller's snapshot; *ret_bad (NULL = the
 * chain holds) with *ret_want its seq, *ret_checked the records that held, prev the last
 * good hash. Returns 0 or a store error. */
static int s_verify_chain(pg_t *pg, arena_t *scratch, int64_t head_seq,
                          uint8_t prev[CHAIN_HASH_LEN], const char **ret_bad, int64_t *ret_want,
                          int64_t *ret_checked, char *why, size_t whylen) {
    audit_filter_t all = {"", "", "", "", "", "", "", ""};
    uint8_t hash[CHAIN_HASH_LEN];
    int64_t want = 1;
    const char *bad = NULL;
    int rc = 0;
    while (!bad && want <= head_seq) {
        Extranet__Audit__Record **recs = NULL;
        size_t n = 0;
        arena_reset(scratch);
        rc = audit_store_query(pg, scratch, &all, want - 1, head_seq, VERIFY_CHUNK, &recs, &n);
        if (rc != 0)
            break;
        if (n == 0) {
            snprintf(why, whylen, "records %" PRId64 "..%" PRId64 " are missing", want, head_seq);
            bad = why;
            break;
        }
        for (size_t i = 0; i < n && !bad; i++) {
            bad = s_check(recs[i], want, prev, hash, why, whylen);
            if (!bad) {
                memcpy(prev, hash, CHAIN_HASH_LEN);
                (*ret_checked)++;
                want++;
            }
        }
    }
    *ret_bad = bad;
    *ret_want = want;
    return rc;
}

static void s_verify(svc_thread_t *t, svc_call_t *call) {
    if (!s_actor_is(call, true))
        return;
    Extranet__Audit__VerifyReply reply = EXTRANET__AUDIT__VERIFY_REPLY__INIT;
    uint8_t head[CHAIN_HASH_LEN], prev[CHAIN_HASH_LEN] = {0};
    int64_t head_seq = 0, want = 1, beyond = 0;
    char why[160];
    const char *bad = NULL;
    arena_t *scratch = arena_new((size_t)64 * 1024 * 1024);
    if (!scratch) {
        s_db_failed(call, -ENOMEM);
        return;
    }
    /* One snapshot for the head and every chunk: an append moves the head in the same
     * transaction as its inserts, so in this snapshot every stored record is at or below the
     * head, and a row beyond it was not appended by audit: it is tampering, not an append
     * running meanwhile. Chunks read separately could also each see a different chain. */
    int rc = pg_begin_snapshot(t->pg);
    if (rc == 0)
        rc = audit_store_head_get(t->pg, &head_seq, head);
    if (rc == 0)
        rc = s_verify_chain(t->pg, scratch, head_seq, prev, &bad, &want, &reply.checked, why,
                            sizeof why);
    if (rc == 0 && !bad && sodium_memcmp(prev, head, CHAIN_HASH_LEN) != 0) {
        bad = "the chain head does not match the last record";
        want = head_seq > 0 ? head_seq : 1; /* 0 would read as "no bad record" */
    }
    if (rc == 0 && !bad && (rc = audit_store_first_beyond(t->pg, head_seq, &beyond)) == 0 &&
        beyond > 0) {
        snprintf(why, sizeof why, "record %" PRId64 " is beyond the chain head (seq %" PRId64 ")",
                 beyond, head_seq);
        bad = why;
        want = beyond;
    }
    if (rc == 0)
        rc = pg_commit(t->pg); /* read only: ends the snapshot */
    else
        pg_rollback(t->pg);
    arena_destroy(&scratch);
    if (rc != 0) {
        s_db_failed(call, rc);
        return;
    }
    char head_hex[2 * CHAIN_HASH_LEN + 1];
    sodium_bin2hex(head_hex, sizeof head_hex, head, CHAIN_HASH_LEN);
    reply.ok = bad == NULL;
    reply.first_bad_seq = bad ? want : 0;
    reply.reason = bad ? arena_strdup(call->arena, bad) : "";
    reply.head_seq = head_seq;
    reply.head_hash = arena_strdup(call->arena, head_hex);
    if (!reply.reason || !reply.head_hash) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    if (bad)
        log_warn("audit chain verification failed at seq %" PRId64 ": %s", want, bad);
    svc_reply_ok(call, &reply.base);
}

const svc_method_t audit_methods[] = {
    {"audit.Append", s_append, &extranet__audit__append_request__descriptor},
    {"audit.Query", s_query, &extranet__audit__query_request__descriptor},
    {"audit.QueryGroup", s_query_group, &extranet__audit__group_query_request__descriptor},
    {"audit.Export", s_export, &extranet__audit__export_request__descriptor},
    {"audit.Verify", s_verify, &extranet__empty__descriptor},
    {NULL, NULL, NULL},
};
