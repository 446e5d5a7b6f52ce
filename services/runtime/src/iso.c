/* The isolation check (iso.h): session and membership lookups in Redis, the leased fill of
 * mem:{user}, the process-local session -> user hints, and the services' fallback to
 * membership over the broker. */
#include "extranet/iso.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "membership.pb-c.h"
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool iso_role_parse(const char *s, iso_role_t *ret) {
    if (!s)
        return false;
    if (strcmp(s, "owner") == 0)
        *ret = ISO_ROLE_OWNER;
    else if (strcmp(s, "moderator") == 0)
        *ret = ISO_ROLE_MODERATOR;
    else if (strcmp(s, "member") == 0)
        *ret = ISO_ROLE_MEMBER;
    else
        return false;
    return true;
}

const char *iso_role_name(iso_role_t r) {
    switch (r) {
    case ISO_ROLE_OWNER:
        return "owner";
    case ISO_ROLE_MODERATOR:
        return "moderator";
    case ISO_ROLE_MEMBER:
        return "member";
    case ISO_ROLE_NONE:
        break;
    }
    return "";
}

/* --- sessions ------------------------------------------------------------------------------ */

/* The fields of sess:{h}, in the order every HMGET of it asks for them. */
#define S_SESSION_FIELDS "user_id kind session_id mfa_pending valid_until_ms"
enum { S_F_USER, S_F_KIND, S_F_SESSION, S_F_MFA, S_F_UNTIL, S_NFIELDS };

static bool s_copy(char *dst, size_t cap, const redisReply *v) {
    if (!v || v->type != REDIS_REPLY_STRING || v->len >= cap)
        return false;
    memcpy(dst, v->str, v->len + 1);
    return true;
}

/* An HMGET of S_SESSION_FIELDS -> *out; true when complete, well-formed and valid until after
 * now (an entry past its validity may be stale either way: identity decides). */
static bool s_session_parse(const redisReply *rep, iso_session_t *out) {
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != S_NFIELDS)
        return false;
    const redisReply *mfa = rep->element[S_F_MFA], *until = rep->element[S_F_UNTIL];
    if (!s_copy(out->user_id, sizeof out->user_id, rep->element[S_F_USER]) ||
        !s_copy(out->kind, sizeof out->kind, rep->element[S_F_KIND]) ||
        !s_copy(out->session_id, sizeof out->session_id, rep->element[S_F_SESSION]) ||
        mfa->type != REDIS_REPLY_STRING || until->type != REDIS_REPLY_STRING ||
        !util_uuid_valid(out->user_id) || !util_uuid_valid(out->session_id))
        return false;
    if (strcmp(mfa->str, "0") != 0 && strcmp(mfa->str, "1") != 0)
        return false;
    out->mfa_pending = mfa->str[0] == '1';
    char *end = NULL;
    errno = 0;
    long long vu = strtoll(until->str, &end, 10);
    if (errno != 0 || end == until->str || *end != '\0')
        return false;
    out->valid_until_ms = vu;
    return vu > util_now_ms();
}

/* An HMGET mem:{u} _ gid -> the group answer. */
static void s_group_parse(const redisReply *rep, iso_lookup_t *out) {
    out->group = ISO_GROUP_UNKNOWN;
    out->role = ISO_ROLE_NONE;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return; /* not cached */
    const redisReply *role = rep->element[1];
    if (role->type == REDIS_REPLY_NIL)
        out->group = ISO_GROUP_OUTSIDE;
    else if (role->type == REDIS_REPLY_STRING && iso_role_parse(role->str, &out->role))
        out->group = ISO_GROUP_MEMBER;
    /* anything else is not something membership wrote: unknown, ask it */
}

/* KEYS[1] = sess:{h}, ARGV[1] = gid: {session fields, HMGET mem:{user} _ gid or false}. */
static const char s_session_member_lua[] =
    "local s = redis.call('HMGET', KEYS[1], 'user_id', 'kind', 'session_id', 'mfa_pending', "
    "'valid_until_ms') "
    "if s[1] then return {s, redis.call('HMGET', 'mem:' .. s[1], '_', ARGV[1])} end "
    "return {s, false}";

