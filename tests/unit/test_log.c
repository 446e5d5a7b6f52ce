/* Unit tests of log.c: each line is one valid JSON object with the documented fields, strings
 * are escaped (quotes, control bytes, invalid UTF-8), the level filters, and lines written by
 * concurrent threads never interleave. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "extranet/log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int s_saved = -1, s_tmp = -1;

static void s_capture_begin(void) {
    char path[] = "/tmp/test_log_XXXXXX";
    s_tmp = mkstemp(path);
    assert_true(s_tmp >= 0);
    unlink(path);
    s_saved = dup(2);
    assert_true(s_saved >= 0);
    assert_true(dup2(s_tmp, 2) >= 0);
}

/* Returns the captured bytes (caller frees). */
static char *s_capture_end(void) {
    assert_true(dup2(s_saved, 2) >= 0);
    close(s_saved);
    off_t n = lseek(s_tmp, 0, SEEK_END);
    assert_true(n >= 0);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(pread(s_tmp, buf, (size_t)n, 0), n);
    buf[n] = '\0';
    close(s_tmp);
    return buf;
}

static json_t *s_parse_line(const char *line) {
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    if (!j)
        fail_msg("not JSON (%s): %s", err.text, line);
    return j;
}

static void test_log_fields(void **state) {
    (void)state;
    setenv("EXTRANET_LOG", "debug", 1);
    log_init("unit");
    log_set_request_id(NULL);
    s_capture_begin();
    log_info("hello %d", 42);
    log_set_request_id("6f1c1d0e-6b7a-4f43-9a3c-2b1d9b2e8c11");
    log_error("bad \"thing\"\n\ttab \x01 \xff\xfe end é");
    log_set_request_id(NULL);
    log_debug("dbg");
    char *out = s_capture_end();

    char *save = NULL;
    char *l1 = strtok_r(out, "\n", &save), *l2 = strtok_r(NULL, "\n", &save),
         *l3 = strtok_r(NULL, "\n", &save);
    assert_non_null(l1);
    assert_non_null(l2);
    assert_non_null(l3);
    assert_null(strtok_r(NULL, "\n", &save));

    json_t *j = s_parse_line(l1);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "service")), "unit");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "hello 42");
    assert_null(json_object_get(j, "request_id"));
    assert_null(json_object_get(j, "src"));
    const char *t = json_string_value(json_object_get(j, "time"));
    assert_non_null(t);
    /* 2026-11-25T10:00:00.123Z */
    assert_int_equal(strlen(t), 24);
    assert_int_equal(t[10], 'T');
    assert_int_equal(t[19], '.');
    assert_int_equal(t[23], 'Z');
    json_decref(j);

    j = s_parse_line(l2);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")),
                        "6f1c1d0e-6b7a-4f43-9a3c-2b1d9b2e8c11");
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "bad \"thing\"\n\ttab \x01 \xef\xbf\xbd\xef\xbf\xbd end é");
    const char *src = json_string_value(json_object_get(j, "src"));
    assert_non_null(src);
    assert_non_null(strstr(src, "test_log.c:test_log_fields:"));
    json_decref(j);

    j = s_parse_line(l3);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "debug");
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
    free(out);
}

static void test_log_level_filter(void **state) {
    (void)state;
    setenv("EXTRANET_LOG", "warn", 1);
    log_init("unit");
    s_capture_begin();
    log_debug("no");
    log_info("no");
    log_warn("yes");
    log_error("yes");
    char *out = s_capture_end();
    int lines = 0;
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 2);
    assert_null(strstr(out, "\"no\""));
    free(out);
    unsetenv("EXTRANET_LOG");
    log_init("unit");
}

static void test_log_request_id_thread_local(void **state) {
    (void)state;
    log_set_request_id("abc");
    assert_string_equal(log_request_id(), "abc");
    log_set_request_id(NULL);
    assert_null(log_request_id());
}

#define THREADS 4
#define LINES 500

static void *s_writer(void *arg) {
    char rid[32];
    snprintf(rid, sizeof rid, "thread-%d", (int)(intptr_t)arg);
    log_set_request_id(rid);
    char pad[600];
    memset(pad, 'a' + (int)(intptr_t)arg, sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < LINES; i++)
        log_info("%d %s", i, pad);
    return NULL;
}

static void test_log_concurrent_lines_intact(void **state) {
    (void)state;
    log_init("unit");
    s_capture_begin();
    pthread_t th[THREADS];
    for (intptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, s_writer, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    char *out = s_capture_end();
    int count = 0;
    char *save = NULL;
    for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = s_parse_line(l);
        const char *rid = json_string_value(json_object_get(j, "request_id"));
        const char *msg = json_string_value(json_object_get(j, "msg"));
        assert_non_null(rid);
        assert_non_null(msg);
        /* the padding letter matches the thread that wrote the line */
        char want = (char)('a' + (rid[7] - '0'));
        assert_int_equal(msg[strlen(msg) - 1], want);
        json_decref(j);
        count++;
    }
    assert_int_equal(count, THREADS * LINES);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_fields),
        cmocka_unit_test(test_log_level_filter),
        cmocka_unit_test(test_log_request_id_thread_local),
        cmocka_unit_test(test_log_concurrent_lines_intact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
