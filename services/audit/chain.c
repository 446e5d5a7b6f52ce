/* The canonical, length-prefixed encoding of an audit record and its chained SHA-256 (chain.h).
 * Length prefixes make the encoding injective: no two different records share one byte string,
 * which a separator-joined or JSON text could not promise. */
#include "chain.h"

#include <sodium.h>
#include <string.h>

static const char *s_field(const chain_record_t *r, int i) {
    const char *f[CHAIN_NFIELDS] = {r->event_id,  r->time,          r->actor_id, r->actor_kind,
                                    r->actor_ip,  r->actor_session, r->action,   r->target_type,
                                    r->target_id, r->group_id,      r->outcome,  r->request_id,
                                    r->details,   r->service};
    return f[i] ? f[i] : "";
}

static void s_be64(uint64_t v, uint8_t out[8]) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)(v & 0xff);
}

static void s_be32(uint32_t v, uint8_t out[4]) {
    for (int i = 3; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)(v & 0xff);
}

/* Feeds the canonical bytes to emit(ctx, bytes, n) piece by piece; returns the total length. */
static size_t s_encode(const chain_record_t *r, void (*emit)(void *, const uint8_t *, size_t),
                       void *ctx) {
    uint8_t head[9];
    head[0] = CHAIN_VERSION;
    s_be64((uint64_t)r->seq, head + 1);
    emit(ctx, head, sizeof head);
    size_t total = sizeof head;
    for (int i = 0; i < CHAIN_NFIELDS; i++) {
        const char *s = s_field(r, i);
        size_t n = strlen(s);
        uint8_t len[4];
        s_be32((uint32_t)n, len);
        emit(ctx, len, sizeof len);
        emit(ctx, (const uint8_t *)s, n);
        total += sizeof len + n;
    }
    return total;
}

typedef struct {
    uint8_t *out;
    size_t cap, used;
} s_buf_t;

static void s_emit_buf(void *ctx, const uint8_t *p, size_t n) {
    s_buf_t *b = ctx;
    if (b->out && b->used + n <= b->cap)
        memcpy(b->out + b->used, p, n);
    b->used += n;
}

static void s_emit_hash(void *ctx, const uint8_t *p, size_t n) {
    crypto_hash_sha256_update(ctx, p, n);
}

size_t chain_canonical(const chain_record_t *r, uint8_t *out, size_t outlen) {
    s_buf_t b = {out, outlen, 0};
    size_t need = s_encode(r, s_emit_buf, &b);
    return need;
}

void chain_hash(const uint8_t prev[CHAIN_HASH_LEN], const chain_record_t *r,
                uint8_t out[CHAIN_HASH_LEN]) {
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, prev, CHAIN_HASH_LEN);
    (void)s_encode(r, s_emit_hash, &st);
    crypto_hash_sha256_final(&st, out);
}

bool chain_time_valid(const char *s) {
    /* YYYY-MM-DDTHH:MM:SS.ffffffZ */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if (!s || strlen(s) != sizeof shape - 1)
        return false;
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
            return false;
    }
    /* Only times PostgreSQL prints back unchanged: it would turn 23:59:60 into the next
     * minute, and the record would then never verify. */
#define S_NUM(a, b) ((s[a] - '0') * 10 + (s[b] - '0'))
    int mon = S_NUM(5, 6), day = S_NUM(8, 9), h = S_NUM(11, 12), m = S_NUM(14, 15),
        sec = S_NUM(17, 18);
#undef S_NUM
    return mon >= 1 && mon <= 12 && day >= 1 && day <= 31 && h <= 23 && m <= 59 && sec <= 59;
}

bool chain_uuid_canonical(const char *s) {
    /* the form PostgreSQL prints a uuid in (lower-case hex), which Verify re-hashes */
    for (const char *p = s; p && *p; p++)
        if (*p >= 'A' && *p <= 'F')
            return false;
    return s != NULL;
}
