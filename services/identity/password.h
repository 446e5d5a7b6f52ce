/* Password hashing with argon2id (libsodium crypto_pwhash_str): parameters from
 * EXTRANET_PWHASH (moderate | interactive), rehash detection, and a dummy verification so a
 * login for an unknown email costs the same time as one for a known email. */
#ifndef IDENTITY_PASSWORD_H
#define IDENTITY_PASSWORD_H
#include "extranet/common.h"
#include <sodium.h>
#include <stdbool.h>

#define PASSWORD_HASH_LEN crypto_pwhash_STRBYTES

/* Chooses the cost (interactive = OPSLIMIT/MEMLIMIT_INTERACTIVE, else MODERATE) and computes
 * the dummy hash. Once in main before any thread. Returns 0 or -ENOMEM. */
int password_global_init(bool interactive) WUR;

/* Hashes pw into out. Returns 0 or -ENOMEM (argon2 could not get its memory). */
int password_hash(const char *pw, char out[PASSWORD_HASH_LEN]) WUR;
/* True when pw matches hash (a crypto_pwhash_str string). */
bool password_verify(const char *hash, const char *pw);
/* Burns the time of one verification against a hash no password matches. */
void password_verify_dummy(const char *pw);
/* True when hash was made with other parameters than the current ones. */
bool password_needs_rehash(const char *hash);
#endif
