/* Login rate limit (POST /auth/login, POST /auth/mfa): fixed windows per account (the email or
 * mfa_token, hashed) and per client ip, counted in Redis (INCR + PEXPIRE NX, one pipelined
 * round trip on the calling thread's connection). When Redis fails, an in-process limiter
 * with half the limits takes over: stricter, never none (DESIGN.md §5). Every attempt is
 * counted before it is made; a successful one is refunded afterwards. Any thread. */
#ifndef GW_RATELIMIT_H
#define GW_RATELIMIT_H
#include "extranet/common.h"
#include <stdbool.h>

typedef struct {
    long per_account; /* attempts per window per account (EXTRANET_LOGIN_RATE_ACCOUNT, 10) */
    long per_ip;      /* attempts per window per ip (EXTRANET_LOGIN_RATE_IP, 30) */
    long window_s;    /* EXTRANET_LOGIN_RATE_WINDOW_S, 300 */
} ratelimit_cfg_t;

int ratelimit_init(const ratelimit_cfg_t *cfg) WUR;
void ratelimit_fini(void);

/* Counts one attempt for (scope, account, ip); account may be "" (counted per ip only).
 * Returns true when allowed; false with *ret_retry_after_s (>= 1) when over a limit.
 * *ret_local tells which limiter counted (for ratelimit_refund). */
bool ratelimit_allow(const char *scope, const char *account, const char *ip, int *ret_retry_after_s,
                     bool *ret_local);

/* Gives back the attempt counted by ratelimit_allow when it succeeded (a correct password),
 * so only failures use up the limit while parallel bursts are still counted up front. */
void ratelimit_refund(const char *scope, const char *account, const char *ip, bool local);
#endif
