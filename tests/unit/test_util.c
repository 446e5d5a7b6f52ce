/* Unit tests of util.c: uuid generation and validation, hex, and the endpoint list splitter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_uuid_v4_format(void **state) {
    (void)state;
    char seen[64][37];
    for (int i = 0; i < 64; i++) {
        char u[37];
        memset(u, 'x', sizeof u);
        util_uuid_v4(u);
        assert_int_equal(strlen(u), 36);
        assert_true(util_uuid_valid(u));
        assert_int_equal(u[14], '4'); /* version */
        assert_non_null(strchr("89ab", u[19])); /* variant 10xx */
        for (int k = 0; k < 36; k++)
            if (k != 8 && k != 13 && k != 18 && k != 23)
                assert_non_null(strchr("0123456789abcdef", u[k]));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(seen[j], u);
        memcpy(seen[i], u, 37);
    }
}

static void test_uuid_valid_accepts(void **state) {
    (void)state;
    assert_true(util_uuid_valid("00000000-0000-0000-0000-000000000000"));
    assert_true(util_uuid_valid("123e4567-e89b-12d3-a456-426614174000"));
    assert_true(util_uuid_valid("123E4567-E89B-12D3-A456-426614174000"));
}

static void test_uuid_lower(void **state) {
    (void)state;
    char out[37] = "x";
    assert_true(util_uuid_lower("123E4567-E89B-12D3-A456-426614174ABC", out));
    assert_string_equal(out, "123e4567-e89b-12d3-a456-426614174abc");
    assert_true(util_uuid_lower("123e4567-e89b-12d3-a456-426614174abc", out));
    assert_string_equal(out, "123e4567-e89b-12d3-a456-426614174abc");
    assert_false(util_uuid_lower("123E4567-E89B-12D3-A456-42661417ABC", out));
    assert_string_equal(out, "");
    assert_false(util_uuid_lower(NULL, out));
}

static void test_uuid_valid_rejects(void **state) {
    (void)state;
    assert_false(util_uuid_valid(NULL));
    assert_false(util_uuid_valid(""));
    assert_false(util_uuid_valid("123e4567-e89b-12d3-a456-42661417400"));   /* short */
    assert_false(util_uuid_valid("123e4567-e89b-12d3-a456-4266141740000")); /* long */
    assert_false(util_uuid_valid("123e4567e89b12d3a456426614174000"));      /* no dashes */
    assert_false(util_uuid_valid("123e4567-e89b-12d3-a456_426614174000"));  /* wrong sep */
    assert_false(util_uuid_valid("123e4567-e89b-12d3-a456-42661417400g"));  /* non-hex */
    assert_false(util_uuid_valid("{123e4567-e89b-12d3-a456-426614174000}"));
    assert_false(util_uuid_valid(" 123e4567-e89b-12d3-a456-426614174000"));
    assert_false(util_uuid_valid("123e4567-e89b-12d3-a456-426614174000 "));
    assert_false(util_uuid_valid("123e456-7e89b-12d3-a456-426614174000"));  /* dash moved */
    assert_false(util_uuid_valid("' OR 1=1 --"));
    char embedded[37] = "123e4567-e89b-12d3-a456-426614174000";
    embedded[20] = '\0';
    assert_false(util_uuid_valid(embedded));
}

static void test_hex(void **state) {
    (void)state;
    char out[16];
    util_hex((const uint8_t *)"", 0, out);
    assert_string_equal(out, "");
    const uint8_t b[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char out2[2 * sizeof b + 1];
    util_hex(b, sizeof b, out2);
    assert_string_equal(out2, "00017f80abff");
}

static void s_free_items(char **items, int n) {
    for (int i = 0; i < n; i++)
        free(items[i]);
}

static void test_split_basic(void **state) {
    (void)state;
    char *items[4] = {0};
    int n = util_split_list("tcp://a:1,tcp://b:2", items, 4);
    assert_int_equal(n, 2);
    assert_string_equal(items[0], "tcp://a:1");
    assert_string_equal(items[1], "tcp://b:2");
    s_free_items(items, n);

    n = util_split_list("one", items, 4);
    assert_int_equal(n, 1);
    assert_string_equal(items[0], "one");
    s_free_items(items, n);
}

static void test_split_edges(void **state) {
    (void)state;
    char *items[3] = {0};
    assert_int_equal(util_split_list("", items, 3), 0);
    assert_int_equal(util_split_list(",,, ,", items, 3), 0);
    int n = util_split_list(" a , ,b,\tc ,", items, 3);
    assert_int_equal(n, 3);
    assert_string_equal(items[0], "a");
    assert_string_equal(items[1], "b");
    assert_string_equal(items[2], "c");
    s_free_items(items, n);

    /* exactly max is fine; one more is an error and leaves nothing allocated */
    n = util_split_list("a,b,c", items, 3);
    assert_int_equal(n, 3);
    s_free_items(items, n);
    assert_int_equal(util_split_list("a,b,c,d", items, 3), -EINVAL);

    assert_int_equal(util_split_list(NULL, items, 3), -EINVAL);
    assert_int_equal(util_split_list("a", items, 0), -EINVAL);
    assert_int_equal(util_split_list("a", NULL, 3), -EINVAL);
}

static void test_clocks(void **state) {
    (void)state;
    int64_t now = util_now_ms();
    assert_true(now > 1700000000000LL); /* after 2023 */
    int64_t m1 = util_mono_ms();
    int64_t m2 = util_mono_ms();
    assert_true(m2 >= m1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_v4_format), cmocka_unit_test(test_uuid_valid_accepts),
        cmocka_unit_test(test_uuid_valid_rejects), cmocka_unit_test(test_uuid_lower), cmocka_unit_test(test_hex),
        cmocka_unit_test(test_split_basic), cmocka_unit_test(test_split_edges),
        cmocka_unit_test(test_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
