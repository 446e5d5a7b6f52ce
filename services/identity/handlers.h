/* identity's dispatch table, its start/tick hooks and the configuration main.c reads once
 * from the environment before svc_main starts any thread (read-only afterwards). */
#ifndef IDENTITY_HANDLERS_H
#define IDENTITY_HANDLERS_H
#include "extranet/mail.h"
#include "extranet/svc.h"
#include "totp.h"
#include <stdint.h>

typedef struct {
    long idle_s;                    /* EXTRANET_SESSION_IDLE_S */
    long max_s;                     /* EXTRANET_SESSION_MAX_S */
    uint8_t data_key[TOTP_KEY_LEN]; /* EXTRANET_DATA_KEY */
    mail_cfg_t mail;                /* EXTRANET_SMTP_URL, EXTRANET_MAIL_FROM */
    const char *admin_email;        /* EXTRANET_ADMIN_EMAIL, NULL = none */
    const char *admin_password;     /* EXTRANET_ADMIN_PASSWORD; never logged */
    long fill_delay_ms;             /* EXTRANET_IDENTITY_FILL_DELAY_MS: tests only (0) */
} identity_cfg_t;

extern identity_cfg_t identity_cfg;
extern const svc_method_t identity_methods[];

int identity_start(svc_thread_t *t); /* first admin (idempotent) */

/* The handlers of identity_methods, by file (README.md lists who may call each). */
void auth_login(svc_thread_t *t, svc_call_t *call);
void auth_login_mfa(svc_thread_t *t, svc_call_t *call);
void auth_logout(svc_thread_t *t, svc_call_t *call);
void auth_authenticate(svc_thread_t *t, svc_call_t *call);
void me_get(svc_thread_t *t, svc_call_t *call);
void me_mfa_enroll(svc_thread_t *t, svc_call_t *call);
void me_mfa_confirm(svc_thread_t *t, svc_call_t *call);
void me_list_sessions(svc_thread_t *t, svc_call_t *call);
void me_revoke_session(svc_thread_t *t, svc_call_t *call);
void me_revoke_other_sessions(svc_thread_t *t, svc_call_t *call);
void me_change_password(svc_thread_t *t, svc_call_t *call);
void admin_list_users(svc_thread_t *t, svc_call_t *call);
void admin_create_user(svc_thread_t *t, svc_call_t *call);
void admin_get_user(svc_thread_t *t, svc_call_t *call);
void admin_update_user(svc_thread_t *t, svc_call_t *call);
void admin_deactivate(svc_thread_t *t, svc_call_t *call);
void admin_reactivate(svc_thread_t *t, svc_call_t *call);
void admin_transfer(svc_thread_t *t, svc_call_t *call);
void admin_reset_mfa(svc_thread_t *t, svc_call_t *call);
void admin_get_policy(svc_thread_t *t, svc_call_t *call);
void admin_set_policy(svc_thread_t *t, svc_call_t *call);
void admin_create_extranet_account(svc_thread_t *t, svc_call_t *call);
void admin_lookup_email(svc_thread_t *t, svc_call_t *call);
void admin_get_users(svc_thread_t *t, svc_call_t *call);
void admin_send_mail(svc_thread_t *t, svc_call_t *call);
void identity_tick(svc_thread_t *t); /* pending invalidations, mail + timer outboxes, clean-up */
#endif
