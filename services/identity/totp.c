/* TOTP codes through liboath, sealed secrets through libsodium secretbox, recovery codes.
 * liboath does the RFC 6238 maths; this file adds the ±1 window with replay refusal (the
 * decision itself is rules_totp_step_ok) and the secret handling around it. */
#include "totp.h"
#include "rules.h"
#include <errno.h>
#include <liboath/oath.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int totp_global_init(void) {
    return oath_init() == OATH_OK ? 0 : -EIO;
}

int64_t totp_step_of(time_t unix_s) {
    return unix_s < 0 ? -1 : (int64_t)(unix_s / TOTP_STEP_S);
}

int totp_code(const uint8_t *secret, size_t len, time_t unix_s, unsigned digits, char *out) {
    if (!secret || !out || digits < 6 || digits > 8)
        return -EINVAL;
    int rc = oath_totp_generate2((const char *)secret, len, unix_s, TOTP_STEP_S,
                                 OATH_TOTP_DEFAULT_START_TIME, digits, 0, out);
    return rc == OATH_OK ? 0 : -EINVAL;
}

int totp_verify(const uint8_t *secret, size_t len, time_t now, const char *code, int64_t last_step,
                int64_t *ret_step) {
    if (!rules_totp_code_shape(code))
        return -EACCES;
    int64_t now_step = totp_step_of(now);
    int64_t found = -1;
    /* Every step of the window is computed and compared in constant time, whether or not an
     * earlier one matched, so the answer time does not tell which step was right. */
    for (int64_t step = now_step - TOTP_WINDOW; step <= now_step + TOTP_WINDOW; step++) {
        char expect[TOTP_DIGITS + 1];
        if (step < 0 ||
            totp_code(secret, len, (time_t)(step * TOTP_STEP_S), TOTP_DIGITS, expect) != 0)
            continue;
        bool match = sodium_memcmp(expect, code, TOTP_DIGITS) == 0;
        if (match && found < 0 && rules_totp_step_ok(step, now_step, last_step, TOTP_WINDOW))
            found = step;
    }
    if (found < 0)
        return -EACCES;
    *ret_step = found;
    return 0;
}

int totp_secret_base32(const uint8_t secret[TOTP_SECRET_LEN], char out[TOTP_B32_LEN + 1]) {
    char *b32 = NULL;
    size_t n = 0;
    if (oath_base32_encode((const char *)secret, TOTP_SECRET_LEN, &b32, &n) != OATH_OK || !b32)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n && b32[i] && k < TOTP_B32_LEN; i++)
        if (b32[i] != '=')
            out[k++] = b32[i];
    out[k] = '\0';
    sodium_memzero(b32, n);
    free(b32);
    return k == TOTP_B32_LEN ? 0 : -EINVAL;
}

/* Percent-encodes everything but RFC 3986 unreserved characters. */
static int s_urlencode(const char *in, char *out, size_t outlen) {
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        if (k + (plain ? 1 : 3) >= outlen)
            return -ENOSPC;
        if (plain) {
            out[k++] = (char)*p;
        } else {
            out[k++] = '%';
            out[k++] = hex[*p >> 4];
            out[k++] = hex[*p & 15];
        }
    }
    out[k] = '\0';
    return 0;
}

int totp_uri(const char *b32, const char *label, char *out, size_t outlen) {
    char enc[3 * 256 + 1];
    if (strlen(label) > 256 || s_urlencode(label, enc, sizeof enc) != 0)
        return -ENOSPC;
    int n = snprintf(out, outlen,
                     "otpauth://totp/extranet:%s?secret=%s&issuer=extranet&algorithm=SHA1"
                     "&digits=%d&period=%d",
                     enc, b32, TOTP_DIGITS, TOTP_STEP_S);
    return n > 0 && (size_t)n < outlen ? 0 : -ENOSPC;
}

int totp_key_parse(const char *hex, uint8_t key[TOTP_KEY_LEN]) {
    size_t bin_len = 0;
    if (!hex || strlen(hex) != (size_t)2 * TOTP_KEY_LEN)
        return -EINVAL;
    if (sodium_hex2bin(key, TOTP_KEY_LEN, hex, strlen(hex), NULL, &bin_len, NULL) != 0 ||
        bin_len != TOTP_KEY_LEN)
        return -EINVAL;
    return 0;
}

