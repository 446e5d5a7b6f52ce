/* TOTP (RFC 6238: HMAC-SHA-1, 30 s steps, 6 digits, ±1 step) through liboath, plus what 2FA
 * needs around it: sealing secrets with EXTRANET_DATA_KEY (libsodium secretbox), base32 and
 * otpauth:// URIs, and one-time recovery codes (only salted SHA-256 hashes are stored). */
#ifndef IDENTITY_TOTP_H
#define IDENTITY_TOTP_H
#include "extranet/common.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define TOTP_SECRET_LEN 20 /* 160 bits, RFC 4226 §4 recommendation */
#define TOTP_STEP_S     30
#define TOTP_DIGITS     6
#define TOTP_WINDOW     1
#define TOTP_KEY_LEN    32 /* EXTRANET_DATA_KEY, 64 hex chars */
#define TOTP_B32_LEN    32 /* base32 of 20 bytes: no padding */
/* hex(nonce 24 || mac 16 || secret 20) */
#define TOTP_SEALED_HEX_LEN       ((size_t)2 * (24 + 16 + TOTP_SECRET_LEN))
#define TOTP_RECOVERY_COUNT       10
#define TOTP_RECOVERY_DISPLAY_LEN 19 /* xxxx-xxxx-xxxx-xxxx */

/* Calls oath_init(); once in main before any thread. Returns 0 or -EIO. */
int totp_global_init(void) WUR;

int64_t totp_step_of(time_t unix_s); /* floor(unix_s / 30) */

/* Writes the `digits`-digit code (6..8) for time unix_s into out (digits + 1 bytes).
 * Returns 0 or -EINVAL. */
int totp_code(const uint8_t *secret, size_t len, time_t unix_s, unsigned digits, char *out) WUR;

/* Checks a 6-digit code against the steps within ±TOTP_WINDOW of now that are newer than
 * last_step (rules_totp_step_ok), comparing in constant time. Returns 0 with *ret_step set to
 * the matching step, or -EACCES. */
int totp_verify(const uint8_t *secret, size_t len, time_t now, const char *code, int64_t last_step,
                int64_t *ret_step) WUR;

/* base32 (RFC 4648, upper case, no padding) of the secret into out[TOTP_B32_LEN + 1]. */
int totp_secret_base32(const uint8_t secret[TOTP_SECRET_LEN], char out[TOTP_B32_LEN + 1]) WUR;

/* otpauth://totp/extranet:<label>?secret=..&issuer=extranet&algorithm=SHA1&digits=6&period=30
 * into out (outlen bytes). Returns 0 or -ENOSPC. */
int totp_uri(const char *b32, const char *label, char *out, size_t outlen) WUR;

/* Parses 64 hex chars into key. Returns 0 or -EINVAL. */
int totp_key_parse(const char *hex, uint8_t key[TOTP_KEY_LEN]) WUR;
/* Seals secret with key and a random nonce into out (TOTP_SEALED_HEX_LEN + 1). */
void totp_secret_seal(const uint8_t key[TOTP_KEY_LEN], const uint8_t secret[TOTP_SECRET_LEN],
                      char out[TOTP_SEALED_HEX_LEN + 1]);
/* Seals a text of any length (a queued mail body: it may hold an invitation token) with key
 * and a random nonce: "s1:" + base64(nonce | secretbox). Returns a new malloc'd string the
 * caller frees, or NULL when out of memory. */
char *totp_text_seal(const uint8_t key[TOTP_KEY_LEN], const char *plain);
/* Opens totp_text_seal()'s output into a new malloc'd string (*ret_plain, caller frees).
 * Returns 0, -EBADMSG when malformed or sealed with another key, -ENOMEM. */
int totp_text_open(const uint8_t key[TOTP_KEY_LEN], const char *sealed, char **ret_plain) WUR;
/* Opens a sealed secret. Returns 0, or -EBADMSG when it is malformed or the key is wrong. */
int totp_secret_open(const uint8_t key[TOTP_KEY_LEN], const char *sealed,
                     uint8_t secret[TOTP_SECRET_LEN]) WUR;

/* A new random recovery code as shown to the user ("abcd-efgh-ijkl-mnop", 80 bits). */
void totp_recovery_new(char out[TOTP_RECOVERY_DISPLAY_LEN + 1]);
/* Hash of a normalized code (rules_recovery_normalize) with a hex salt: sha256(salt||code) hex.
 * When salt_hex is NULL a new random salt is written to ret_salt (33 bytes). */
void totp_recovery_hash(const char *normalized, const char *salt_hex, char ret_salt[33],
                        char ret_hash[65]);
#endif
