/* Unit tests of cfg.c: defaults, ranges and garbage in cfg_long, empty values in cfg_str, and
 * the --help/--version/unknown-argument contract of cfg_handle_args. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/cfg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VAR "EXTRANET_TEST_CFG_VALUE"

static void test_cfg_str(void **state) {
    (void)state;
    unsetenv(VAR);
    assert_string_equal(cfg_str(VAR, "dflt"), "dflt");
    assert_null(cfg_str(VAR, NULL));
    setenv(VAR, "", 1);
    assert_string_equal(cfg_str(VAR, "dflt"), "dflt");
    setenv(VAR, "tcp://a:1,tcp://b:2", 1);
    assert_string_equal(cfg_str(VAR, "dflt"), "tcp://a:1,tcp://b:2");
    unsetenv(VAR);
}

static void test_cfg_long_defaults(void **state) {
    (void)state;
    long v = -1;
    unsetenv(VAR);
    assert_int_equal(cfg_long(VAR, 4, 1, 64, &v), 0);
    assert_int_equal(v, 4);
    setenv(VAR, "", 1);
    v = -1;
    assert_int_equal(cfg_long(VAR, 5000, 1, 60000, &v), 0);
    assert_int_equal(v, 5000);
    unsetenv(VAR);
}

static void test_cfg_long_ranges(void **state) {
    (void)state;
    long v = 0;
    setenv(VAR, "1", 1);
    assert_int_equal(cfg_long(VAR, 4, 1, 64, &v), 0);
    assert_int_equal(v, 1);
    setenv(VAR, "64", 1);
    assert_int_equal(cfg_long(VAR, 4, 1, 64, &v), 0);
    assert_int_equal(v, 64);
    setenv(VAR, "-3", 1);
    assert_int_equal(cfg_long(VAR, 0, -10, 10, &v), 0);
    assert_int_equal(v, -3);

    v = 77;
    setenv(VAR, "0", 1);
    assert_int_equal(cfg_long(VAR, 4, 1, 64, &v), -EINVAL);
    setenv(VAR, "65", 1);
    assert_int_equal(cfg_long(VAR, 4, 1, 64, &v), -EINVAL);
    setenv(VAR, "-1", 1);
    assert_int_equal(cfg_long(VAR, 4, 0, 64, &v), -EINVAL);
    assert_int_equal(v, 77); /* untouched on error */
    unsetenv(VAR);
}

static void test_cfg_long_garbage(void **state) {
    (void)state;
    const char *bad[] = {"abc", "12abc", "4 ", " 4", "\t4", "0x10", "1e3", "4.0", "+",
                         "-", "99999999999999999999999", "-99999999999999999999999", "4,5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        long v = 77;
        setenv(VAR, bad[i], 1);
        assert_int_equal(cfg_long(VAR, 4, -100000, 100000, &v), -EINVAL);
        assert_int_equal(v, 77);
    }
    unsetenv(VAR);
}

/* Runs cfg_handle_args with stdout (or stderr) captured into buf. */
static int s_capture(int fd, char **argv, int argc, char *buf, size_t cap) {
    FILE *stream = fd == 1 ? stdout : stderr;
    fflush(stream);
    char path[] = "/tmp/test_cfg_XXXXXX";
    int tmp = mkstemp(path);
    assert_true(tmp >= 0);
    unlink(path);
    int saved = dup(fd);
    assert_true(saved >= 0);
    assert_true(dup2(tmp, fd) >= 0);
    int rc = cfg_handle_args(argc, argv, "svc", "usage: svc\n  EXTRANET_X  something\n");
    fflush(stream);
    assert_true(dup2(saved, fd) >= 0);
    close(saved);
    ssize_t n = pread(tmp, buf, cap - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    close(tmp);
    return rc;
}

static void test_cfg_handle_args(void **state) {
    (void)state;
    char buf[512];
    char *none[] = {"svc", NULL};
    assert_int_equal(s_capture(1, none, 1, buf, sizeof buf), 0);
    assert_string_equal(buf, "");

    char *help[] = {"svc", "--help", NULL};
    assert_int_equal(s_capture(1, help, 2, buf, sizeof buf), 1);
    assert_string_equal(buf, "svc " EXTRANET_VERSION "\n\nusage: svc\n  EXTRANET_X  something\n");

    char *version[] = {"svc", "--version", NULL};
    assert_int_equal(s_capture(1, version, 2, buf, sizeof buf), 1);
    assert_string_equal(buf, "svc " EXTRANET_VERSION "\n");

    char *bogus[] = {"svc", "--bogus", NULL};
    assert_int_equal(s_capture(2, bogus, 2, buf, sizeof buf), -1);
    assert_non_null(strstr(buf, "--bogus"));
    assert_non_null(strstr(buf, "usage: svc"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_str),           cmocka_unit_test(test_cfg_long_defaults),
        cmocka_unit_test(test_cfg_long_ranges),   cmocka_unit_test(test_cfg_long_garbage),
        cmocka_unit_test(test_cfg_handle_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