int iso_lookup(rds_t *r, const char *token_sha256, const char *user_hint, const char *gid,
               iso_lookup_t *out) {
    memset(out, 0, sizeof *out);
    /* A valid gid lower-cased: the case membership writes mem:{user}'s fields in. */
    char lower[37];
    if (gid && util_uuid_lower(gid, lower))
        gid = lower;
    redisReply *sess = NULL, *mem = NULL, *top = NULL;
    if (gid && user_hint) {
        redisReply *rep[2] = {NULL, NULL};
        int rc = rds_append(r, "HMGET sess:%s " S_SESSION_FIELDS, token_sha256);
        if (rc == 0)
            rc = rds_append(r, "HMGET mem:%s _ %s", user_hint, gid);
        if (rc == 0)
            rc = rds_pipeline(r, 2, rep);
        if (rc != 0) {
            /* After a failed append this drops the half-built pipeline (and the connection);
             * after a failed pipeline there is nothing left to drop. */
            if (rds_pipeline(r, 0, rep) != 0)
                log_debug("iso: dropped a failed pipeline");
            return -EIO;
        }
        sess = rep[0];
        mem = rep[1];
    } else if (gid) {
        top = rds_command(r, "EVAL %s 1 sess:%s %s", s_session_member_lua, token_sha256, gid);
        if (!top)
            return -EIO;
        if (top->type == REDIS_REPLY_ARRAY && top->elements == 2) {
            sess = top->element[0];
            mem = top->element[1];
        }
    } else {
        top = sess = rds_command(r, "HMGET sess:%s " S_SESSION_FIELDS, token_sha256);
        if (!top)
            return -EIO;
    }
    out->session_found = s_session_parse(sess, &out->session);
    if (out->session_found && mem && (!user_hint || !strcmp(user_hint, out->session.user_id)))
        s_group_parse(mem, out);
    if (top) {
        freeReplyObject(top);
    } else {
        freeReplyObject(sess);
        freeReplyObject(mem);
    }
    return 0;
}

/* --- hints --------------------------------------------------------------------------------- */

#define S_HINT_LOCKS 64

typedef struct {
    char token_sha256[65];
    char user_id[37];
} s_hint_t;

struct iso_hints {
    size_t slots;
    s_hint_t *slot;
    pthread_mutex_t mu[S_HINT_LOCKS];
};

iso_hints_t *iso_hints_new(size_t slots) {
    if (slots == 0)
        return NULL;
    iso_hints_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->slot = calloc(slots, sizeof *self->slot);
    if (!self->slot) {
        free(self);
        return NULL;
    }
    self->slots = slots;
    for (int i = 0; i < S_HINT_LOCKS; i++)
        if (pthread_mutex_init(&self->mu[i], NULL) != 0) {
            while (i-- > 0)
                pthread_mutex_destroy(&self->mu[i]);
            free(self->slot);
            free(self);
            return NULL;
        }
    return self;
}

void iso_hints_destroy(iso_hints_t **self_p) {
    iso_hints_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    for (int i = 0; i < S_HINT_LOCKS; i++)
        pthread_mutex_destroy(&self->mu[i]);
    sodium_memzero(self->slot, self->slots * sizeof *self->slot);
    free(self->slot);
    free(self);
    *self_p = NULL;
}

/* The slot of a token hash: its first 15 hex digits (uniform: a SHA-256) modulo slots; -1
 * for anything that is not 64 hex digits. */
static long s_slot(const iso_hints_t *self, const char *h) {
    if (!h || strlen(h) != 64 || h[strspn(h, "0123456789abcdef")] != '\0')
        return -1;
    char head[16];
    memcpy(head, h, 15);
    head[15] = '\0';
    return (long)(strtoull(head, NULL, 16) % self->slots);
}

bool iso_hints_get(iso_hints_t *self, const char *token_sha256, char user_id[37]) {
    long i = self ? s_slot(self, token_sha256) : -1;
    if (i < 0)
        return false;
    pthread_mutex_t *mu = &self->mu[i % S_HINT_LOCKS];
    pthread_mutex_lock(mu);
    bool hit = strcmp(self->slot[i].token_sha256, token_sha256) == 0;
    if (hit)
        memcpy(user_id, self->slot[i].user_id, sizeof self->slot[i].user_id);
    pthread_mutex_unlock(mu);
    return hit;
}

void iso_hints_put(iso_hints_t *self, const char *token_sha256, const char *user_id) {
    long i = self ? s_slot(self, token_sha256) : -1;
    if (i < 0 || !util_uuid_valid(user_id))
        return;
    pthread_mutex_t *mu = &self->mu[i % S_HINT_LOCKS];
    pthread_mutex_lock(mu);
    memcpy(self->slot[i].token_sha256, token_sha256, 65);
    memcpy(self->slot[i].user_id, user_id, 37);
    pthread_mutex_unlock(mu);
}

