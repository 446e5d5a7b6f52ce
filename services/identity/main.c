/* identity: env -> config -> svc_main. Owns users, sessions, 2FA and the admin policy
 * (README.md); everything else is in handlers.c. */
#include "extranet/cfg.h"
#include "extranet/log.h"
#include "extranet/mail.h"
#include "extranet/svc.h"
#include "handlers.h"
#include "password.h"
#include "store.h"
#include "totp.h"
#include <sodium.h>
#include <string.h>

static const char s_usage[] =
    "identity: users, sessions, TOTP 2FA, policy, mail.\n"
    "  EXTRANET_DATA_KEY         64 hex chars, encrypts TOTP secrets (required)\n"
    "  EXTRANET_SESSION_IDLE_S   idle timeout of a session (1800)\n"
    "  EXTRANET_SESSION_MAX_S    maximum lifetime of a session (43200)\n"
    "  EXTRANET_PWHASH           moderate | interactive (moderate)\n"
    "  EXTRANET_ADMIN_EMAIL      first admin, created while no admin exists\n"
    "  EXTRANET_ADMIN_PASSWORD   its password (never logged)\n"
    "  EXTRANET_SMTP_URL         smtp://host:port for notices and SendMail (unset: no mail)\n"
    "  EXTRANET_MAIL_FROM        sender address (extranet@localhost)\n"
    "  EXTRANET_IDENTITY_FILL_DELAY_MS  tests only: delay between a session cache fill's\n"
    "                            PostgreSQL read and its Redis write (0)\n"
    "  plus EXTRANET_BROKER, EXTRANET_EVENTS_PUB, EXTRANET_PG, EXTRANET_REDIS,\n"
    "  EXTRANET_THREADS, EXTRANET_LOG\n";

static int s_config(void) {
    if (cfg_long("EXTRANET_SESSION_IDLE_S", 1800, 60, 30L * 86400, &identity_cfg.idle_s) != 0 ||
        cfg_long("EXTRANET_SESSION_MAX_S", 43200, 300, 90L * 86400, &identity_cfg.max_s) != 0 ||
        cfg_long("EXTRANET_IDENTITY_FILL_DELAY_MS", 0, 0, 1500, &identity_cfg.fill_delay_ms) != 0)
        return -1;
    if (totp_key_parse(cfg_str("EXTRANET_DATA_KEY", NULL), identity_cfg.data_key) != 0) {
        log_error("EXTRANET_DATA_KEY must be set to 64 hex characters (32 random bytes)");
        return -1;
    }
    const char *pwhash = cfg_str("EXTRANET_PWHASH", "moderate");
    if (strcmp(pwhash, "moderate") != 0 && strcmp(pwhash, "interactive") != 0) {
        log_error("EXTRANET_PWHASH must be moderate or interactive");
        return -1;
    }
    identity_cfg.mail.smtp_url = cfg_str("EXTRANET_SMTP_URL", NULL);
    identity_cfg.mail.from = cfg_str("EXTRANET_MAIL_FROM", "extranet@localhost");
    identity_cfg.mail.timeout_ms = 10000;
    if (!mail_address_valid(identity_cfg.mail.from)) {
        log_error("EXTRANET_MAIL_FROM is not a plain email address");
        return -1;
    }
    identity_cfg.admin_email = cfg_str("EXTRANET_ADMIN_EMAIL", NULL);
    identity_cfg.admin_password = cfg_str("EXTRANET_ADMIN_PASSWORD", NULL);
    if (sodium_init() < 0 || totp_global_init() != 0 || mail_global_init() != 0 ||
        password_global_init(!strcmp(pwhash, "interactive")) != 0) {
        log_error("could not initialise libsodium, liboath, libcurl or argon2");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int rc = cfg_handle_args(argc, argv, "identity", s_usage);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_init("identity");
    if (s_config() != 0)
        return 1;
    const svc_def_t def = {
        .name = "identity",
        .usage = s_usage,
        .methods = identity_methods,
        .schema = "identity",
        .migrations = service_migrations,
        .statements = identity_statements,
        .use_redis = true,
        .start = identity_start,
        .tick = identity_tick,
        .tick_ms = 1000,
    };
    return svc_main(&def, argc, argv);
}
