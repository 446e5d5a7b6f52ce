/* The audit service's dispatch table (handlers.c), read by main.c. */
#ifndef AUDIT_SVC_H
#define AUDIT_SVC_H
#include "extranet/svc.h"

extern const svc_method_t audit_methods[];
#endif
