/* audit: the lossless, hash-chained activity log (README.md). Reads nothing of its own from the
 * environment; hands over to the service runtime until SIGTERM. */
#include "audit_svc.h"

#include "extranet/cfg.h"
#include "extranet/log.h"
#include "store.h"

#include <sodium.h>

static const char s_usage[] =
    "audit: the append-only, hash-chained audit log (services/audit).\n"
    "  the runtime's EXTRANET_BROKER, EXTRANET_PG, EXTRANET_THREADS, EXTRANET_LOG, ...\n";

int main(int argc, char **argv) {
    int rc = cfg_handle_args(argc, argv, "audit", s_usage);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_init("audit");
    if (sodium_init() < 0) {
        log_error("could not initialise libsodium");
        return 1;
    }
    svc_def_t def = {
        .name = "audit",
        .usage = s_usage,
        .methods = audit_methods,
        .schema = "audit",
        .migrations = service_migrations,
        .statements = audit_statements,
        .use_redis = false,
    };
    return svc_main(&def, argc, argv);
}
