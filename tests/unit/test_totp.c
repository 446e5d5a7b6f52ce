/* identity's TOTP wrapper and pure rules: RFC 6238 Appendix B SHA-1 vectors through totp.c
 * (liboath does the maths), the ±1 window, replay refusal, sealed secrets, recovery codes,
 * and who may call what (rules_access_check), input checks and cache TTLs. */
/* cmocka needs these four first */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include "rules.h"
#include "totp.h"
#include <errno.h>
#include <sodium.h>
#include <string.h>

static const uint8_t s_rfc_secret[] = "12345678901234567890"; /* RFC 6238 App. B, SHA-1 */

static void test_rfc6238_vectors(void **state) {
    (void)state;
    static const struct {
        time_t t;
        const char *code;
    } v[] = {
        {59, "94287082"},         {1111111109, "07081804"}, {1111111111, "14050471"},
        {1234567890, "89005924"}, {2000000000, "69279037"}, {20000000000, "65353130"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char out[9];
        assert_int_equal(totp_code(s_rfc_secret, 20, v[i].t, 8, out), 0);
        assert_string_equal(out, v[i].code);
        /* The 6-digit code is the last six digits of the same truncation. */
        assert_int_equal(totp_code(s_rfc_secret, 20, v[i].t, 6, out), 0);
        assert_string_equal(out, v[i].code + 2);
    }
    char out[10];
    assert_int_equal(totp_code(s_rfc_secret, 20, 59, 5, out), -EINVAL);
    assert_int_equal(totp_code(s_rfc_secret, 20, 59, 9, out), -EINVAL);
}

static void test_verify_window(void **state) {
    (void)state;
    const time_t now = 1111111111; /* step 37037037 */
    int64_t now_step = totp_step_of(now), step = -1;
    char code[7];
    for (int d = -3; d <= 3; d++) {
        assert_int_equal(totp_code(s_rfc_secret, 20, now + d * 30, 6, code), 0);
        int rc = totp_verify(s_rfc_secret, 20, now, code, 0, &step);
        if (d >= -1 && d <= 1) {
            assert_int_equal(rc, 0);
            assert_int_equal(step, now_step + d);
        } else {
            assert_int_equal(rc, -EACCES);
        }
    }
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, "12345", 0, &step), -EACCES);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, "abcdef", 0, &step), -EACCES);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, "", 0, &step), -EACCES);
}

static void test_verify_replay(void **state) {
    (void)state;
    const time_t now = 1234567890;
    int64_t step = -1, now_step = totp_step_of(now);
    char code[7];
    assert_int_equal(totp_code(s_rfc_secret, 20, now, 6, code), 0);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, code, 0, &step), 0);
    assert_int_equal(step, now_step);
    /* The same code again, with its step remembered: refused, also 30 s later. */
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, code, step, &step), -EACCES);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now + 30, code, now_step, &step), -EACCES);
    /* An older code after a newer one was used: refused too. */
    assert_int_equal(totp_code(s_rfc_secret, 20, now - 30, 6, code), 0);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, code, now_step, &step), -EACCES);
    /* The next step's code is still fine. */
    assert_int_equal(totp_code(s_rfc_secret, 20, now + 30, 6, code), 0);
    assert_int_equal(totp_verify(s_rfc_secret, 20, now, code, now_step, &step), 0);
    assert_int_equal(step, now_step + 1);
}

static void test_rules_totp_step(void **state) {
    (void)state;
    assert_true(rules_totp_step_ok(100, 100, 0, 1));
    assert_true(rules_totp_step_ok(99, 100, 0, 1));
    assert_true(rules_totp_step_ok(101, 100, 0, 1));
    assert_false(rules_totp_step_ok(98, 100, 0, 1));
    assert_false(rules_totp_step_ok(102, 100, 0, 1));
    assert_false(rules_totp_step_ok(100, 100, 100, 1));
    assert_false(rules_totp_step_ok(99, 100, 100, 1));
    assert_true(rules_totp_step_ok(101, 100, 100, 1));
    assert_false(rules_totp_step_ok(100, 100, 0, -1));
    assert_false(rules_totp_step_ok(-1, 0, -5, 1));
}

