/* Shared conventions of the runtime: error codes and attributes.
 * A fallible function returns 0 or a negative code: -errno, or -(1000 + status) for a
 * status of the catalogue in proto/envelope.proto (ERR_STATUS / ERR_TO_STATUS). */
#ifndef EXTRANET_COMMON_H
#define EXTRANET_COMMON_H

#define WUR __attribute__((warn_unused_result))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

#define ERR_STATUS(st) (-(1000 + (int)(st)))
#define ERR_IS_STATUS(rc) ((rc) <= -1000)
#define ERR_TO_STATUS(rc) ((Extranet__Status)(-(rc)-1000))

#endif
