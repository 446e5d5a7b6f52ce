/* Clocks, uuids, hex and endpoint lists: the small pure helpers every process needs.
 * Randomness comes from libsodium (the kernel CSPRNG), initialised once per process. */
#include "extranet/util.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t util_now_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pthread_once_t s_sodium_once = PTHREAD_ONCE_INIT;

static void s_sodium_init(void) {
    /* sodium_init() fails only when no entropy source exists; randombytes_buf() would then
     * abort on its own, which is the right outcome for a process that cannot make secrets. */
    if (sodium_init() < 0)
        abort();
}

void util_uuid_v4(char out[37]) {
    static const char hexd[] = "0123456789abcdef";
    uint8_t b[16];
    pthread_once(&s_sodium_once, s_sodium_init);
    randombytes_buf(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0F) | 0x40); /* version 4 (RFC 9562 §5.4) */
    b[8] = (uint8_t)((b[8] & 0x3F) | 0x80); /* variant 10xx */
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hexd[b[i] >> 4];
        out[o++] = hexd[b[i] & 0x0F];
    }
    out[o] = '\0';
}

bool util_uuid_valid(const char *s) {
    if (!s)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                     (c >= 'A' && c <= 'F'))) {
            return false; /* also stops at an early NUL */
        }
    }
    return s[36] == '\0';
}

bool util_uuid_lower(const char *s, char out[37]) {
    out[0] = '\0';
    if (!util_uuid_valid(s))
        return false;
    for (int i = 0; i < 37; i++)
        out[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] - 'A' + 'a') : s[i];
    return true;
}

void util_hex(const uint8_t *in, size_t len, char *out) {
    static const char hexd[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hexd[in[i] >> 4];
        out[2 * i + 1] = hexd[in[i] & 0x0F];
    }
    out[2 * len] = '\0';
}

/* Items are trimmed of blanks; empty items ("a,,b", trailing comma) are skipped. More than
 * max items is an error rather than a silent truncation of the operator's list. */
int util_split_list(const char *list, char **ret_items, int max) {
    if (!list || !ret_items || max <= 0)
        return -EINVAL;
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *b = p, *e = end;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        if (e > b) {
            if (n == max)
                goto fail_inval;
            ret_items[n] = strndup(b, (size_t)(e - b));
            if (!ret_items[n]) {
                for (int i = 0; i < n; i++) {
                    free(ret_items[i]);
                    ret_items[i] = NULL;
                }
                return -ENOMEM;
            }
            n++;
        }
        if (*end == '\0')
            break;
        p = end + 1;
    }
    return n;
fail_inval:
    for (int i = 0; i < n; i++) {
        free(ret_items[i]);
        ret_items[i] = NULL;
    }
    return -EINVAL;
}
