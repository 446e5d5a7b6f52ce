/* Unit tests of the audit chain (services/audit/chain.c): the canonical, length-prefixed
 * encoding byte for byte, its injectivity where a joined text would collide, and the chained
 * SHA-256 against an independent computation. */
#include "chain.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

static chain_record_t s_rec(void) {
    chain_record_t r = {7,
                        "0b6f1f4e-8a41-4c47-9d6e-1d2c3b4a5f60",
                        "2026-11-25T10:00:00.123456Z",
                        "u1",
                        "admin",
                        "127.0.0.1",
                        "s1",
                        "user.updated",
                        "user",
                        "t1",
                        "",
                        "ok",
                        "r1",
                        "{}",
                        "identity"};
    return r;
}

static void test_canonical_layout(void **state) {
    (void)state;
    chain_record_t r = s_rec();
    uint8_t buf[512];
    size_t n = chain_canonical(&r, buf, sizeof buf);
    size_t want = 1 + 8;
    const char *f[CHAIN_NFIELDS] = {r.event_id,  r.time,          r.actor_id, r.actor_kind,
                                    r.actor_ip,  r.actor_session, r.action,   r.target_type,
                                    r.target_id, r.group_id,      r.outcome,  r.request_id,
                                    r.details,   r.service};
    for (int i = 0; i < CHAIN_NFIELDS; i++)
        want += 4 + strlen(f[i]);
    assert_int_equal(n, want);
    assert_int_equal(buf[0], CHAIN_VERSION);
    const uint8_t seq[8] = {0, 0, 0, 0, 0, 0, 0, 7};
    assert_memory_equal(buf + 1, seq, 8);
    const uint8_t len36[4] = {0, 0, 0, 36};
    assert_memory_equal(buf + 9, len36, 4);
    assert_memory_equal(buf + 13, r.event_id, 36);
    /* the last field: service "identity" */
    const uint8_t len8[4] = {0, 0, 0, 8};
    assert_memory_equal(buf + n - 12, len8, 4);
    assert_memory_equal(buf + n - 8, "identity", 8);
    /* sizing call */
    assert_int_equal(chain_canonical(&r, NULL, 0), n);
}

/* "ab"+"c" and "a"+"bc" must differ: the length prefixes see to it. */
static void test_canonical_injective(void **state) {
    (void)state;
    chain_record_t a = s_rec(), b = s_rec();
    a.target_type = "ab";
    a.target_id = "c";
    b.target_type = "a";
    b.target_id = "bc";
    uint8_t ba[512], bb[512];
    size_t na = chain_canonical(&a, ba, sizeof ba), nb = chain_canonical(&b, bb, sizeof bb);
    assert_int_equal(na, nb);
    assert_memory_not_equal(ba, bb, na);
    uint8_t zero[CHAIN_HASH_LEN] = {0}, ha[CHAIN_HASH_LEN], hb[CHAIN_HASH_LEN];
    chain_hash(zero, &a, ha);
    chain_hash(zero, &b, hb);
    assert_memory_not_equal(ha, hb, CHAIN_HASH_LEN);
}

static void test_hash_is_sha256_of_prev_and_canonical(void **state) {
    (void)state;
    chain_record_t r = s_rec();
    uint8_t prev[CHAIN_HASH_LEN];
    for (int i = 0; i < CHAIN_HASH_LEN; i++)
        prev[i] = (uint8_t)(i * 7 + 1);
    uint8_t buf[CHAIN_HASH_LEN + 512];
    memcpy(buf, prev, CHAIN_HASH_LEN);
    size_t n = chain_canonical(&r, buf + CHAIN_HASH_LEN, sizeof buf - CHAIN_HASH_LEN);
    uint8_t want[CHAIN_HASH_LEN], got[CHAIN_HASH_LEN];
    crypto_hash_sha256(want, buf, CHAIN_HASH_LEN + n);
    chain_hash(prev, &r, got);
    assert_memory_equal(want, got, CHAIN_HASH_LEN);
}

/* A chain of three: changing one byte of record 2, its seq, or the prev hash changes its hash. */
static void test_chain_detects_changes(void **state) {
    (void)state;
    uint8_t h0[CHAIN_HASH_LEN] = {0}, h1[CHAIN_HASH_LEN], h2[CHAIN_HASH_LEN], x[CHAIN_HASH_LEN];
    chain_record_t r1 = s_rec(), r2 = s_rec();
    r1.seq = 1;
    r2.seq = 2;
    chain_hash(h0, &r1, h1);
    chain_hash(h1, &r2, h2);
    chain_record_t t = r2;
    t.details = "{ }";
    chain_hash(h1, &t, x);
    assert_memory_not_equal(x, h2, CHAIN_HASH_LEN);
    t = r2;
    t.seq = 3;
    chain_hash(h1, &t, x);
    assert_memory_not_equal(x, h2, CHAIN_HASH_LEN);
    chain_hash(h0, &r2, x);
    assert_memory_not_equal(x, h2, CHAIN_HASH_LEN);
    chain_hash(h1, &r2, x);
    assert_memory_equal(x, h2, CHAIN_HASH_LEN);
}

static void test_time_shape(void **state) {
    (void)state;
    assert_true(chain_time_valid("2026-11-25T10:00:00.123456Z"));
    assert_false(chain_time_valid("2026-11-25T10:00:00Z"));
    assert_false(chain_time_valid("2026-11-25T10:00:00.123456+00:00"));
    assert_false(chain_time_valid("2026-11-25 10:00:00.123456Z"));
    assert_false(chain_time_valid(""));
    assert_false(chain_time_valid(NULL));
    /* shapes PostgreSQL would not print back unchanged */
    assert_false(chain_time_valid("2026-11-25T23:59:60.000000Z"));
    assert_false(chain_time_valid("2026-11-25T24:00:00.000000Z"));
    assert_false(chain_time_valid("2026-13-25T10:00:00.000000Z"));
    assert_false(chain_time_valid("2026-00-25T10:00:00.000000Z"));
    assert_false(chain_time_valid("2026-11-00T10:00:00.000000Z"));
    assert_true(chain_time_valid("2026-12-31T23:59:59.999999Z"));
    assert_true(chain_uuid_canonical("0a1b2c3d-0000-4000-8000-00000000abcd"));
    assert_false(chain_uuid_canonical("0A1B2C3D-0000-4000-8000-00000000ABCD"));
    assert_false(chain_uuid_canonical(NULL));
}

int main(void) {
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_layout),
        cmocka_unit_test(test_canonical_injective),
        cmocka_unit_test(test_hash_is_sha256_of_prev_and_canonical),
        cmocka_unit_test(test_chain_detects_changes),
        cmocka_unit_test(test_time_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
