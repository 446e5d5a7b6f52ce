/* Unit tests of status.c: every value of the catalogue in proto/envelope.proto has its name and
 * HTTP code from DESIGN.md §3, and unknown values fall back to internal/500. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/status.h"

#include <string.h>

static const struct {
    Extranet__Status st;
    const char *name;
    int http;
} s_table[] = {
    {EXTRANET__STATUS__OK, "ok", 200},
    {EXTRANET__STATUS__INVALID, "invalid", 400},
    {EXTRANET__STATUS__UNAUTHENTICATED, "unauthenticated", 401},
    {EXTRANET__STATUS__FORBIDDEN, "forbidden", 403},
    {EXTRANET__STATUS__NOT_FOUND, "not_found", 404},
    {EXTRANET__STATUS__CONFLICT, "conflict", 409},
    {EXTRANET__STATUS__TOO_LARGE, "too_large", 413},
    {EXTRANET__STATUS__UNSUPPORTED_MEDIA, "unsupported_media", 415},
    {EXTRANET__STATUS__RATE_LIMITED, "rate_limited", 429},
    {EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED, "mfa_enrollment_required", 403},
    {EXTRANET__STATUS__INTERNAL, "internal", 500},
    {EXTRANET__STATUS__UNAVAILABLE, "unavailable", 503},
    {EXTRANET__STATUS__DEADLINE_EXCEEDED, "deadline_exceeded", 504},
};

static void test_status_table(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof s_table / sizeof s_table[0]; i++) {
        assert_string_equal(status_name(s_table[i].st), s_table[i].name);
        assert_int_equal(status_http(s_table[i].st), s_table[i].http);
    }
}

/* Every enum value the generated descriptor knows is in the table above: a status added to the
 * proto without a mapping fails here. */
static void test_status_every_enum_value_mapped(void **state) {
    (void)state;
    const ProtobufCEnumDescriptor *d = &extranet__status__descriptor;
    assert_int_equal(d->n_values, sizeof s_table / sizeof s_table[0]);
    for (unsigned i = 0; i < d->n_values; i++) {
        Extranet__Status st = (Extranet__Status)d->values[i].value;
        const char *name = status_name(st);
        int http = status_http(st);
        /* the JSON code is the proto name in lower case */
        char lower[64];
        size_t n = strlen(d->values[i].name);
        assert_true(n < sizeof lower);
        for (size_t k = 0; k <= n; k++)
            lower[k] = (char)((d->values[i].name[k] >= 'A' && d->values[i].name[k] <= 'Z')
                                  ? d->values[i].name[k] - 'A' + 'a'
                                  : d->values[i].name[k]);
        assert_string_equal(name, lower);
        assert_true(http >= 200 && http <= 599);
        if (st != EXTRANET__STATUS__INTERNAL)
            assert_string_not_equal(name, "internal");
    }
}

static void test_status_unknown(void **state) {
    (void)state;
    assert_string_equal(status_name((Extranet__Status)13), "internal");
    assert_int_equal(status_http((Extranet__Status)13), 500);
    assert_string_equal(status_name((Extranet__Status)-1), "internal");
    assert_int_equal(status_http((Extranet__Status)-1), 500);
    assert_string_equal(status_name((Extranet__Status)100000), "internal");
    assert_int_equal(status_http((Extranet__Status)100000), 500);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_table),
        cmocka_unit_test(test_status_every_enum_value_mapped),
        cmocka_unit_test(test_status_unknown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
