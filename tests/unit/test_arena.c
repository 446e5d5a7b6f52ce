/* Unit tests of arena.c: alignment, the byte limit, reset reusing the first block, strings,
 * and the ProtobufCAllocator view used to unpack an extranet.Request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.pb-c.h"
#include "extranet/arena.h"

#include <stdlib.h>
#include <string.h>

static void test_arena_alignment(void **state) {
    (void)state;
    arena_t *a = arena_new(1 << 20);
    assert_non_null(a);
    size_t sizes[] = {1, 3, 7, 16, 17, 31, 100, 5000, 20000, 0, 2, 70000, 9};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = arena_alloc(a, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xA5, sizes[i]); /* ASan: the whole size is ours */
    }
    arena_destroy(&a);
    assert_null(a);
    arena_destroy(&a); /* NULL-safe */
    arena_destroy(NULL);
}

static void test_arena_distinct_zero_size(void **state) {
    (void)state;
    arena_t *a = arena_new(1024);
    void *p = arena_alloc(a, 0), *q = arena_alloc(a, 0);
    assert_non_null(p);
    assert_non_null(q);
    assert_ptr_not_equal(p, q);
    arena_destroy(&a);
}

static void test_arena_limit(void **state) {
    (void)state;
    arena_t *a = arena_new(128);
    assert_non_null(arena_alloc(a, 100)); /* 112 with rounding */
    assert_non_null(arena_alloc(a, 16));  /* 128: exactly the limit */
    assert_null(arena_alloc(a, 1));
    assert_null(arena_alloc(a, SIZE_MAX));
    assert_null(arena_alloc(a, SIZE_MAX - 8));
    arena_reset(a);
    assert_non_null(arena_alloc(a, 128));
    assert_null(arena_alloc(a, 1));
    arena_destroy(&a);

    a = arena_new(1 << 16);
    assert_null(arena_alloc(a, (1 << 16) + 1)); /* one large request past the limit */
    assert_non_null(arena_alloc(a, 1 << 16));
    arena_destroy(&a);
}

static void test_arena_reset_reuses_first_block(void **state) {
    (void)state;
    arena_t *a = arena_new(1 << 24);
    void *first = arena_alloc(a, 32);
    assert_non_null(first);
    /* spill into many blocks, small and large */
    for (int i = 0; i < 2000; i++) {
        char *p = arena_alloc(a, (size_t)(i % 7 == 0 ? 9000 : 40));
        assert_non_null(p);
        p[0] = (char)i;
    }
    arena_reset(a);
    void *again = arena_alloc(a, 32);
    assert_ptr_equal(first, again);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 500; i++)
            assert_non_null(arena_alloc(a, 300));
        arena_reset(a);
    }
    arena_destroy(&a);
}

static void test_arena_strings(void **state) {
    (void)state;
    arena_t *a = arena_new(4096);
    char *s = arena_strdup(a, "hello");
    assert_string_equal(s, "hello");
    assert_null(arena_strdup(a, NULL));
    char *f = arena_printf(a, "%s-%d-%05.1f", "x", 42, 3.14159);
    assert_string_equal(f, "x-42-003.1");
    char big[3000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char *b = arena_printf(a, "%s", big);
    assert_non_null(b);
    assert_string_equal(b, big);
    assert_null(arena_printf(a, "%s", big)); /* 4096 limit reached */
    arena_destroy(&a);
}

static size_t s_pack_request(uint8_t **ret) {
    Extranet__Request req = EXTRANET__REQUEST__INIT;
    Extranet__Actor actor = EXTRANET__ACTOR__INIT;
    actor.user_id = "123e4567-e89b-12d3-a456-426614174000";
    actor.kind = EXTRANET__ACTOR_KIND__EMPLOYEE;
    actor.client_ip = "10.0.0.7";
    req.request_id = "6f1c1d0e-6b7a-4f43-9a3c-2b1d9b2e8c11";
    req.method = "identity.Login";
    req.actor = &actor;
    req.deadline_ms = 1795000000123LL;
    static uint8_t payload[2048];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7);
    req.payload.data = payload;
    req.payload.len = sizeof payload;
    size_t n = extranet__request__get_packed_size(&req);
    *ret = malloc(n);
    assert_non_null(*ret);
    assert_int_equal(extranet__request__pack(&req, *ret), n);
    return n;
}

static void test_arena_protobuf_unpack(void **state) {
    (void)state;
    uint8_t *buf = NULL;
    size_t n = s_pack_request(&buf);
    arena_t *a = arena_new(64 * 1024);
    Extranet__Request *r = extranet__request__unpack(arena_allocator(a), n, buf);
    assert_non_null(r);
    assert_string_equal(r->method, "identity.Login");
    assert_string_equal(r->request_id, "6f1c1d0e-6b7a-4f43-9a3c-2b1d9b2e8c11");
    assert_int_equal(r->deadline_ms, 1795000000123LL);
    assert_non_null(r->actor);
    assert_int_equal(r->actor->kind, EXTRANET__ACTOR_KIND__EMPLOYEE);
    assert_string_equal(r->actor->client_ip, "10.0.0.7");
    assert_int_equal(r->payload.len, 2048);
    for (size_t i = 0; i < r->payload.len; i++)
        assert_int_equal(r->payload.data[i], (uint8_t)(i * 7));
    /* free through the allocator is a no-op: the arena owns everything */
    extranet__request__free_unpacked(r, arena_allocator(a));
    free(buf); /* the message must not point into the input buffer */
    buf = NULL;
    arena_reset(a);
    n = s_pack_request(&buf);
    r = extranet__request__unpack(arena_allocator(a), n, buf);
    assert_non_null(r);
    assert_string_equal(r->actor->user_id, "123e4567-e89b-12d3-a456-426614174000");
    arena_destroy(&a);

    /* a request larger than the arena's limit fails to unpack instead of growing it */
    a = arena_new(1024);
    assert_null(extranet__request__unpack(arena_allocator(a), n, buf));
    arena_destroy(&a);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alignment),
        cmocka_unit_test(test_arena_distinct_zero_size),
        cmocka_unit_test(test_arena_limit),
        cmocka_unit_test(test_arena_reset_reuses_first_block),
        cmocka_unit_test(test_arena_strings),
        cmocka_unit_test(test_arena_protobuf_unpack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
