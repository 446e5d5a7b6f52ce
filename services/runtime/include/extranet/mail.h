/* Outgoing mail: one plain-text UTF-8 message per call, sent over SMTP with libcurl to
 * EXTRANET_SMTP_URL (smtp://host:port). Used by identity (security notices, SendMail) and
 * membership (invitations). Header values with CR or LF are refused, so no caller can inject
 * headers; failures are reported without message bodies or secrets. */
#ifndef EXTRANET_MAIL_H
#define EXTRANET_MAIL_H
#include "extranet/common.h"
#include <stddef.h>

typedef struct {
    const char *smtp_url; /* "smtp://127.0.0.1:2525"; NULL or "" = mail disabled */
    const char *from;     /* envelope and From: address, e.g. "extranet@localhost" */
    long timeout_ms;      /* whole transfer; 0 = 10000 */
} mail_cfg_t;

/* curl_global_init; once in main before any thread. Returns 0 or -EIO. */
int mail_global_init(void) WUR;

/* True when addr is a plain address we can put into an SMTP envelope and a header:
 * printable ASCII, one '@', no spaces, no <>()[],;:"\ and no CR/LF, at most 254 bytes. */
int mail_address_valid(const char *addr);

/* Sends a message to one recipient. cfg, to, subject and body are borrowed. Bare LF in the
 * body becomes CRLF; libcurl dot-stuffs. Returns 0; -EINVAL for an invalid address or a
 * subject with CR/LF or over 998 bytes; -ENOTCONN when mail is disabled (no URL); -EIO when
 * the SMTP transfer failed (errbuf, if given, says why: curl's error text, no content);
 * -ENOMEM. */
int mail_send(const mail_cfg_t *cfg, const char *to, const char *subject, const char *body,
              char *errbuf, size_t errlen) WUR;
#endif
