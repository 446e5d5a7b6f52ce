/* identity's dispatch table, its start/tick hooks and the configuration main.c reads once
 * from the environment before svc_main starts any thread (read-only afterwards). */
#ifndef IDENTITY_HANDLERS_H
#define IDENTITY_HANDLERS_H
#include "extranet/mail.h"
#include "extranet/svc.h"
#include "totp.h"
#include <stdint.h>

typedef struct {
    long idle_s;                      /* EXTRANET_SESSION_IDLE_S */
    long max_s;                       /* EXTRANET_SESSION_MAX_S */
    uint8_t data_key[TOTP_KEY_LEN];   /* EXTRANET_DATA_KEY */
    mail_cfg_t mail;                  /* EXTRANET_SMTP_URL, EXTRANET_MAIL_FROM */
    const char *admin_email;          /* EXTRANET_ADMIN_EMAIL, NULL = none */
    const char *admin_password;       /* EXTRANET_ADMIN_PASSWORD; never logged */
} identity_cfg_t;

extern identity_cfg_t identity_cfg;
extern const svc_method_t identity_methods[];

int identity_start(svc_thread_t *t);   /* first admin (idempotent) */
void identity_tick(svc_thread_t *t);   /* pending invalidations, mail outbox, clean-up */
#endif
