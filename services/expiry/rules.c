/* expiry's pure decisions (rules.h): the kinds table, subject and time validation, who may call,
 * attempt outcomes and backoff. No I/O here, so tests/unit/test_expiry_rules.c covers it all. */
#include "rules.h"

#include "extranet/util.h"
#include "identity.pb-c.h"
#include "membership.pb-c.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kinds expiry knows. Owners' methods must be idempotent: a timer may (rarely) fire twice
 * when a claim's lease lapses, and always fires again after a lost acknowledgement. */
static const expiry_kind_t s_kinds[] = {
    {"user.expire",
     "identity.Deactivate",
     &extranet__identity__user_id_request__descriptor,
     {"id", NULL}},
    {"invitation.expire",
     "membership.ExpireInvitation",
     &extranet__membership__invitation_id_request__descriptor,
     {"gid", "id", NULL}},
    {NULL, NULL, NULL, {NULL}},
};

const expiry_kind_t *expiry_kind_find(const char *kind) {
    if (!kind)
        return NULL;
    for (const expiry_kind_t *k = s_kinds; k->kind; k++)
        if (strcmp(k->kind, kind) == 0)
            return k;
    return NULL;
}

static int s_field_count(const expiry_kind_t *k) {
    int n = 0;
    while (n < EXPIRY_SUBJECT_MAX_PARTS && k->fields[n])
        n++;
    return n;
}

int expiry_kind_table_check(char *errbuf, size_t errlen) {
    for (const expiry_kind_t *k = s_kinds; k->kind; k++) {
        int n = s_field_count(k);
        bool ok = k->method && strchr(k->method, '.') && k->request && n >= 1 &&
                  strlen(k->kind) <= EXPIRY_KIND_MAX && !strpbrk(k->kind, "\"\\{},");
        for (int i = 0; ok && i < n; i++) {
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field_by_name(k->request, k->fields[i]);
            ok = f && f->type == PROTOBUF_C_TYPE_STRING && f->label == PROTOBUF_C_LABEL_NONE;
        }
        if (!ok) {
            if (errbuf && errlen)
                snprintf(errbuf, errlen, "kind %s: bad method, message or fields", k->kind);
            return -EINVAL;
        }
    }
    return 0;
}

int expiry_kinds_array(char *out, size_t outlen) {
    size_t o = 0;
    if (outlen < 3)
        return -ENOSPC;
    out[o++] = '{';
    for (const expiry_kind_t *k = s_kinds; k->kind; k++) {
        int w = snprintf(out + o, outlen - o, "%s\"%s\"", k == s_kinds ? "" : ",", k->kind);
        if (w < 0 || (size_t)w >= outlen - o)
            return -ENOSPC;
        o += (size_t)w;
    }
    if (o + 2 > outlen)
        return -ENOSPC;
    out[o++] = '}';
    out[o] = '\0';
    return 0;
}

bool expiry_subject_valid(const expiry_kind_t *k, const char *subject) {
    if (!k || !subject)
        return false;
    int n = s_field_count(k);
    size_t len = strlen(subject);
    if (len != (size_t)n * 37 - 1)
        return false;
    char part[37];
    for (int i = 0; i < n; i++) {
        const char *p = subject + (size_t)i * 37;
        if (i + 1 < n && p[36] != ':')
            return false;
        memcpy(part, p, 36);
        part[36] = '\0';
        if (!util_uuid_valid(part))
            return false;
    }
    return true;
}

int expiry_subject_normalize(const expiry_kind_t *k, const char *subject, char *out,
                             size_t outlen) {
    if (!expiry_subject_valid(k, subject))
        return -EINVAL;
    size_t len = strlen(subject);
    if (len + 1 > outlen)
        return -EINVAL;
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)subject[i]);
    return 0;
}

