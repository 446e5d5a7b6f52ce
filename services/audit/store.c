/* audit's SQL (store.h): the head lock, de-duplication, append, and the filtered scans of
 * Query/Export/Verify. There is deliberately no UPDATE or DELETE of records here. */
#include "store.h"

#include "extranet/log.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* clang-format off */
const pg_stmt_t audit_statements[] = {
    {"head_lock", "SELECT seq, encode(hash, 'hex') AS hash FROM head WHERE id FOR UPDATE", 0},
    {"head_get", "SELECT seq, encode(hash, 'hex') AS hash FROM head WHERE id", 0},
    {"head_set", "UPDATE head SET seq = $1::bigint, hash = decode($2, 'hex') WHERE id", 2},
    {"beyond_head", "SELECT seq FROM records WHERE seq > $1::bigint ORDER BY seq LIMIT 1", 1},
    {"existing",
     "SELECT event_id::text AS event_id FROM records WHERE event_id = ANY ($1::uuid[])", 1},
    {"insert",
     "INSERT INTO records (seq, event_id, time, actor_id, actor_kind, actor_ip, actor_session, "
     "action, target_type, target_id, group_id, outcome, request_id, details, service, "
     "prev_hash, hash) VALUES ($1::bigint, $2::uuid, $3::timestamptz, $4, $5, $6, $7, $8, $9, "
     "$10, $11, $12, $13, $14, $15, decode($16, 'hex'), decode($17, 'hex'))",
     17},
    /* NULLIF: a generic plan may evaluate the cast even when the '' branch is true. */
    {"query",
     "SELECT seq, event_id::text AS event_id, " TS("time") " AS time, actor_id, actor_kind, "
     "actor_ip, actor_session, action, target_type, target_id, group_id, outcome, request_id, "
     "details, service, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash "
     "FROM records WHERE seq > $1::bigint AND seq <= $2::bigint "
     "AND ($3::text = '' OR actor_id = $3::text) AND ($4::text = '' OR action = $4::text) "
     "AND ($5::text = '' OR group_id = $5::text) AND ($6::text = '' OR target_type = $6::text) "
     "AND ($7::text = '' OR target_id = $7::text) "
     "AND ($8::text = '' OR time >= NULLIF($8::text, '')::timestamptz) "
     "AND ($9::text = '' OR time < NULLIF($9::text, '')::timestamptz) "
     "AND ($11::text = '' OR request_id = $11::text) "
     "ORDER BY seq LIMIT $10::integer",
     11},
    {NULL, NULL, 0},
};
/* clang-format on */

static int s_head(pg_t *pg, const char *stmt, int64_t *ret_seq, uint8_t ret_hash[CHAIN_HASH_LEN]) {
    PGresult *res = NULL;
    int rc = pg_exec(pg, stmt, NULL, &res);
    if (rc != 0)
        return rc;
    size_t n = 0;
    if (PQntuples(res) != 1 ||
        sodium_hex2bin(ret_hash, CHAIN_HASH_LEN, PQgetvalue(res, 0, PQfnumber(res, "hash")),
                       strlen(PQgetvalue(res, 0, PQfnumber(res, "hash"))), NULL, &n, NULL) != 0 ||
        n != CHAIN_HASH_LEN) {
        log_error("audit.head is missing or malformed");
        PQclear(res);
        return -EIO;
    }
    *ret_seq = strtoll(PQgetvalue(res, 0, PQfnumber(res, "seq")), NULL, 10);
    PQclear(res);
    return 0;
}

int audit_store_head_lock(pg_t *pg, int64_t *ret_seq, uint8_t ret_hash[CHAIN_HASH_LEN]) {
    return s_head(pg, "head_lock", ret_seq, ret_hash);
}

int audit_store_head_get(pg_t *pg, int64_t *ret_seq, uint8_t ret_hash[CHAIN_HASH_LEN]) {
    return s_head(pg, "head_get", ret_seq, ret_hash);
}

int audit_store_head_set(pg_t *pg, int64_t seq, const uint8_t hash[CHAIN_HASH_LEN]) {
    char s[24], h[2 * CHAIN_HASH_LEN + 1];
    snprintf(s, sizeof s, "%" PRId64, seq);
    sodium_bin2hex(h, sizeof h, hash, CHAIN_HASH_LEN);
    const char *p[2] = {s, h};
    return pg_exec(pg, "head_set", p, NULL);
}

