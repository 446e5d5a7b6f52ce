/* Trusted-proxy handling for the client ip (rate limits, audit, sessions). Addresses are kept
 * as 16 bytes (IPv4 as ::ffff:a.b.c.d, so v4-mapped peers of a dual-stack socket match the
 * same entries) plus a prefix length. */
#include "clientip.h"
#include "extranet/util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_PROXIES 64

typedef struct {
    uint8_t addr[16];
    int prefix; /* bits of addr that must match, 0..128 */
} s_net_t;

static s_net_t s_nets[S_MAX_PROXIES];
static int s_nnets;

/* Parses a textual v4/v6 address into 16 bytes (v4 mapped). */
static bool s_parse(const char *text, uint8_t out[16], bool *ret_v4) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        *ret_v4 = true;
        return true;
    }
    if (inet_pton(AF_INET6, text, &a6) == 1) {
        memcpy(out, &a6, 16);
        *ret_v4 = false;
        return true;
    }
    return false;
}

int clientip_init(const char *list) {
    s_nnets = 0;
    if (!list || !*list)
        return 0;
    char *items[S_MAX_PROXIES];
    int n = util_split_list(list, items, S_MAX_PROXIES);
    if (n < 0)
        return n;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char *slash = strchr(items[i], '/');
        long prefix = -1;
        if (slash) {
            *slash = '\0';
            char *end;
            errno = 0;
            prefix = strtol(slash + 1, &end, 10);
            if (errno || end == slash + 1 || *end)
                rc = -EINVAL;
        }
        bool v4;
        s_net_t net;
        if (rc == 0 && !s_parse(items[i], net.addr, &v4))
            rc = -EINVAL;
        if (rc == 0) {
            long max = v4 ? 32 : 128;
            if (prefix < 0)
                prefix = max;
            if (prefix > max)
                rc = -EINVAL;
            net.prefix = (int)(v4 ? prefix + 96 : prefix);
            if (rc == 0)
                s_nets[s_nnets++] = net;
        }
        free(items[i]);
    }
    return rc;
}

void clientip_fini(void) {
    s_nnets = 0;
}

static bool s_trusted(const uint8_t a[16]) {
    for (int i = 0; i < s_nnets; i++) {
        int bits = s_nets[i].prefix, byte = 0;
        bool match = true;
        for (; bits >= 8; bits -= 8, byte++)
            if (a[byte] != s_nets[i].addr[byte]) {
                match = false;
                break;
            }
        if (match && bits > 0) {
            uint8_t mask = (uint8_t)(0xff << (8 - bits));
            match = (a[byte] & mask) == (s_nets[i].addr[byte] & mask);
        }
        if (match)
            return true;
    }
    return false;
}

static void s_format(const uint8_t a[16], char *out, size_t len) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0)
        inet_ntop(AF_INET, a + 12, out, (socklen_t)len);
    else
        inet_ntop(AF_INET6, a, out, (socklen_t)len);
}

void clientip_resolve(const struct sockaddr *peer, const char *xff, char *out, size_t len) {
    uint8_t a[16];
    if (!peer) {
        snprintf(out, len, "unknown");
        return;
    }
    if (peer->sa_family == AF_INET) {
        memset(a, 0, 10);
        a[10] = a[11] = 0xff;
        memcpy(a + 12, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer->sa_family == AF_INET6) {
        memcpy(a, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
    } else {
        snprintf(out, len, "unknown");
        return;
    }
    if (xff && s_nnets > 0 && s_trusted(a)) {
        /* Walk X-Forwarded-For from the right: each hop was appended by the proxy after it. */
        const char *end = xff + strlen(xff);
        while (end > xff) {
            const char *start = end;
            while (start > xff && start[-1] != ',')
                start--;
            const char *s = start, *e = end;
            while (s < e && (*s == ' ' || *s == '\t'))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            char tok[64];
            uint8_t hop[16];
            bool v4;
            size_t n = (size_t)(e - s);
            if (n == 0 || n >= sizeof tok)
                break;
            memcpy(tok, s, n);
            tok[n] = '\0';
            if (!s_parse(tok, hop, &v4))
                break; /* garbage: keep the last hop we could trust */
            memcpy(a, hop, 16);
            if (!s_trusted(hop))
                break;
            end = start > xff ? start - 1 : xff;
        }
    }
    s_format(a, out, len);
}
