/* identity's pure decisions (see rules.h): access per actor kind, input checks, TOTP step
 * acceptance and session cache lifetimes. No I/O, no allocation. */
#include "rules.h"
#include <ctype.h>
#include <string.h>

static bool s_is_user_kind(Extranet__ActorKind k) {
    return k == EXTRANET__ACTOR_KIND__ADMIN || k == EXTRANET__ACTOR_KIND__EMPLOYEE ||
           k == EXTRANET__ACTOR_KIND__EXTRANET;
}

/* A signed-in user has a kind, a user id and a session id (the gateway sets all three). */
static bool s_is_signed_in(const Extranet__Actor *a) {
    return a && s_is_user_kind(a->kind) && a->user_id && a->user_id[0] && a->session_id &&
           a->session_id[0];
}

Extranet__Status rules_access_check(rules_access_t access, const Extranet__Actor *actor) {
    Extranet__ActorKind kind = actor ? actor->kind : EXTRANET__ACTOR_KIND__ANONYMOUS;
    switch (access) {
    case ACCESS_ANY:
        return EXTRANET__STATUS__OK;
    case ACCESS_USER:
    case ACCESS_USER_PENDING:
        if (!s_is_signed_in(actor))
            return EXTRANET__STATUS__UNAUTHENTICATED;
        if (access == ACCESS_USER && actor->mfa_pending)
            return EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED;
        return EXTRANET__STATUS__OK;
    case ACCESS_ADMIN:
    case ACCESS_ADMIN_SYSTEM:
        if (access == ACCESS_ADMIN_SYSTEM && kind == EXTRANET__ACTOR_KIND__SYSTEM)
            return EXTRANET__STATUS__OK;
        if (!s_is_signed_in(actor))
            return kind == EXTRANET__ACTOR_KIND__SYSTEM ? EXTRANET__STATUS__FORBIDDEN
                                                        : EXTRANET__STATUS__UNAUTHENTICATED;
        if (actor->mfa_pending)
            return EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED;
        return kind == EXTRANET__ACTOR_KIND__ADMIN ? EXTRANET__STATUS__OK
                                                   : EXTRANET__STATUS__FORBIDDEN;
    case ACCESS_SYSTEM:
        if (kind == EXTRANET__ACTOR_KIND__SYSTEM)
            return EXTRANET__STATUS__OK;
        return s_is_signed_in(actor) ? EXTRANET__STATUS__FORBIDDEN
                                     : EXTRANET__STATUS__UNAUTHENTICATED;
    }
    return EXTRANET__STATUS__FORBIDDEN;
}

