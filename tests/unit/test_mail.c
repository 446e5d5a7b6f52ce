/* runtime mail.c: address checks, header-injection refusal, disabled mail, and an SMTP
 * failure reported as -EIO with curl's reason (a closed local port: connection refused). */
/* cmocka needs these four first */
// clang-format off
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
// clang-format on

#include "extranet/mail.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_address_valid(void **state) {
    (void)state;
    assert_true(mail_address_valid("ann@example.com"));
    assert_true(mail_address_valid("a.b+c@x.y"));
    assert_false(mail_address_valid(NULL));
    assert_false(mail_address_valid(""));
    assert_false(mail_address_valid("ann"));
    assert_false(mail_address_valid("@example.com"));
    assert_false(mail_address_valid("ann@"));
    assert_false(mail_address_valid("a@b@c"));
    assert_false(mail_address_valid("ann@example.com\r\nRCPT TO:<x@y.z>"));
    assert_false(mail_address_valid("<ann@example.com>"));
    assert_false(mail_address_valid("ann smith@example.com"));
    assert_false(mail_address_valid("ann@exämple.com"));
}

static void test_refusals(void **state) {
    (void)state;
    char err[128];
    mail_cfg_t off = {.smtp_url = NULL, .from = "x@y.z"};
    assert_int_equal(mail_send(&off, "a@b.c", "s", "b", err, sizeof err), -ENOTCONN);
    off.smtp_url = "";
    assert_int_equal(mail_send(&off, "a@b.c", "s", "b", err, sizeof err), -ENOTCONN);
    mail_cfg_t cfg = {.smtp_url = "smtp://127.0.0.1:1", .from = "x@y.z", .timeout_ms = 2000};
    /* Header injection through the subject or an address is impossible: refused up front. */
    assert_int_equal(mail_send(&cfg, "a@b.c", "hi\r\nBcc: e@f.g", "b", err, sizeof err), -EINVAL);
    assert_int_equal(mail_send(&cfg, "a@b.c", "hi\nX: y", "b", err, sizeof err), -EINVAL);
    assert_int_equal(mail_send(&cfg, "a@b.c\r\nBcc: e@f.g", "s", "b", err, sizeof err), -EINVAL);
    mail_cfg_t bad_from = {.smtp_url = "smtp://127.0.0.1:1", .from = "not an address"};
    assert_int_equal(mail_send(&bad_from, "a@b.c", "s", "b", err, sizeof err), -EINVAL);
    char subject[1100];
    memset(subject, 's', sizeof subject - 1);
    subject[sizeof subject - 1] = '\0';
    assert_int_equal(mail_send(&cfg, "a@b.c", subject, "b", err, sizeof err), -EINVAL);
}

static void test_smtp_failure_is_eio(void **state) {
    (void)state;
    /* A port that was just free and is not listening: connection refused. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    char url[64], err[256] = "";
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", ntohs(a.sin_port));
    mail_cfg_t cfg = {.smtp_url = url, .from = "x@y.z", .timeout_ms = 3000};
    assert_int_equal(mail_send(&cfg, "a@b.c", "subject", "body\n", err, sizeof err), -EIO);
    assert_true(err[0] != '\0');
    assert_null(strstr(err, "body"));
}

int main(void) {
    if (mail_global_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address_valid),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_smtp_failure_is_eio),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
