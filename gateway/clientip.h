/* The client address of a request: the TCP peer, or — only when the peer is one of
 * EXTRANET_TRUSTED_PROXIES (comma list of addresses or CIDR ranges, v4 or v6) — the rightmost
 * X-Forwarded-For entry that is not itself a trusted proxy. A client can therefore never
 * choose its own address by sending X-Forwarded-For directly. */
#ifndef GW_CLIENTIP_H
#define GW_CLIENTIP_H
#include "extranet/common.h"
#include <stddef.h>
#include <sys/socket.h>

/* list may be NULL/empty. Returns 0, or -EINVAL (an entry that is not an address/CIDR). */
int clientip_init(const char *list) WUR;
void clientip_fini(void);

/* Writes the client address as text into out (at least 64 bytes). peer may be NULL
 * (then "unknown"); xff is the X-Forwarded-For header or NULL. */
void clientip_resolve(const struct sockaddr *peer, const char *xff, char *out, size_t len);
#endif
