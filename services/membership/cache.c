/* The mem:{user} Redis cache (cache.h) through the isolation library (extranet/iso.h): lookup,
 * leased fill, invalidation; here what is read from PostgreSQL on a miss. Every Redis failure
 * is a miss; the answer then comes from PostgreSQL. */
#include "cache.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "store.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

long mcache_fill_delay_ms;

/* At most this many groups are cached for one user; beyond it the entry is not written and
 * every check reads PostgreSQL (correct, only slower). */
#define MAX_CACHED_GROUPS 2000

/* Every (group, role) of user_id from PostgreSQL, then mem:{user_id} written from them while
 * the lease (taken before the read) is still ours. */
static int s_read_and_fill(svc_thread_t *t, arena_t *a, const char *user_id, const char *lease,
                           store_grole_t **ret, size_t *ret_n) {
    int rc = store_roles_of(t->pg, a, user_id, ret, ret_n);
    if (rc != 0)
        return rc;
    if (mcache_fill_delay_ms > 0) {
        struct timespec ts = {mcache_fill_delay_ms / 1000,
                              (mcache_fill_delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    if (*ret_n <= MAX_CACHED_GROUPS &&
        iso_fill(t->redis, a, user_id, lease, *ret, *ret_n, RULES_MEM_CACHE_TTL_MS) != 1)
        log_debug("mem cache fill for %s not written", user_id);
    return 0;
}

int mcache_role(svc_thread_t *t, arena_t *a, const char *user_id, const char *gid,
                mrole_t *ret_role) {
    /* Lower-cased: the keys every invalidation deletes (a fill under another spelling would
     * outlive them). Nobody is a member of a malformed id. */
    char user[37], lower[37];
    *ret_role = ROLE_NONE;
    if (!util_uuid_lower(user_id, user) || !util_uuid_lower(gid, lower))
        return 0;
    user_id = user;
    gid = lower;
    if (iso_cached_role(t->redis, user_id, gid, ret_role))
        return 0;
    char lease[ISO_LEASE_LEN + 1];
    if (!iso_fill_lease(t->redis, user_id, lease)) {
        /* Redis down, or another fill in progress: one row from PostgreSQL. */
        char *role = NULL;
        int rc = store_role(t->pg, a, gid, user_id, &role);
        if (rc == -ENOENT) {
            *ret_role = ROLE_NONE;
            return 0;
        }
        if (rc != 0)
            return rc;
        return rules_role_parse(role, ret_role) ? 0 : -EIO;
    }
    store_grole_t *rows = NULL;
    size_t n = 0;
    int rc = s_read_and_fill(t, a, user_id, lease, &rows, &n);
    if (rc != 0)
        return rc;
    *ret_role = ROLE_NONE;
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].group_id, gid) == 0 && !rules_role_parse(rows[i].role, ret_role))
            return -EIO;
    return 0;
}

int mcache_groups(svc_thread_t *t, arena_t *a, const char *user_id, store_grole_t **ret,
                  size_t *ret_n) {
    char user[37]; /* lower-cased, as in mcache_role */
    *ret = NULL;
    *ret_n = 0;
    if (!util_uuid_lower(user_id, user))
        return 0;
    user_id = user;
    int rc = iso_cached_groups(t->redis, a, user_id, ret, ret_n);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    char lease[ISO_LEASE_LEN + 1];
    if (!iso_fill_lease(t->redis, user_id, lease))
        return store_roles_of(t->pg, a, user_id, ret, ret_n);
    return s_read_and_fill(t, a, user_id, lease, ret, ret_n);
}

int mcache_invalidate(svc_thread_t *t, char *const *user_ids, size_t n) {
    if (n == 0)
        return 0;
    if (!t->redis)
        return -EIO;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = iso_invalidate(t->redis, user_ids[i]);
    return rc;
}
