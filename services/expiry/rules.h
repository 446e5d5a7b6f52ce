/* expiry's pure decisions, no I/O: the table of timer kinds (which owner method a kind calls and
 * how its subject becomes that method's request), who may call expiry, RFC 3339 validation,
 * how an owner's answer ends an attempt, and the retry backoff. Unit-tested in
 * tests/unit/test_expiry_rules.c. */
#ifndef EXPIRY_RULES_H
#define EXPIRY_RULES_H
#include "envelope.pb-c.h"
#include "extranet/common.h"
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EXPIRY_KIND_MAX          64 /* longest kind name accepted */
#define EXPIRY_SUBJECT_MAX_PARTS 3  /* uuids in a subject, ':'-separated */
#define EXPIRY_SUBJECT_MAX       (EXPIRY_SUBJECT_MAX_PARTS * 37 - 1)
#define EXPIRY_TIME_MAX          64 /* longest RFC 3339 text accepted */

/* One row of the kinds table. Adding a kind (membership.RemoveMember, files.RevokeLink,
 * invitation expiry) is one row: the owner's method, its request message and the names of the
 * string fields the subject's parts go into, in order. Each part of a subject is a uuid. */
typedef struct {
    const char *kind;                                 /* "user.expire" */
    const char *method;                               /* "identity.Deactivate" */
    const ProtobufCMessageDescriptor *request;        /* extranet.identity.UserIdRequest */
    const char *fields[EXPIRY_SUBJECT_MAX_PARTS + 1]; /* {"id", NULL} */
} expiry_kind_t;

/* The row for kind, or NULL when it is not a known kind. Borrowed from a static table. */
const expiry_kind_t *expiry_kind_find(const char *kind);

/* Checks the whole table once at start: every field named exists in its request message and is
 * a singular string. Returns 0, or -EINVAL with the offending kind in errbuf. */
int expiry_kind_table_check(char *errbuf, size_t errlen) WUR;

/* Writes every known kind as a PostgreSQL text array literal ({"user.expire",...}) into out.
 * Kind names contain no '"' or '\\' (checked by expiry_kind_table_check). Returns 0 or
 * -ENOSPC. */
int expiry_kinds_array(char *out, size_t outlen) WUR;

/* True when subject has exactly as many ':'-separated uuids as the kind has fields. */
bool expiry_subject_valid(const expiry_kind_t *k, const char *subject);

/* Copies subject into out (outlen >= EXPIRY_SUBJECT_MAX + 1) in lower case, so one subject has
 * one spelling in the (kind, subject) unique key. Returns 0 or -EINVAL (invalid subject). */
int expiry_subject_normalize(const expiry_kind_t *k, const char *subject, char *out,
                             size_t outlen) WUR;

/* Builds the owner's request for a valid subject: the kind's message with its fields set to the
 * subject's parts. *ret_msg is new: one malloc'd block (message and strings) the caller frees
 * with free(), not with protobuf_c_message_free_unpacked. Returns 0, -EINVAL or -ENOMEM. */
int expiry_kind_build_request(const expiry_kind_t *k, const char *subject,
                              ProtobufCMessage **ret_msg) WUR;

/* True when s is an RFC 3339 date-time (§5.6): YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM),
 * 'T'/'Z' in either case, real calendar dates (leap years), year 0001-9999, seconds 00-60. */
bool expiry_time_valid(const char *s);

/* Who may schedule and cancel timers: system, admin and employee actors (a service acting on
 * its own or for a person); never anonymous or extranet actors. */
bool expiry_may_schedule(Extranet__ActorKind kind);
/* Who may list timers: system and admin actors. */
bool expiry_may_list(Extranet__ActorKind kind);

/* True for "", "pending", "done" and "cancelled" (a List filter). */
bool expiry_state_filter_valid(const char *state);

/* What an attempt's answer means for the timer. */
typedef enum {
    EXPIRY_OUTCOME_DONE = 0, /* the owner acted (OK) or the subject is gone (NOT_FOUND) */
    EXPIRY_OUTCOME_RETRY,    /* anything else: try again after a backoff */
} expiry_outcome_t;

/* rc is rpc_call's return: 0, -(1000 + status) or -errno (transport). */
expiry_outcome_t expiry_outcome_of(int rc);

/* Delay before the next attempt once `attempts` (>= 1) calls have failed: base * 2^(attempts-1)
 * capped at cap_ms, with "equal jitter" (half fixed, half from rnd) so copies retrying against
 * one owner spread out. Always within [min(base, cap)/2, cap]; base, cap >= 1. */
int64_t expiry_backoff_ms(int attempts, int64_t base_ms, int64_t cap_ms, uint32_t rnd);
#endif
