/* The one mapping of the status catalogue (proto/envelope.proto) to JSON error codes and HTTP
 * statuses (DESIGN.md §3). The gateway and every error reply go through here. */
#include "extranet/status.h"

#include <stddef.h>

static const struct {
    const char *name;
    int http;
} s_status[] = {
    [EXTRANET__STATUS__OK] = {"ok", 200},
    [EXTRANET__STATUS__INVALID] = {"invalid", 400},
    [EXTRANET__STATUS__UNAUTHENTICATED] = {"unauthenticated", 401},
    [EXTRANET__STATUS__FORBIDDEN] = {"forbidden", 403},
    [EXTRANET__STATUS__NOT_FOUND] = {"not_found", 404},
    [EXTRANET__STATUS__CONFLICT] = {"conflict", 409},
    [EXTRANET__STATUS__TOO_LARGE] = {"too_large", 413},
    [EXTRANET__STATUS__UNSUPPORTED_MEDIA] = {"unsupported_media", 415},
    [EXTRANET__STATUS__RATE_LIMITED] = {"rate_limited", 429},
    [EXTRANET__STATUS__MFA_ENROLLMENT_REQUIRED] = {"mfa_enrollment_required", 403},
    [EXTRANET__STATUS__INTERNAL] = {"internal", 500},
    [EXTRANET__STATUS__UNAVAILABLE] = {"unavailable", 503},
    [EXTRANET__STATUS__DEADLINE_EXCEEDED] = {"deadline_exceeded", 504},
};

#define S_COUNT (sizeof s_status / sizeof s_status[0])

const char *status_name(Extranet__Status st) {
    if ((unsigned)st >= S_COUNT || !s_status[st].name)
        return "internal";
    return s_status[st].name;
}

int status_http(Extranet__Status st) {
    if ((unsigned)st >= S_COUNT || !s_status[st].name)
        return 500;
    return s_status[st].http;
}
