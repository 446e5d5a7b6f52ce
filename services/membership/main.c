/* membership: env -> config -> svc_main. Owns groups, members, invitations and the mem:{user}
 * Redis cache (README.md); the handlers are in groups.c, members.c, invitations.c, people.c. */
#include "cache.h"
#include "extranet/cfg.h"
#include "extranet/log.h"
#include "extranet/svc.h"
#include "handlers.h"
#include "store.h"
#include <sodium.h>
#include <string.h>

static const char s_usage[] =
    "membership: groups, members and roles, invitations, contacts.\n"
    "  EXTRANET_PUBLIC_URL         base of invitation links: <url>/invitations/<token>\n"
    "                              (http://127.0.0.1:8080)\n"
    "  EXTRANET_INVITATION_TTL_S   lifetime of an invitation (604800 = 7 days)\n"
    "  EXTRANET_MEMBERSHIP_FILL_DELAY_MS  tests only: delay between the PostgreSQL read and\n"
    "                              the Redis write of a cache fill (0)\n"
    "  plus EXTRANET_BROKER, EXTRANET_EVENTS_PUB, EXTRANET_PG, EXTRANET_REDIS,\n"
    "  EXTRANET_THREADS, EXTRANET_LOG\n";

static int s_config(void) {
    if (cfg_long("EXTRANET_INVITATION_TTL_S", 7L * 86400, 60, 90L * 86400,
                 &membership_cfg.invitation_ttl_s) != 0 ||
        cfg_long("EXTRANET_MEMBERSHIP_FILL_DELAY_MS", 0, 0, 1500, &mcache_fill_delay_ms) != 0)
        return -1;
    const char *url = cfg_str("EXTRANET_PUBLIC_URL", "http://127.0.0.1:8080");
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    if (n == 0 || n > 512 ||
        (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        log_error("EXTRANET_PUBLIC_URL must be an http(s) URL of at most 512 bytes");
        return -1;
    }
    static char public_url[513];
    memcpy(public_url, url, n);
    public_url[n] = '\0';
    membership_cfg.public_url = public_url;
    if (sodium_init() < 0) {
        log_error("could not initialise libsodium");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int rc = cfg_handle_args(argc, argv, "membership", s_usage);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_init("membership");
    if (s_config() != 0)
        return 1;
    const svc_def_t def = {
        .name = "membership",
        .usage = s_usage,
        .methods = membership_methods,
        .schema = "membership",
        .migrations = service_migrations,
        .statements = membership_statements,
        .use_redis = true,
        .tick = membership_tick,
        .tick_ms = 1000,
    };
    return svc_main(&def, argc, argv);
}
