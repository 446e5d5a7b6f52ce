/* expiry: the durable timer service (README.md). Reads its own environment once, checks the
 * kinds table, then hands over to the service runtime until SIGTERM. */
#include "expiry.h"

#include "extranet/cfg.h"
#include "extranet/log.h"
#include "rules.h"
#include "store.h"

#include <stdio.h>

static const char s_usage[] =
    "expiry: durable timers; fires each due timer by calling its owner (services/expiry).\n"
    "  EXTRANET_EXPIRY_TICK_MS        how often due timers are looked for (250)\n"
    "  EXTRANET_EXPIRY_CALL_MS        deadline of one call to a timer's owner (5000)\n"
    "  EXTRANET_EXPIRY_LEASE_MS       how long a claimed timer is reserved for one copy;\n"
    "                                 at least CALL_MS + 1000 (30000)\n"
    "  EXTRANET_EXPIRY_BATCH          timers claimed at once (16)\n"
    "  EXTRANET_EXPIRY_BACKOFF_MS     first retry delay after a failed call (1000)\n"
    "  EXTRANET_EXPIRY_BACKOFF_MAX_MS retry delay cap (60000)\n"
    "  plus the runtime's EXTRANET_BROKER, EXTRANET_PG, EXTRANET_THREADS, EXTRANET_LOG, ...\n";

static int s_start(svc_thread_t *t) {
    char err[128];
    if (expiry_kind_table_check(err, sizeof err) < 0) {
        log_error("kinds table: %s", err);
        return -1;
    }
    return 0;
}

static int s_config_read(long *ret_tick_ms) {
    long tick, call, lease, batch, base, cap;
    if (cfg_long("EXTRANET_EXPIRY_TICK_MS", 250, 10, 60000, &tick) < 0 ||
        cfg_long("EXTRANET_EXPIRY_CALL_MS", 5000, 100, 120000, &call) < 0 ||
        cfg_long("EXTRANET_EXPIRY_LEASE_MS", 30000, 1100, 3600000, &lease) < 0 ||
        cfg_long("EXTRANET_EXPIRY_BATCH", 16, 1, 1000, &batch) < 0 ||
        cfg_long("EXTRANET_EXPIRY_BACKOFF_MS", 1000, 1, 3600000, &base) < 0 ||
        cfg_long("EXTRANET_EXPIRY_BACKOFF_MAX_MS", 60000, 1, 86400000, &cap) < 0)
        return -1;
    if (lease < call + 1000) {
        log_error("EXTRANET_EXPIRY_LEASE_MS (%ld) must be at least EXTRANET_EXPIRY_CALL_MS + "
                  "1000 (%ld)",
                  lease, call + 1000);
        return -1;
    }
    if (expiry_kinds_array(expiry_config.kinds, sizeof expiry_config.kinds) < 0) {
        log_error("kinds table does not fit its array literal");
        return -1;
    }
    expiry_config.call_ms = call;
    expiry_config.lease_ms = lease;
    expiry_config.batch = (int)batch;
    expiry_config.backoff_ms = base;
    expiry_config.backoff_max_ms = cap < base ? base : cap;
    *ret_tick_ms = tick;
    return 0;
}

int main(int argc, char **argv) {
    int rc = cfg_handle_args(argc, argv, "expiry", s_usage);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_init("expiry");
    long tick_ms = 250;
    if (s_config_read(&tick_ms) < 0)
        return 2;
    svc_def_t def = {
        .name = "expiry",
        .usage = s_usage,
        .methods = expiry_methods,
        .schema = "expiry",
        .migrations = service_migrations,
        .statements = expiry_statements,
        .use_redis = false,
        .start = s_start,
        .tick = expiry_fire_tick,
        .tick_ms = (int)tick_ms,
    };
    return svc_main(&def, argc, argv);
}
