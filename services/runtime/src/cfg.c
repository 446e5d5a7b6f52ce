/* Configuration from the environment (read once in main.c) and the --help/--version handling
 * every binary shares. Numbers go through strtol with a full-string and range check. */
#include "extranet/cfg.h"
#include "extranet/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cfg_str(const char *name, const char *dflt) {
    const char *v = name ? getenv(name) : NULL;
    return (v && *v) ? v : dflt;
}

int cfg_long(const char *name, long dflt, long min, long max, long *ret) {
    const char *v = cfg_str(name, NULL);
    if (!v) {
        *ret = dflt;
        return 0;
    }
    /* strtol would skip leading blanks; a value with blanks is a typo, reject it too. */
    char *end = NULL;
    errno = 0;
    long x = (v[0] == ' ' || v[0] == '\t') ? 0 : strtol(v, &end, 10);
    if (!end || end == v || *end != '\0' || errno == ERANGE || x < min || x > max) {
        log_error("%s must be an integer in [%ld, %ld]", name, min, max);
        return -EINVAL;
    }
    *ret = x;
    return 0;
}

static void s_print_usage(FILE *f, const char *name, const char *usage) {
    fprintf(f, "%s %s\n\n%s", name, EXTRANET_VERSION, usage ? usage : "");
    size_t n = usage ? strlen(usage) : 0;
    if (n == 0 || usage[n - 1] != '\n')
        fputc('\n', f);
}

int cfg_handle_args(int argc, char **argv, const char *name, const char *usage) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_print_usage(stdout, name, usage);
            fflush(stdout);
            return 1;
        }
        if (!strcmp(a, "--version") || !strcmp(a, "-V")) {
            printf("%s %s\n", name, EXTRANET_VERSION);
            fflush(stdout);
            return 1;
        }
        fprintf(stderr, "%s: unknown argument '%s'\n\n", name, a);
        s_print_usage(stderr, name, usage);
        return -1;
    }
    return 0;
}
