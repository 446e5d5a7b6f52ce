/* The one mapping of the status catalogue (proto/envelope.proto) to names and HTTP codes. */
#ifndef EXTRANET_STATUS_H
#define EXTRANET_STATUS_H
#include "envelope.pb-c.h"

/* "ok", "invalid", "not_found", ... (the JSON error code); "internal" for unknown values. */
const char *status_name(Extranet__Status st);
/* 200, 400, 404, ...; 500 for unknown values. */
int status_http(Extranet__Status st);
#endif
