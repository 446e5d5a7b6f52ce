/* The one error shape of the HTTP API (DESIGN.md §8):
 *   {"error":{"code":"not_found","message":"...","request_id":"..."}}
 * Codes are the status names of proto/envelope.proto (status.h), plus the HTTP-only
 * "method_not_allowed" (405) and "header_too_large" (431). */
#ifndef GW_ERRORS_H
#define GW_ERRORS_H
#include "envelope.pb-c.h"
#include <stddef.h>

/* Returns a new malloc'd JSON text (caller frees) and its length, or NULL on OOM. */
char *errors_body(const char *code, const char *message, const char *request_id, size_t *ret_len);

/* The HTTP status and error code of a catalogue status (status.h); message defaults. */
int errors_http(Extranet__Status st);
const char *errors_code(Extranet__Status st);
#endif