void totp_secret_seal(const uint8_t key[TOTP_KEY_LEN], const uint8_t secret[TOTP_SECRET_LEN],
                      char out[TOTP_SEALED_HEX_LEN + 1]) {
    uint8_t buf[crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + TOTP_SECRET_LEN];
    randombytes_buf(buf, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(buf + crypto_secretbox_NONCEBYTES, secret, TOTP_SECRET_LEN, buf, key);
    sodium_bin2hex(out, TOTP_SEALED_HEX_LEN + 1, buf, sizeof buf);
}

int totp_secret_open(const uint8_t key[TOTP_KEY_LEN], const char *sealed,
                     uint8_t secret[TOTP_SECRET_LEN]) {
    uint8_t buf[crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + TOTP_SECRET_LEN];
    size_t n = 0;
    if (!sealed || strlen(sealed) != TOTP_SEALED_HEX_LEN ||
        sodium_hex2bin(buf, sizeof buf, sealed, TOTP_SEALED_HEX_LEN, NULL, &n, NULL) != 0 ||
        n != sizeof buf)
        return -EBADMSG;
    if (crypto_secretbox_open_easy(secret, buf + crypto_secretbox_NONCEBYTES,
                                   sizeof buf - crypto_secretbox_NONCEBYTES, buf, key) != 0)
        return -EBADMSG;
    return 0;
}

void totp_recovery_new(char out[TOTP_RECOVERY_DISPLAY_LEN + 1]) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    size_t k = 0;
    for (int i = 0; i < RULES_RECOVERY_LEN; i++) {
        if (i > 0 && i % 4 == 0)
            out[k++] = '-';
        out[k++] = alphabet[randombytes_uniform(32)];
    }
    out[k] = '\0';
}

void totp_recovery_hash(const char *normalized, const char *salt_hex, char ret_salt[33],
                        char ret_hash[65]) {
    uint8_t salt[16], digest[crypto_hash_sha256_BYTES];
    size_t n = 0;
    if (salt_hex &&
        sodium_hex2bin(salt, sizeof salt, salt_hex, strlen(salt_hex), NULL, &n, NULL) == 0 &&
        n == sizeof salt) {
        if (ret_salt)
            memcpy(ret_salt, salt_hex, 33);
    } else {
        randombytes_buf(salt, sizeof salt);
        if (ret_salt)
            sodium_bin2hex(ret_salt, 33, salt, sizeof salt);
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, salt, sizeof salt);
    crypto_hash_sha256_update(&st, (const uint8_t *)normalized, strlen(normalized));
    crypto_hash_sha256_final(&st, digest);
    sodium_bin2hex(ret_hash, 65, digest, sizeof digest);
}

#define S_TEXT_PREFIX "s1:"

char *totp_text_seal(const uint8_t key[TOTP_KEY_LEN], const char *plain) {
    size_t plen = strlen(plain);
    size_t blen = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + plen;
    uint8_t *buf = malloc(blen);
    size_t b64 = sodium_base64_ENCODED_LEN(blen, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(strlen(S_TEXT_PREFIX) + b64);
    if (!buf || !out) {
        free(buf);
        free(out);
        return NULL;
    }
    randombytes_buf(buf, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(buf + crypto_secretbox_NONCEBYTES, (const uint8_t *)plain, plen, buf,
                          key);
    memcpy(out, S_TEXT_PREFIX, strlen(S_TEXT_PREFIX));
    sodium_bin2base64(out + strlen(S_TEXT_PREFIX), b64, buf, blen, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(buf, blen);
    free(buf);
    return out;
}

int totp_text_open(const uint8_t key[TOTP_KEY_LEN], const char *sealed, char **ret_plain) {
    size_t pre = strlen(S_TEXT_PREFIX);
    if (!sealed || strncmp(sealed, S_TEXT_PREFIX, pre) != 0)
        return -EBADMSG;
    const char *b64 = sealed + pre;
    size_t max = strlen(b64) / 4 * 3 + 3;
    uint8_t *buf = malloc(max);
    if (!buf)
        return -ENOMEM;
    size_t blen = 0;
    const size_t overhead = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES;
    if (sodium_base642bin(buf, max, b64, strlen(b64), NULL, &blen, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        blen < overhead) {
        free(buf);
        return -EBADMSG;
    }
    size_t plen = blen - overhead;
    char *plain = malloc(plen + 1);
    if (!plain) {
        free(buf);
        return -ENOMEM;
    }
    if (crypto_secretbox_open_easy((uint8_t *)plain, buf + crypto_secretbox_NONCEBYTES,
                                   blen - crypto_secretbox_NONCEBYTES, buf, key) != 0) {
        free(buf);
        free(plain);
        return -EBADMSG;
    }
    free(buf);
    plain[plen] = '\0';
    if (strlen(plain) != plen) { /* an embedded NUL: not a text we sealed */
        sodium_memzero(plain, plen);
        free(plain);
        return -EBADMSG;
    }
    *ret_plain = plain;
    return 0;
}