static void test_base32_and_uri(void **state) {
    (void)state;
    char b32[TOTP_B32_LEN + 1], uri[512];
    assert_int_equal(totp_secret_base32(s_rfc_secret, b32), 0);
    assert_string_equal(b32, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    assert_int_equal(totp_uri(b32, "Ann+x@example.com", uri, sizeof uri), 0);
    assert_string_equal(uri, "otpauth://totp/extranet:Ann%2Bx%40example.com?secret="
                             "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=extranet&algorithm=SHA1"
                             "&digits=6&period=30");
    assert_int_equal(totp_uri(b32, "a@b.c", uri, 20), -ENOSPC);
}

static void test_text_seal_open(void **state) {
    (void)state;
    uint8_t key[TOTP_KEY_LEN], other[TOTP_KEY_LEN];
    memset(key, 7, sizeof key);
    memset(other, 8, sizeof other);
    const char *texts[] = {"", "x", "Hello,\n\nhttps://x.test/invitations/AAAA\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        char *sealed = totp_text_seal(key, texts[i]);
        assert_non_null(sealed);
        assert_int_equal(strncmp(sealed, "s1:", 3), 0);
        if (strlen(texts[i]) > 8) /* a short one can occur in base64 by chance */
            assert_null(strstr(sealed, texts[i]));
        char *plain = NULL;
        assert_int_equal(totp_text_open(key, sealed, &plain), 0);
        assert_string_equal(plain, texts[i]);
        free(plain);
        plain = NULL;
        assert_int_equal(totp_text_open(other, sealed, &plain), -EBADMSG);
        assert_null(plain);
        sealed[strlen(sealed) / 2] ^= 1; /* tampered (or no longer base64) */
        assert_int_equal(totp_text_open(key, sealed, &plain), -EBADMSG);
        free(sealed);
    }
    char *plain = NULL;
    assert_int_equal(totp_text_open(key, "plain text", &plain), -EBADMSG);
    assert_int_equal(totp_text_open(key, "s1:", &plain), -EBADMSG);
    assert_int_equal(totp_text_open(key, "s1:!!!!", &plain), -EBADMSG);
    assert_null(plain);
}

static void test_seal_open(void **state) {
    (void)state;
    uint8_t key[TOTP_KEY_LEN], other[TOTP_KEY_LEN], secret[TOTP_SECRET_LEN];
    char a[TOTP_SEALED_HEX_LEN + 1], b[TOTP_SEALED_HEX_LEN + 1];
    assert_int_equal(totp_key_parse("00112233445566778899aabbccddeeff"
                                    "00112233445566778899aabbccddeeff",
                                    key),
                     0);
    assert_int_equal(totp_key_parse("0011", key), -EINVAL);
    assert_int_equal(totp_key_parse(NULL, key), -EINVAL);
    assert_int_equal(totp_key_parse("zz112233445566778899aabbccddeeff"
                                    "00112233445566778899aabbccddeeff",
                                    key),
                     -EINVAL);
    memcpy(other, key, sizeof key);
    other[0] ^= 1;
    totp_secret_seal(key, s_rfc_secret, a);
    totp_secret_seal(key, s_rfc_secret, b);
    assert_string_not_equal(a, b); /* random nonce */
    assert_int_equal(totp_secret_open(key, a, secret), 0);
    assert_memory_equal(secret, s_rfc_secret, TOTP_SECRET_LEN);
    assert_int_equal(totp_secret_open(other, a, secret), -EBADMSG);
    a[100] = a[100] == '0' ? '1' : '0';
    assert_int_equal(totp_secret_open(key, a, secret), -EBADMSG);
    assert_int_equal(totp_secret_open(key, "abcd", secret), -EBADMSG);
}

static void test_recovery_codes(void **state) {
    (void)state;
    char code[TOTP_RECOVERY_DISPLAY_LEN + 1], code2[TOTP_RECOVERY_DISPLAY_LEN + 1];
    char norm[RULES_RECOVERY_LEN + 1], salt[33], hash[65], hash2[65], salt2[33];
    totp_recovery_new(code);
    totp_recovery_new(code2);
    assert_int_equal(strlen(code), 19);
    assert_string_not_equal(code, code2);
    assert_true(code[4] == '-' && code[9] == '-' && code[14] == '-');
    assert_true(rules_recovery_normalize(code, norm));
    totp_recovery_hash(norm, NULL, salt, hash);
    /* Typed in upper case with spaces: the same code. */
    char typed[40];
    size_t k = 0;
    for (const char *p = code; *p; p++)
        typed[k++] = *p == '-' ? ' ' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    typed[k] = '\0';
    char norm2[RULES_RECOVERY_LEN + 1];
    assert_true(rules_recovery_normalize(typed, norm2));
    totp_recovery_hash(norm2, salt, salt2, hash2);
    assert_string_equal(salt, salt2);
    assert_string_equal(hash, hash2);
    /* Another salt: another hash. */
    totp_recovery_hash(norm, NULL, salt2, hash2);
    assert_string_not_equal(hash, hash2);
    assert_false(rules_recovery_normalize("abcd-efgh-ijkl", norm));        /* too short */
    assert_false(rules_recovery_normalize("abcd-efgh-ijkl-mnop-q", norm)); /* too long */
    assert_false(rules_recovery_normalize("abcd-efgh-ijkl-mno1", norm));   /* 1 not base32 */
    assert_false(rules_recovery_normalize(NULL, norm));
    assert_true(rules_totp_code_shape("012345"));
    assert_false(rules_totp_code_shape("01234a"));
    assert_false(rules_totp_code_shape("0123456"));
    assert_false(rules_totp_code_shape(NULL));
}

static Extranet__Actor s_actor(Extranet__ActorKind kind, bool pending) {
    Extranet__Actor a = EXTRANET__ACTOR__INIT;
    a.kind = kind;
    if (kind != EXTRANET__ACTOR_KIND__ANONYMOUS && kind != EXTRANET__ACTOR_KIND__SYSTEM) {
        a.user_id = "6f1c2a4e-1b2c-4d3e-8f90-0a1b2c3d4e5f";
        a.session_id = "7f1c2a4e-1b2c-4d3e-8f90-0a1b2c3d4e5f";
    }
    a.mfa_pending = pending;
    return a;
}

static void test_rules_access(void **state) {
    (void)state;
    enum {
        OK = EXTRANET__STATUS__OK,
        UN = EXTRANET__STATUS__UNAUTHENTICATED,
        FB = EXTRANET__STATUS__FORBIDDEN,
        MF = EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED
    };
    /* rows: access; columns: anonymous, admin, employee, extranet, extranet(pending), system */
    static const struct {
        rules_access_t access;
        int want[6];
    } table[] = {
        {ACCESS_ANY, {OK, OK, OK, OK, OK, OK}},          {ACCESS_USER, {UN, OK, OK, OK, MF, UN}},
        {ACCESS_USER_PENDING, {UN, OK, OK, OK, OK, UN}}, {ACCESS_ADMIN, {UN, OK, FB, FB, MF, FB}},
        {ACCESS_ADMIN_SYSTEM, {UN, OK, FB, FB, MF, OK}}, {ACCESS_SYSTEM, {UN, FB, FB, FB, FB, OK}},
    };
    Extranet__Actor actors[6] = {
        s_actor(EXTRANET__ACTOR_KIND__ANONYMOUS, false),
        s_actor(EXTRANET__ACTOR_KIND__ADMIN, false),
        s_actor(EXTRANET__ACTOR_KIND__EMPLOYEE, false),
        s_actor(EXTRANET__ACTOR_KIND__EXTRANET, false),
        s_actor(EXTRANET__ACTOR_KIND__EXTRANET, true),
        s_actor(EXTRANET__ACTOR_KIND__SYSTEM, false),
    };
    for (size_t r = 0; r < sizeof table / sizeof table[0]; r++)
        for (int c = 0; c < 6; c++) {
            int got = (int)rules_access_check(table[r].access, &actors[c]);
            if (got != table[r].want[c])
                fail_msg("access %d actor %d: got %d want %d", (int)table[r].access, c, got,
                         table[r].want[c]);
        }
    /* No actor at all is anonymous. */
    assert_int_equal(rules_access_check(ACCESS_USER, NULL), UN);
    assert_int_equal(rules_access_check(ACCESS_ANY, NULL), OK);
    /* A user kind without a session id is not signed in. */
    Extranet__Actor a = s_actor(EXTRANET__ACTOR_KIND__ADMIN, false);
    a.session_id = "";
    assert_int_equal(rules_access_check(ACCESS_ADMIN, &a), UN);
    a.session_id = "7f1c2a4e-1b2c-4d3e-8f90-0a1b2c3d4e5f";
    a.user_id = "";
    assert_int_equal(rules_access_check(ACCESS_USER, &a), UN);
}

static void test_rules_input(void **state) {
    (void)state;
    assert_null(rules_email_check("ann@example.com"));
    assert_null(rules_email_check("a.b+c@sub.example-x.org"));
    assert_non_null(rules_email_check(""));
    assert_non_null(rules_email_check(NULL));
    assert_non_null(rules_email_check("noat"));
    assert_non_null(rules_email_check("a@b@c"));
    assert_non_null(rules_email_check("@example.com"));
    assert_non_null(rules_email_check("ann@"));
    assert_non_null(rules_email_check("ann@.com"));
    assert_non_null(rules_email_check("ann@x..com"));
    assert_non_null(rules_email_check("an n@example.com"));
    assert_non_null(rules_email_check("ann@example.com\r\nBcc: x@y.z"));
    assert_non_null(rules_email_check("<ann@example.com>"));
    assert_non_null(rules_email_check("ann@exa_mple.com"));
    char long_email[300];
    memset(long_email, 'a', sizeof long_email);
    memcpy(long_email + 250, "@x.com", 7);
    assert_non_null(rules_email_check(long_email));

    assert_null(rules_password_check("correct horse"));
    assert_non_null(rules_password_check("short"));
    assert_non_null(rules_password_check(""));
    char long_pw[300];
    memset(long_pw, 'p', sizeof long_pw - 1);
    long_pw[sizeof long_pw - 1] = '\0';
    assert_non_null(rules_password_check(long_pw));
    assert_null(rules_login_password_check("x"));
    assert_non_null(rules_login_password_check(""));

    assert_null(rules_display_name_check("Ann Example"));
    assert_null(rules_display_name_check("Zoë"));
    assert_non_null(rules_display_name_check(""));
    assert_non_null(rules_display_name_check("a\nb"));
    assert_non_null(rules_display_name_check(long_pw));

    assert_null(rules_rfc3339_check("2026-11-25T10:00:00Z"));
    assert_null(rules_rfc3339_check("2026-11-25T10:00:00.123Z"));
    assert_null(rules_rfc3339_check("2026-11-25T10:00:00+01:00"));
    assert_non_null(rules_rfc3339_check("2026-11-25"));
    assert_non_null(rules_rfc3339_check("2026-13-25T10:00:00Z"));
    assert_non_null(rules_rfc3339_check("2026-11-25T25:00:00Z"));
    assert_non_null(rules_rfc3339_check("2026-11-25T10:00:00"));
    assert_non_null(rules_rfc3339_check("2026-11-25T10:00:00Zjunk"));
    assert_non_null(rules_rfc3339_check("tomorrow"));
    /* impossible dates and offsets (PostgreSQL refused them: a 500 before) */
    assert_non_null(rules_rfc3339_check("2026-02-31T00:00:00Z"));
    assert_non_null(rules_rfc3339_check("2026-04-31T00:00:00Z"));
    assert_non_null(rules_rfc3339_check("2026-02-29T00:00:00Z"));
    assert_non_null(rules_rfc3339_check("1900-02-29T00:00:00Z"));
    assert_null(rules_rfc3339_check("2000-02-29T00:00:00Z"));
    assert_null(rules_rfc3339_check("2028-02-29T00:00:00Z"));
    assert_null(rules_rfc3339_check("2026-12-31T23:59:60Z"));
    assert_null(rules_rfc3339_check("2026-01-31T00:00:00Z"));
    assert_non_null(rules_rfc3339_check("0000-01-01T00:00:00Z"));
    assert_null(rules_rfc3339_check("0001-01-01T00:00:00Z"));
    assert_null(rules_rfc3339_check("2026-11-25T10:00:00+15:59"));
    assert_null(rules_rfc3339_check("2026-11-25T10:00:00-15:59"));
    assert_non_null(rules_rfc3339_check("2026-11-25T10:00:00+16:00"));
    assert_non_null(rules_rfc3339_check("9999-12-31T23:59:60+23:59"));
    assert_non_null(rules_rfc3339_check(NULL));

    assert_null(rules_kind_check("employee", false));
    assert_null(rules_kind_check("admin", false));
    assert_non_null(rules_kind_check("extranet", false));
    assert_null(rules_kind_check("extranet", true));
    assert_non_null(rules_kind_check("root", true));
    assert_null(rules_status_check("active"));
    assert_null(rules_status_check("deactivated"));
    assert_non_null(rules_status_check("deleted"));
}

static void test_rules_cache_ttl(void **state) {
    (void)state;
    assert_int_equal(rules_session_cache_ttl_ms(1000, 1000 + 600000), RULES_SESSION_CACHE_MAX_MS);
    assert_int_equal(rules_session_cache_ttl_ms(1000, 1000 + 5000), 5000);
    assert_int_equal(rules_session_cache_ttl_ms(1000, 1000), 0);
    assert_int_equal(rules_session_cache_ttl_ms(1000, 10), 0);
}

int main(void) {
    if (sodium_init() < 0 || totp_global_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc6238_vectors), cmocka_unit_test(test_verify_window),
        cmocka_unit_test(test_verify_replay),   cmocka_unit_test(test_rules_totp_step),
        cmocka_unit_test(test_base32_and_uri),  cmocka_unit_test(test_seal_open), cmocka_unit_test(test_text_seal_open),
        cmocka_unit_test(test_recovery_codes),  cmocka_unit_test(test_rules_access),
        cmocka_unit_test(test_rules_input),     cmocka_unit_test(test_rules_cache_ttl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