static bool s_has_control(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

const char *rules_email_check(const char *email) {
    if (!email || !email[0])
        return "email is required";
    size_t n = strlen(email);
    if (n < 3 || n > 254)
        return "email must be 3 to 254 characters";
    const char *at = strchr(email, '@');
    if (!at || strchr(at + 1, '@'))
        return "email must contain exactly one '@'";
    if (at == email || at - email > 64)
        return "email needs a local part of 1 to 64 characters";
    const char *domain = at + 1;
    if (!domain[0] || domain[0] == '.' || domain[strlen(domain) - 1] == '.' || strstr(domain, ".."))
        return "email has an invalid domain";
    for (const unsigned char *p = (const unsigned char *)email; *p; p++) {
        /* Printable ASCII without the characters that would need quoting in a mail header:
         * the address also ends up in SMTP envelopes and otpauth labels. */
        if (*p <= 0x20 || *p >= 0x7f || strchr("<>()[]\\,;:\"", *p))
            return "email contains a character that is not allowed";
    }
    for (const char *p = domain; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return "email has an invalid domain";
    return NULL;
}

const char *rules_password_check(const char *pw) {
    if (!pw || !pw[0])
        return "password is required";
    size_t n = strlen(pw);
    if (n < 8)
        return "password must be at least 8 characters";
    if (n > 256)
        return "password must be at most 256 characters";
    return NULL;
}

const char *rules_login_password_check(const char *pw) {
    if (!pw || !pw[0])
        return "password is required";
    if (strlen(pw) > 1024)
        return "password is too long";
    return NULL;
}

const char *rules_display_name_check(const char *name) {
    if (!name || !name[0])
        return "display_name is required";
    if (strlen(name) > 200)
        return "display_name must be at most 200 bytes";
    if (s_has_control(name))
        return "display_name must not contain control characters";
    return NULL;
}

static bool s_digits(const char *s, int n) {
    for (int i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

const char *rules_rfc3339_check(const char *ts) {
    static const char *msg = "timestamp must be RFC 3339, e.g. 2026-11-25T10:00:00Z";
    if (!ts || strlen(ts) < 20 || strlen(ts) > 35)
        return msg;
    /* YYYY-MM-DDTHH:MM:SS */
    if (!s_digits(ts, 4) || ts[4] != '-' || !s_digits(ts + 5, 2) || ts[7] != '-' ||
        !s_digits(ts + 8, 2) || (ts[10] != 'T' && ts[10] != 't') || !s_digits(ts + 11, 2) ||
        ts[13] != ':' || !s_digits(ts + 14, 2) || ts[16] != ':' || !s_digits(ts + 17, 2))
        return msg;
    int mon = (ts[5] - '0') * 10 + (ts[6] - '0'), day = (ts[8] - '0') * 10 + (ts[9] - '0');
    int hh = (ts[11] - '0') * 10 + (ts[12] - '0'), mm = (ts[14] - '0') * 10 + (ts[15] - '0');
    int ss = (ts[17] - '0') * 10 + (ts[18] - '0');
    int year = ((ts[0] - '0') * 10 + (ts[1] - '0')) * 100 + (ts[2] - '0') * 10 + (ts[3] - '0');
    /* Days of the month with leap years, and no year 0: PostgreSQL refuses impossible dates
     * with an error, which must be the caller's 400, not our 500. */
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] ||
        (mon == 2 && day == 29 && !leap) || hh > 23 || mm > 59 || ss > 60)
        return msg;
    const char *p = ts + 19;
    if (*p == '.') {
        p++;
        int n = 0;
        while (isdigit((unsigned char)*p)) {
            p++;
            n++;
        }
        if (n < 1 || n > 9)
            return msg;
    }
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0')
        return NULL;
    if ((*p == '+' || *p == '-') && s_digits(p + 1, 2) && p[3] == ':' && s_digits(p + 4, 2) &&
        p[6] == '\0') {
        int oh = (p[1] - '0') * 10 + (p[2] - '0'), om = (p[4] - '0') * 10 + (p[5] - '0');
        if (oh <= 15 && om <= 59) /* PostgreSQL's range (real zones: -12:00..+14:00) */
            return NULL;
    }
    return msg;
}

const char *rules_kind_check(const char *kind, bool allow_extranet) {
    if (kind && (!strcmp(kind, "admin") || !strcmp(kind, "employee")))
        return NULL;
    if (kind && allow_extranet && !strcmp(kind, "extranet"))
        return NULL;
    return allow_extranet ? "kind must be admin, employee or extranet"
                          : "kind must be employee or admin";
}

const char *rules_status_check(const char *status) {
    if (status && (!strcmp(status, "active") || !strcmp(status, "deactivated")))
        return NULL;
    return "status must be active or deactivated";
}

bool rules_totp_step_ok(int64_t step, int64_t now_step, int64_t last_step, int window) {
    if (window < 0 || step < 0)
        return false;
    int64_t d = step - now_step;
    if (d < -window || d > window)
        return false;
    return step > last_step;
}

int64_t rules_session_cache_ttl_ms(int64_t now_ms, int64_t valid_until_ms) {
    int64_t left = valid_until_ms - now_ms;
    if (left <= 0)
        return 0;
    return left < RULES_SESSION_CACHE_MAX_MS ? left : RULES_SESSION_CACHE_MAX_MS;
}

bool rules_recovery_normalize(const char *in, char out[RULES_RECOVERY_LEN + 1]) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    size_t n = 0;
    if (!in)
        return false;
    for (const char *p = in; *p; p++) {
        if (*p == '-' || *p == ' ')
            continue;
        char c = (char)tolower((unsigned char)*p);
        if (!strchr(alphabet, c) || c == '\0' || n >= RULES_RECOVERY_LEN)
            return false;
        out[n++] = c;
    }
    out[n] = '\0';
    return n == RULES_RECOVERY_LEN;
}

bool rules_totp_code_shape(const char *code) {
    return code && strlen(code) == 6 && s_digits(code, 6);
}