int audit_store_first_beyond(pg_t *pg, int64_t seq, int64_t *ret_seq) {
    *ret_seq = 0;
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, seq);
    const char *p[1] = {s};
    PGresult *res = NULL;
    int rc = pg_exec(pg, "beyond_head", p, &res);
    if (rc != 0)
        return rc;
    if (PQntuples(res) == 1)
        *ret_seq = pg_col_i64(res, 0, "seq");
    PQclear(res);
    return 0;
}

int audit_store_existing(pg_t *pg, arena_t *a, const char *ids_array, char ***ret_ids,
                         size_t *ret_n) {
    *ret_ids = NULL;
    *ret_n = 0;
    const char *p[1] = {ids_array};
    PGresult *res = NULL;
    int rc = pg_exec(pg, "existing", p, &res);
    if (rc != 0)
        return rc;
    int n = PQntuples(res);
    if (n > 0) {
        char **ids = arena_alloc(a, sizeof(char *) * (size_t)n);
        if (!ids) {
            PQclear(res);
            return -ENOMEM;
        }
        for (int i = 0; i < n; i++)
            if (!(ids[i] = arena_strdup(a, PQgetvalue(res, i, 0)))) {
                PQclear(res);
                return -ENOMEM;
            }
        *ret_ids = ids;
        *ret_n = (size_t)n;
    }
    PQclear(res);
    return 0;
}

int audit_store_insert(pg_t *pg, const chain_record_t *r, const uint8_t prev[CHAIN_HASH_LEN],
                       const uint8_t hash[CHAIN_HASH_LEN]) {
    char seq[24], ph[2 * CHAIN_HASH_LEN + 1], hh[2 * CHAIN_HASH_LEN + 1];
    snprintf(seq, sizeof seq, "%" PRId64, r->seq);
    sodium_bin2hex(ph, sizeof ph, prev, CHAIN_HASH_LEN);
    sodium_bin2hex(hh, sizeof hh, hash, CHAIN_HASH_LEN);
    const char *p[17] = {seq,
                         r->event_id,
                         r->time,
                         r->actor_id,
                         r->actor_kind,
                         r->actor_ip,
                         r->actor_session,
                         r->action,
                         r->target_type,
                         r->target_id,
                         r->group_id,
                         r->outcome,
                         r->request_id,
                         r->details,
                         r->service,
                         ph,
                         hh};
    return pg_exec(pg, "insert", p, NULL);
}

static int s_record_fill(arena_t *a, PGresult *res, int i, Extranet__Audit__Record *r) {
    extranet__audit__record__init(r);
    r->seq = strtoll(PQgetvalue(res, i, PQfnumber(res, "seq")), NULL, 10);
    r->event_id = pg_col_str(a, res, i, "event_id");
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
    r->service = pg_col_str(a, res, i, "service");
    r->prev_hash = pg_col_str(a, res, i, "prev_hash");
    r->hash = pg_col_str(a, res, i, "hash");
    if (!r->event_id || !r->time || !r->actor_id || !r->actor_kind || !r->actor_ip ||
        !r->actor_session || !r->action || !r->target_type || !r->target_id || !r->group_id ||
        !r->outcome || !r->request_id || !r->details || !r->service || !r->prev_hash || !r->hash)
        return -ENOMEM;
    return 0;
}

int audit_store_query(pg_t *pg, arena_t *a, const audit_filter_t *f, int64_t after, int64_t upto,
                      int limit, Extranet__Audit__Record ***ret, size_t *ret_n) {
    *ret = NULL;
    *ret_n = 0;
    char s_after[24], s_upto[24], s_lim[16];
    snprintf(s_after, sizeof s_after, "%" PRId64, after);
    snprintf(s_upto, sizeof s_upto, "%" PRId64, upto);
    snprintf(s_lim, sizeof s_lim, "%d", limit);
    const char *p[11] = {s_after,     s_upto,         f->actor_id,  f->action,
                         f->group_id, f->target_type, f->target_id, f->since,
                         f->until,    s_lim,          f->request_id};
    PGresult *res = NULL;
    int rc = pg_exec(pg, "query", p, &res);
    if (rc != 0)
        return rc;
    int n = PQntuples(res);
    if (n > 0) {
        Extranet__Audit__Record **arr =
            arena_alloc(a, sizeof(Extranet__Audit__Record *) * (size_t)n);
        Extranet__Audit__Record *rows = arena_alloc(a, sizeof(*rows) * (size_t)n);
        if (!arr || !rows) {
            rc = -ENOMEM;
            goto out;
        }
        for (int i = 0; i < n; i++) {
            arr[i] = &rows[i];
            if ((rc = s_record_fill(a, res, i, arr[i])) != 0)
                goto out;
        }
        *ret = arr;
        *ret_n = (size_t)n;
    }
out:
    PQclear(res);
    return rc;
}
