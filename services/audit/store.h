/* Every SQL statement of audit (schema "audit": records, head), prepared by name on each
 * connection, and the typed functions handlers.c calls. Strings returned live in the arena. */
#ifndef AUDIT_STORE_H
#define AUDIT_STORE_H
#include "audit.pb-c.h"
#include "chain.h"
#include "extranet/arena.h"
#include "extranet/pg.h"

extern const pg_stmt_t audit_statements[];

/* Filters of Query/Export ("" = any; borrowed). */
typedef struct {
    const char *actor_id, *action, *group_id, *target_type, *target_id, *since, *until, *request_id;
} audit_filter_t;

/* Inside the append transaction: locks the head row (FOR UPDATE) and reads it. */
int audit_store_head_lock(pg_t *pg, int64_t *ret_seq, uint8_t ret_hash[CHAIN_HASH_LEN]) WUR;
/* Reads the head without locking. */
int audit_store_head_get(pg_t *pg, int64_t *ret_seq, uint8_t ret_hash[CHAIN_HASH_LEN]) WUR;
int audit_store_head_set(pg_t *pg, int64_t seq, const uint8_t hash[CHAIN_HASH_LEN]) WUR;
/* The lowest seq stored beyond seq into *ret_seq, 0 when there is none. */
int audit_store_first_beyond(pg_t *pg, int64_t seq, int64_t *ret_seq) WUR;
/* Which of the ids (a "{uuid,...}" literal) are already in the chain: *ret_ids (arena) of
 * *ret_n strings. */
int audit_store_existing(pg_t *pg, arena_t *a, const char *ids_array, char ***ret_ids,
                         size_t *ret_n) WUR;
/* Inserts r (seq set) with its prev_hash and hash. */
int audit_store_insert(pg_t *pg, const chain_record_t *r, const uint8_t prev[CHAIN_HASH_LEN],
                       const uint8_t hash[CHAIN_HASH_LEN]) WUR;
/* Records with after < seq <= upto matching f, in seq order, at most limit; messages and their
 * strings in the arena. */
int audit_store_query(pg_t *pg, arena_t *a, const audit_filter_t *f, int64_t after, int64_t upto,
                      int limit, Extranet__Audit__Record ***ret, size_t *ret_n) WUR;
#endif
