/* The CORS allow-list (exact origins: scheme://host[:port], compared case-insensitively as
 * RFC 6454 serializes origins in lower case) and the headers it adds. */
#include "cors.h"
#include "extranet/util.h"
#include <errno.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <strings.h>

#define S_MAX_ORIGINS 64
#define S_MAX_AGE     "600"

static char *s_origins[S_MAX_ORIGINS];
static int s_count;

int cors_init(const char *origins) {
    s_count = 0;
    if (!origins || !*origins)
        return 0;
    int n = util_split_list(origins, s_origins, S_MAX_ORIGINS);
    if (n < 0)
        return n;
    s_count = n;
    return 0;
}

void cors_fini(void) {
    for (int i = 0; i < s_count; i++)
        free(s_origins[i]);
    s_count = 0;
}

const char *cors_allowed(const char *origin) {
    if (!origin)
        return NULL;
    for (int i = 0; i < s_count; i++)
        if (strcasecmp(s_origins[i], origin) == 0)
            return origin;
    return NULL;
}

int cors_add_headers(struct MHD_Response *resp, const char *origin) {
    if (MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin) != MHD_YES ||
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, Retry-After") != MHD_YES)
        return -ENOMEM;
    return 0;
}

int cors_add_preflight(struct MHD_Response *resp, const char *allow_methods) {
    if (MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow_methods) != MHD_YES ||
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, Idempotency-Key") != MHD_YES ||
        MHD_add_response_header(resp, "Access-Control-Max-Age", S_MAX_AGE) != MHD_YES)
        return -ENOMEM;
    return 0;
}