void iso_hints_drop(iso_hints_t *self, const char *token_sha256) {
    long i = self ? s_slot(self, token_sha256) : -1;
    if (i < 0)
        return;
    pthread_mutex_t *mu = &self->mu[i % S_HINT_LOCKS];
    pthread_mutex_lock(mu);
    if (strcmp(self->slot[i].token_sha256, token_sha256) == 0)
        memset(&self->slot[i], 0, sizeof self->slot[i]);
    pthread_mutex_unlock(mu);
}

/* --- memberships --------------------------------------------------------------------------- */

int iso_cached_role(rds_t *r, const char *user_id, const char *gid, iso_role_t *ret_role) {
    char user[37], lower[37];
    if (!r || !util_uuid_lower(user_id, user) || !util_uuid_lower(gid, lower))
        return 0;
    redisReply *rep = rds_command(r, "HMGET mem:%s _ %s", user, lower);
    iso_lookup_t l = {0};
    s_group_parse(rep, &l);
    if (rep)
        freeReplyObject(rep);
    if (l.group == ISO_GROUP_UNKNOWN)
        return 0;
    *ret_role = l.group == ISO_GROUP_MEMBER ? l.role : ISO_ROLE_NONE;
    return 1;
}

int iso_cached_groups(rds_t *r, arena_t *a, const char *user_id, iso_grole_t **ret, size_t *ret_n) {
    if (!r)
        return 0;
    redisReply *rep = rds_command(r, "HGETALL mem:%s", user_id);
    if (!rep)
        return 0;
    int rc = 0;
    bool marker = false;
    iso_grole_t *rows = NULL;
    size_t n = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements % 2 == 0) {
        rows = arena_alloc(a, (rep->elements / 2 + 1) * sizeof *rows);
        rc = rows ? 1 : -ENOMEM;
        for (size_t i = 0; rc == 1 && i < rep->elements; i += 2) {
            const redisReply *k = rep->element[i], *v = rep->element[i + 1];
            iso_role_t role;
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
                rc = 0; /* not something membership wrote: a miss */
            } else if (strcmp(k->str, "_") == 0) {
                marker = true;
            } else if (!util_uuid_valid(k->str) || !iso_role_parse(v->str, &role)) {
                rc = 0;
            } else {
                rows[n].group_id = arena_strdup(a, k->str);
                rows[n].role = arena_strdup(a, v->str);
                if (!rows[n].group_id || !rows[n].role)
                    rc = -ENOMEM;
                n++;
            }
        }
    }
    freeReplyObject(rep);
    if (rc == 1 && !marker)
        rc = 0; /* an empty hash is a missing key */
    if (rc == 1) {
        *ret = rows;
        *ret_n = n;
    }
    return rc;
}

bool iso_fill_lease(rds_t *r, const char *user_id, char lease[ISO_LEASE_LEN + 1]) {
    char key[80];
    snprintf(key, sizeof key, "fill:mem:%s", user_id);
    return rds_lease(r, key, ISO_FILL_LEASE_MS, lease);
}

/* KEYS[1] = fill:mem:{u}, KEYS[2] = mem:{u}; ARGV[1] = lease, ARGV[2] = ttl ms, then pairs of
 * group id, role. Writes only while the lease is still ours: an invalidation deletes it, so a
 * fill that read PostgreSQL before the change committed finds it gone and writes nothing. */
static const char s_fill_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('DEL', KEYS[2]) "
    "redis.call('HSET', KEYS[2], '_', '1') "
    "for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end "
    "redis.call('PEXPIRE', KEYS[2], ARGV[2]) "
    "redis.call('DEL', KEYS[1]) "
    "return 1";

