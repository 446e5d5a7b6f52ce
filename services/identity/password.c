/* argon2id password hashes (see password.h). The cost is fixed once at start; a hash made
 * with other parameters is upgraded on the next successful login. */
#include "password.h"
#include <errno.h>
#include <string.h>

static unsigned long long s_opslimit;
static size_t s_memlimit;
static char s_dummy[PASSWORD_HASH_LEN];

int password_global_init(bool interactive) {
    s_opslimit = interactive ? crypto_pwhash_OPSLIMIT_INTERACTIVE : crypto_pwhash_OPSLIMIT_MODERATE;
    s_memlimit = interactive ? crypto_pwhash_MEMLIMIT_INTERACTIVE : crypto_pwhash_MEMLIMIT_MODERATE;
    /* The dummy password is random and forgotten: nothing can match the dummy hash. */
    char pw[33];
    unsigned char rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(pw, sizeof pw, rnd, sizeof rnd);
    int rc = password_hash(pw, s_dummy);
    sodium_memzero(pw, sizeof pw);
    return rc;
}

int password_hash(const char *pw, char out[PASSWORD_HASH_LEN]) {
    if (crypto_pwhash_str(out, pw, strlen(pw), s_opslimit, s_memlimit) != 0)
        return -ENOMEM;
    return 0;
}

bool password_verify(const char *hash, const char *pw) {
    if (!hash || !pw)
        return false;
    return crypto_pwhash_str_verify(hash, pw, strlen(pw)) == 0;
}

void password_verify_dummy(const char *pw) {
    (void)password_verify(s_dummy, pw ? pw : "");
}

bool password_needs_rehash(const char *hash) {
    return crypto_pwhash_str_needs_rehash(hash, s_opslimit, s_memlimit) != 0;
}
