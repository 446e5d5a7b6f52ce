/* Small pure helpers every process needs: clocks, uuids, hex, endpoint lists. */
#ifndef EXTRANET_UTIL_H
#define EXTRANET_UTIL_H
#include "extranet/common.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int64_t util_now_ms(void);           /* wall clock, Unix epoch ms (deadlines) */
int64_t util_mono_ms(void);          /* monotonic ms (heartbeats, timeouts) */
/* Writes a random (v4) uuid, 36 chars + NUL, into out[37]. Uses libsodium randombytes. */
void util_uuid_v4(char out[37]);
/* True when s is a canonical lower- or upper-case 8-4-4-4-12 hex uuid. */
bool util_uuid_valid(const char *s);
/* The canonical (lower-case) text of uuid s into out[37]: the form every cache key and audit
 * record uses. False (out = "") when s is not a valid uuid. */
bool util_uuid_lower(const char *s, char out[37]);
/* Hex-encodes len bytes into out (2*len+1 bytes). */
void util_hex(const uint8_t *in, size_t len, char *out);
/* Splits a comma-separated list ("tcp://a:1,tcp://b:2") into at most max items, each a new
 * string in ret_items (caller frees each with free()). Returns the count, or -EINVAL/-ENOMEM. */
int util_split_list(const char *list, char **ret_items, int max) WUR;
#endif
