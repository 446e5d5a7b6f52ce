/* Configuration from the environment only (docs/operations.md lists every variable).
 * Read once in main.c; numbers parsed with strtol and range-checked. */
#ifndef EXTRANET_CFG_H
#define EXTRANET_CFG_H
#include "extranet/common.h"

/* Returns the variable's value, or dflt when unset or empty. Borrowed; do not free. */
const char *cfg_str(const char *name, const char *dflt);

/* Parses an integer variable into *ret (dflt when unset). Returns 0, or -EINVAL (and logs the
 * variable's name) when it is not an integer within [min, max]. */
int cfg_long(const char *name, long dflt, long min, long max, long *ret) WUR;

/* Handles --help / --version for every binary: prints usage (the text given, listing its env
 * variables) or the version and returns 1 when the caller should exit 0; -1 for an unknown
 * argument (usage printed to stderr, caller exits 2); 0 to go on. */
int cfg_handle_args(int argc, char **argv, const char *name, const char *usage);
#endif
