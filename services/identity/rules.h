/* identity's pure decisions: who may call which method, what input is acceptable, whether a
 * TOTP step may be used, how long a session may stay in the Redis cache. No I/O: every
 * function here is unit-tested exhaustively (tests/unit/test_totp.c). */
#ifndef IDENTITY_RULES_H
#define IDENTITY_RULES_H
#include "envelope.pb-c.h"
#include <stdbool.h>
#include <stdint.h>

/* Who may call a method (README.md, column "who"). */
typedef enum {
    ACCESS_ANY,          /* anyone, anonymous included (login, authenticate) */
    ACCESS_USER,         /* a signed-in user whose session is not mfa_pending */
    ACCESS_USER_PENDING, /* a signed-in user, mfa_pending allowed (me, enroll, confirm, logout) */
    ACCESS_ADMIN,        /* an admin */
    ACCESS_ADMIN_SYSTEM, /* an admin or a service (SYSTEM) */
    ACCESS_SYSTEM,       /* a service only */
} rules_access_t;

/* Decides whether actor (may be NULL = anonymous) may call a method of the given access.
 * Returns OK, UNAUTHENTICATED (no usable identity), FORBIDDEN, or MFA_ENROLLMENT_REQUIRED. */
Extranet__Status rules_access_check(rules_access_t access, const Extranet__Actor *actor);

/* Input validation. Each returns NULL when valid, else a message safe to show the caller. */
const char *rules_email_check(const char *email);       /* 3..254 bytes, one '@', ... */
const char *rules_password_check(const char *pw);       /* a new password: 8..256 bytes */
const char *rules_login_password_check(const char *pw); /* non-empty, <= 1024 bytes */
const char *rules_display_name_check(const char *name); /* 1..200 bytes, no controls */
const char *rules_rfc3339_check(const char *ts);        /* 2026-11-25T10:00:00(.123)Z/+01:00 */
const char *rules_kind_check(const char *kind, bool allow_extranet);
const char *rules_status_check(const char *status);

/* True when a TOTP code of time step `step` may be accepted now: |step - now_step| <= window
 * and step > last_step (the highest step already used, so a code is never accepted twice). */
bool rules_totp_step_ok(int64_t step, int64_t now_step, int64_t last_step, int window);

#define RULES_SESSION_CACHE_MAX_MS 60000
/* TTL in ms for a cached session: min(60 s, valid_until_ms - now_ms); <= 0 = do not cache. */
int64_t rules_session_cache_ttl_ms(int64_t now_ms, int64_t valid_until_ms);

/* Normalizes a recovery code as typed ("ABCD-efgh ijkl-mnop") into out (lower case, no dashes
 * or spaces). Returns false when it cannot be a recovery code (length/alphabet). */
#define RULES_RECOVERY_LEN 16
bool rules_recovery_normalize(const char *in, char out[RULES_RECOVERY_LEN + 1]);
/* True when code is exactly 6 ASCII digits. */
bool rules_totp_code_shape(const char *code);
#endif
