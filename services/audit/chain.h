/* The hash chain of audit records, pure (no I/O): the canonical encoding of a record and
 * hash = SHA-256(prev_hash || canonical(record)) with libsodium. README.md documents the
 * encoding; tests/unit/test_audit_chain.c pins it. */
#ifndef AUDIT_CHAIN_H
#define AUDIT_CHAIN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHAIN_HASH_LEN 32
#define CHAIN_VERSION  1
#define CHAIN_NFIELDS  14

/* A record's hashed fields, borrowed strings (never NULL; "" for none), in canonical order
 * after seq. */
typedef struct {
    int64_t seq;
    const char *event_id, *time, *actor_id, *actor_kind, *actor_ip, *actor_session, *action,
        *target_type, *target_id, *group_id, *outcome, *request_id, *details, *service;
} chain_record_t;

/* Writes canonical(r) into out when it fits outlen; always returns the full length (call with
 * out NULL / outlen 0 to size it). Encoding: one byte CHAIN_VERSION, seq as 8 bytes big-endian,
 * then each of the 14 strings as a 4-byte big-endian length and its bytes. */
size_t chain_canonical(const chain_record_t *r, uint8_t *out, size_t outlen);

/* out = SHA-256(prev || canonical(r)), streamed (no buffer). prev is the previous record's
 * hash, or CHAIN_HASH_LEN zero bytes before seq 1. */
void chain_hash(const uint8_t prev[CHAIN_HASH_LEN], const chain_record_t *r,
                uint8_t out[CHAIN_HASH_LEN]);

/* True when s is an RFC 3339 UTC time with exactly microseconds, "YYYY-MM-DDTHH:MM:SS.ffffffZ":
 * the one form PostgreSQL's to_char gives back unchanged, so Verify hashes the same text. */
bool chain_time_valid(const char *s);
/* True when s has no upper-case hex digit: a uuid as PostgreSQL prints it (check the uuid shape
 * apart, with util_uuid_valid). */
bool chain_uuid_canonical(const char *s);
#endif