int iso_fill(rds_t *r, arena_t *a, const char *user_id, const char *lease, const iso_grole_t *rows,
             size_t n, long ttl_ms) {
    if (!r)
        return -EIO;
    size_t argc = 7 + 2 * n;
    const char **argv = arena_alloc(a, argc * sizeof *argv);
    size_t *lens = arena_alloc(a, argc * sizeof *lens);
    char *fill_key = arena_printf(a, "fill:mem:%s", user_id);
    char *mem_key = arena_printf(a, "mem:%s", user_id);
    char *ttl = arena_printf(a, "%ld", ttl_ms);
    if (!argv || !lens || !fill_key || !mem_key || !ttl)
        return -ENOMEM;
    argv[0] = "EVAL";
    argv[1] = s_fill_lua;
    argv[2] = "2";
    argv[3] = fill_key;
    argv[4] = mem_key;
    argv[5] = lease;
    argv[6] = ttl;
    for (size_t i = 0; i < n; i++) {
        argv[7 + 2 * i] = rows[i].group_id;
        argv[8 + 2 * i] = rows[i].role;
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisReply *rep = rds_commandargv(r, (int)argc, argv, lens);
    int rc = !rep || rep->type != REDIS_REPLY_INTEGER ? -EIO : rep->integer == 1 ? 1 : 0;
    if (rep)
        freeReplyObject(rep);
    return rc;
}

int iso_invalidate(rds_t *r, const char *user_id) {
    redisReply *rep = r ? rds_command(r, "DEL fill:mem:%s mem:%s", user_id, user_id) : NULL;
    int rc = rep && rep->type == REDIS_REPLY_INTEGER ? 0 : -EIO;
    if (rep)
        freeReplyObject(rep);
    return rc;
}

/* --- the services' check ------------------------------------------------------------------- */

static void s_system(Extranet__Actor *a) {
    Extranet__Actor init = EXTRANET__ACTOR__INIT;
    *a = init;
    a->kind = EXTRANET__ACTOR_KIND__SYSTEM;
}

int iso_role(rds_t *r, rpc_t *rpc, const char *request_id, int64_t deadline_ms, const char *user_id,
             const char *gid, iso_role_t *ret_role) {
    *ret_role = ISO_ROLE_NONE;
    char user[37], lower[37];
    if (!util_uuid_lower(user_id, user) || !util_uuid_lower(gid, lower))
        return 0; /* nobody is a member of a malformed id */
    if (iso_cached_role(r, user, lower, ret_role))
        return 0;
    if (!rpc)
        return -EIO;
    Extranet__Actor sys;
    s_system(&sys);
    Extranet__Membership__CheckRequest req = EXTRANET__MEMBERSHIP__CHECK_REQUEST__INIT;
    req.user_id = user;
    req.group_id = lower;
    ProtobufCMessage *rep = NULL;
    char err[160] = "";
    int rc = rpc_call(rpc, "membership.Check", &sys, request_id, deadline_ms, &req.base,
                      &extranet__membership__check_reply__descriptor, &rep, err, sizeof err);
    if (rc == ERR_STATUS(EXTRANET__STATUS__NOT_FOUND))
        return 0;
    if (rc != 0) {
        log_warn("membership.Check failed (%d: %s)", rc, err);
        return -EIO;
    }
    bool ok = iso_role_parse(((Extranet__Membership__CheckReply *)rep)->role, ret_role);
    protobuf_c_message_free_unpacked(rep, NULL);
    if (!ok) {
        *ret_role = ISO_ROLE_NONE;
        log_warn("membership.Check answered an unknown role");
        return -EIO;
    }
    return 0;
}

int iso_groups(rds_t *r, rpc_t *rpc, arena_t *a, const char *request_id, int64_t deadline_ms,
               const char *user_id, iso_grole_t **ret, size_t *ret_n) {
    *ret = NULL;
    *ret_n = 0;
    char user[37];
    if (!util_uuid_lower(user_id, user))
        return 0;
    int rc = iso_cached_groups(r, a, user, ret, ret_n);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (!rpc)
        return -EIO;
    Extranet__Actor sys;
    s_system(&sys);
    Extranet__Membership__GroupsOfRequest req = EXTRANET__MEMBERSHIP__GROUPS_OF_REQUEST__INIT;
    req.user_id = user;
    ProtobufCMessage *rep = NULL;
    char err[160] = "";
    rc = rpc_call(rpc, "membership.GroupsOf", &sys, request_id, deadline_ms, &req.base,
                  &extranet__membership__groups_of_reply__descriptor, &rep, err, sizeof err);
    if (rc != 0) {
        log_warn("membership.GroupsOf failed (%d: %s)", rc, err);
        return -EIO;
    }
    const Extranet__Membership__GroupsOfReply *g = (const void *)rep;
    iso_grole_t *rows = arena_alloc(a, (g->n_groups + 1) * sizeof *rows);
    rc = rows ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < g->n_groups; i++) {
        iso_role_t role;
        if (!util_uuid_valid(g->groups[i]->group_id) || !iso_role_parse(g->groups[i]->role, &role))
            rc = -EIO;
        else if (!(rows[i].group_id = arena_strdup(a, g->groups[i]->group_id)) ||
                 !(rows[i].role = arena_strdup(a, g->groups[i]->role)))
            rc = -ENOMEM;
    }
    if (rc == 0) {
        *ret = rows;
        *ret_n = g->n_groups;
    }
    protobuf_c_message_free_unpacked(rep, NULL);
    return rc;
}
