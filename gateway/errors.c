/* Rendering of the one JSON error body. Kept apart so every path (handler, loop results,
 * early rejections) produces byte-for-byte the same shape (R1: a missing and a hidden
 * resource must look the same). */
#include "errors.h"
#include "extranet/status.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *errors_body(const char *code, const char *message, const char *request_id, size_t *ret_len) {
    json_t *o = json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "message",
                          message ? message : "", "request_id", request_id);
    if (!o)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (s && ret_len)
        *ret_len = strlen(s);
    return s;
}

int errors_http(Extranet__Status st) {
    return status_http(st);
}
const char *errors_code(Extranet__Status st) {
    return status_name(st);
}
