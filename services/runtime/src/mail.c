/* SMTP submission through libcurl (see mail.h): builds an RFC 5322 message with Date,
 * Message-ID, From, To, Subject (RFC 2047 encoded when not ASCII) and MIME headers for
 * UTF-8 text, and uploads it with CURLOPT_MAIL_FROM / CURLOPT_MAIL_RCPT. */
#include "extranet/mail.h"
#include <curl/curl.h>
#include <errno.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAIL_MAX_BODY ((size_t)1024 * 1024)

int mail_global_init(void) {
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

int mail_address_valid(const char *addr) {
    if (!addr)
        return 0;
    size_t n = strlen(addr);
    const char *at = strchr(addr, '@');
    if (n < 3 || n > 254 || !at || at == addr || !at[1] || strchr(at + 1, '@'))
        return 0;
    for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("<>()[]\\,;:\"", *p))
            return 0;
    return 1;
}

/* A growing byte buffer for the message text. */
typedef struct {
    char *data;
    size_t len, cap, pos; /* pos: how much the read callback has handed to curl */
    bool oom;
} s_buf_t;

static void s_put(s_buf_t *b, const char *s, size_t n) {
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void s_puts(s_buf_t *b, const char *s) {
    s_put(b, s, strlen(s));
}

static bool s_ascii(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p >= 0x80)
            return false;
    return true;
}

/* RFC 5322 §3.3 date in UTC, independent of the process locale. */
static void s_date(char *out, size_t len) {
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL) {
        /* Only for a clock out of range; the Date header still has to be well-formed. */
        now = 0;
        if (gmtime_r(&now, &tm) == NULL)
            memset(&tm, 0, sizeof tm);
    }
    snprintf(out, len, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static size_t s_read(char *ptr, size_t size, size_t nmemb, void *userdata) {
    s_buf_t *b = userdata;
    size_t room = size * nmemb, left = b->len - b->pos;
    size_t n = left < room ? left : room;
    memcpy(ptr, b->data + b->pos, n);
    b->pos += n;
    return n;
}

static int s_build(s_buf_t *b, const char *from, const char *to, const char *subject,
                   const char *body) {
    char date[64], msgid[128], rnd_hex[33];
    unsigned char rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(rnd_hex, sizeof rnd_hex, rnd, sizeof rnd);
    s_date(date, sizeof date);
    snprintf(msgid, sizeof msgid, "<%s%s>", rnd_hex, strchr(from, '@'));

    s_puts(b, "Date: ");
    s_puts(b, date);
    s_puts(b, "\r\nMessage-ID: ");
    s_puts(b, msgid);
    s_puts(b, "\r\nFrom: <");
    s_puts(b, from);
    s_puts(b, ">\r\nTo: <");
    s_puts(b, to);
    s_puts(b, ">\r\nSubject: ");
    if (s_ascii(subject)) {
        s_puts(b, subject);
    } else {
        /* RFC 2047 encoded-word; one word is fine for our short subjects. */
        size_t n = strlen(subject);
        size_t blen = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
        char *enc = malloc(blen);
        if (!enc)
            return -ENOMEM;
        sodium_bin2base64(enc, blen, (const unsigned char *)subject, n,
                          sodium_base64_VARIANT_ORIGINAL);
        s_puts(b, "=?UTF-8?B?");
        s_puts(b, enc);
        s_puts(b, "?=");
        free(enc);
    }
    s_puts(b, "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n\r\n");
    /* Body: every line ends in CRLF (RFC 5322 §2.3); a lone CR is dropped. */
    for (const char *p = body; *p; p++) {
        if (*p == '\n')
            s_puts(b, "\r\n");
        else if (*p != '\r')
            s_put(b, p, 1);
    }
    if (b->len < 2 || memcmp(b->data + b->len - 2, "\r\n", 2) != 0)
        s_puts(b, "\r\n");
    return b->oom ? -ENOMEM : 0;
}

int mail_send(const mail_cfg_t *cfg, const char *to, const char *subject, const char *body,
              char *errbuf, size_t errlen) {
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!cfg || !cfg->smtp_url || !cfg->smtp_url[0])
        return -ENOTCONN;
    const char *from = cfg->from && cfg->from[0] ? cfg->from : "extranet@localhost";
    if (!mail_address_valid(to) || !mail_address_valid(from) || !subject || !body)
        return -EINVAL;
    if (strchr(subject, '\r') || strchr(subject, '\n') || strlen(subject) > 998 ||
        strlen(body) > MAIL_MAX_BODY)
        return -EINVAL;

    s_buf_t b = {0};
    int rc = s_build(&b, from, to, subject, body);
    if (rc != 0) {
        free(b.data);
        return rc;
    }
    CURL *curl = curl_easy_init();
    struct curl_slist *rcpt = NULL;
    char rcpt_addr[260], from_addr[260], cerr[CURL_ERROR_SIZE] = "";
    snprintf(rcpt_addr, sizeof rcpt_addr, "<%s>", to);
    snprintf(from_addr, sizeof from_addr, "<%s>", from);
    if (!curl || !(rcpt = curl_slist_append(NULL, rcpt_addr))) {
        rc = -ENOMEM;
        goto cleanup;
    }
    long timeout = cfg->timeout_ms > 0 ? cfg->timeout_ms : 10000;
    /* Each option can fail only on OOM or an unknown option; stop at the first failure. */
    if (curl_easy_setopt(curl, CURLOPT_URL, cfg->smtp_url) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "smtp,smtps") != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_MAIL_FROM, from_addr) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_MAIL_RCPT, rcpt) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_READFUNCTION, s_read) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_READDATA, &b) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)b.len) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout) != CURLE_OK ||
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, cerr) != CURLE_OK) {
        rc = -ENOMEM;
        goto cleanup;
    }
    CURLcode cc = curl_easy_perform(curl);
    if (cc != CURLE_OK) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
        rc = -EIO;
    }
cleanup:
    curl_slist_free_all(rcpt);
    if (curl)
        curl_easy_cleanup(curl);
    free(b.data);
    return rc;
}
