/* CORS for browser frontends on other origins: an exact allow-list from EXTRANET_CORS_ORIGINS
 * (comma list; empty = no origin allowed). A disallowed origin gets no CORS header at all,
 * so the browser refuses the response; the request itself is still answered normally. */
#ifndef GW_CORS_H
#define GW_CORS_H
#include "extranet/common.h"
#include <stdbool.h>

struct MHD_Response;

/* origins is copied. Returns 0, -EINVAL (bad list) or -ENOMEM. */
int cors_init(const char *origins) WUR;
void cors_fini(void);

/* origin (the request's Origin header, may be NULL) when it is allowed, else NULL. */
const char *cors_allowed(const char *origin);

/* Adds Access-Control-Allow-Origin / Expose-Headers and Vary: Origin for an allowed origin.
 * Returns 0 or -ENOMEM. */
int cors_add_headers(struct MHD_Response *resp, const char *origin) WUR;
/* Adds the preflight answer: Allow-Methods (allow_methods), Allow-Headers, Max-Age. */
int cors_add_preflight(struct MHD_Response *resp, const char *allow_methods) WUR;
#endif