int expiry_kind_build_request(const expiry_kind_t *k, const char *subject,
                              ProtobufCMessage **ret_msg) {
    *ret_msg = NULL;
    if (!expiry_subject_valid(k, subject))
        return -EINVAL;
    /* One block: the message, then a copy of the subject whose ':' become NULs, so the
     * caller has a single free(). */
    size_t msize = (k->request->sizeof_message + 15) & ~(size_t)15;
    size_t slen = strlen(subject);
    char *block = calloc(1, msize + slen + 1);
    if (!block)
        return -ENOMEM;
    ProtobufCMessage *msg = (ProtobufCMessage *)block;
    protobuf_c_message_init(k->request, msg);
    char *copy = block + msize;
    memcpy(copy, subject, slen + 1);
    int n = s_field_count(k);
    for (int i = 0; i < n; i++) {
        char *part = copy + (size_t)i * 37;
        part[36] = '\0';
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(k->request, k->fields[i]);
        if (!f || f->type != PROTOBUF_C_TYPE_STRING || f->label != PROTOBUF_C_LABEL_NONE) {
            free(block);
            return -EINVAL;
        }
        *(char **)(void *)(block + f->offset) = part;
    }
    *ret_msg = msg;
    return 0;
}

/* Reads exactly n digits at *p into *ret and advances. */
static bool s_digits(const char **p, int n, int *ret) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *ret = v;
    return true;
}

static int s_days_in_month(int year, int month) {
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

bool expiry_time_valid(const char *s) {
    if (!s || strlen(s) > EXPIRY_TIME_MAX)
        return false;
    const char *p = s;
    int y, mo, d, h, mi, sec;
    if (!s_digits(&p, 4, &y) || *p++ != '-' || !s_digits(&p, 2, &mo) || *p++ != '-' ||
        !s_digits(&p, 2, &d))
        return false;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > s_days_in_month(y, mo))
        return false;
    if (*p != 'T' && *p != 't')
        return false;
    p++;
    if (!s_digits(&p, 2, &h) || *p++ != ':' || !s_digits(&p, 2, &mi) || *p++ != ':' ||
        !s_digits(&p, 2, &sec))
        return false;
    if (h > 23 || mi > 59 || sec > 60)
        return false;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            p++;
            nd++;
        }
        if (nd < 1 || nd > 9)
            return false;
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if (*p != '+' && *p != '-')
        return false;
    p++;
    int oh, om;
    if (!s_digits(&p, 2, &oh) || *p++ != ':' || !s_digits(&p, 2, &om))
        return false;
    return oh <= 23 && om <= 59 && *p == '\0';
}

bool expiry_may_schedule(Extranet__ActorKind kind) {
    switch (kind) {
    case EXTRANET__ACTOR_KIND__SYSTEM:
    case EXTRANET__ACTOR_KIND__ADMIN:
    case EXTRANET__ACTOR_KIND__EMPLOYEE:
        return true;
    default:
        return false;
    }
}

bool expiry_may_list(Extranet__ActorKind kind) {
    return kind == EXTRANET__ACTOR_KIND__SYSTEM || kind == EXTRANET__ACTOR_KIND__ADMIN;
}

bool expiry_state_filter_valid(const char *state) {
    return state && (state[0] == '\0' || strcmp(state, "pending") == 0 ||
                     strcmp(state, "done") == 0 || strcmp(state, "cancelled") == 0);
}

expiry_outcome_t expiry_outcome_of(int rc) {
    if (rc == 0)
        return EXPIRY_OUTCOME_DONE;
    /* NOT_FOUND: the owner says the subject no longer exists, so there is nothing left to
     * expire; retrying would never succeed. Every other answer may change with time. */
    if (ERR_IS_STATUS(rc) && ERR_TO_STATUS(rc) == EXTRANET__STATUS__NOT_FOUND)
        return EXPIRY_OUTCOME_DONE;
    return EXPIRY_OUTCOME_RETRY;
}

int64_t expiry_backoff_ms(int attempts, int64_t base_ms, int64_t cap_ms, uint32_t rnd) {
    if (base_ms < 1)
        base_ms = 1;
    if (cap_ms < 1)
        cap_ms = 1;
    int64_t d = base_ms < cap_ms ? base_ms : cap_ms;
    /* Doubling stops at the cap, so no shift can overflow however large attempts grows. */
    for (int i = 1; i < attempts && d < cap_ms; i++)
        d = d > cap_ms / 2 ? cap_ms : d * 2;
    int64_t half = d / 2;
    return d - half + (int64_t)(rnd % (uint64_t)(half + 1));
}
