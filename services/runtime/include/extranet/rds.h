/* Redis through hiredis: one connection per thread, reconnecting on demand with a short
 * timeout. Redis only caches; any failure here means "miss", never "allow". */
#ifndef EXTRANET_RDS_H
#define EXTRANET_RDS_H
#include "extranet/common.h"
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct rds rds_t;

/* url: "redis://host:port[/db]" or "host:port". Connects lazily. NULL only on OOM. */
rds_t *rds_new(const char *url);
void rds_destroy(rds_t **self_p);

/* Runs one command (hiredis format). Returns a new reply (freeReplyObject), or NULL when Redis
 * is unreachable or answered an error (logged at debug; connection dropped for a retry). */
redisReply *rds_command(rds_t *self, const char *fmt, ...);
redisReply *rds_commandargv(rds_t *self, int argc, const char **argv, const size_t *argvlen);
/* Pipelines n commands already appended with rds_append*; returns 0 and fills ret_replies[n]
 * (each freed by the caller), or -EIO (nothing to free). */
int rds_append(rds_t *self, const char *fmt, ...) WUR;
int rds_pipeline(rds_t *self, int n, redisReply **ret_replies) WUR;

#define RDS_LEASE_LEN 32 /* hex characters of a lease */
/* Takes the lease key (SET key <random hex> NX PX ttl_ms) into lease: true when it is ours,
 * false when someone else holds it or Redis is unreachable (self NULL included). The fill
 * leases of the session and membership caches (extranet/iso.h). */
bool rds_lease(rds_t *self, const char *key, int ttl_ms, char lease[RDS_LEASE_LEN + 1]);
#endif
