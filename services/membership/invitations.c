/* Invitation handlers (R13): invite by email (mailed through identity.SendMail), list, revoke,
 * anonymous lookup, redeem anonymously (new extranet account) or signed in as the invited
 * email. A token is 32 random bytes (base64url); only its SHA-256 is stored. Redeeming claims
 * the row with one conditional UPDATE, so of twenty racing requests one wins. */
#include "expiry.pb-c.h"
#include "extranet/log.h"
#include "extranet/util.h"
#include "handlers.h"
#include "store.h"
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define HASH_LEN 64

static void s_token_new(char token[RULES_TOKEN_LEN + 1], char hash[HASH_LEN + 1]) {
    unsigned char rnd[32];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2base64(token, RULES_TOKEN_LEN + 1, rnd, sizeof rnd,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(rnd, sizeof rnd);
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, (const unsigned char *)token, strlen(token));
    sodium_bin2hex(hash, HASH_LEN + 1, d, sizeof d);
}

/* The hash of a token as the caller sent it; false (answered NOT_FOUND) when it cannot be a
 * token: a malformed token answers exactly like an unknown one. */
static bool s_token_hash_or_reply(svc_call_t *call, const char *token, char hash[HASH_LEN + 1]) {
    if (!rules_token_shape(token)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return false;
    }
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, (const unsigned char *)token, strlen(token));
    sodium_bin2hex(hash, HASH_LEN + 1, d, sizeof d);
    return true;
}

static void s_unavailable(svc_call_t *call, const char *what) {
    svc_fail(call, EXTRANET__STATUS__UNAVAILABLE, "%s is unavailable, please retry", what);
}

static int s_send_mail(svc_thread_t *t, svc_call_t *call, const char *to, const char *subject,
                       const char *body) {
    Extranet__Identity__SendMailRequest m = EXTRANET__IDENTITY__SEND_MAIL_REQUEST__INIT;
    m.to = (char *)to;
    m.subject = (char *)subject;
    m.body = (char *)body;
    char err[160] = "";
    int rc = call_identity(t, call, "identity.SendMail", &m.base, NULL, NULL, err, sizeof err);
    if (rc != 0)
        log_warn("identity.SendMail failed (%d: %s)", rc, err);
    return rc;
}

/* Adds an existing employee (or admin) invited by email straight away. */
static void s_add_employee(svc_thread_t *t, svc_call_t *call, const char *gid,
                           const Extranet__Identity__User *u) {
    bool added = false;
    int64_t version = 0;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_member_ensure(t->pg, gid, u->id, u->kind, &added)) != 0 ||
        (rc = store_pending_add(t->pg, u->id, &version)) != 0 ||
        (added && (rc = call_audit(t, call, "member.added", "user", u->id, gid,
                                   "{\"role\":\"member\",\"via\":\"invitation\"}")) != 0) ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, NULL);
        return;
    }
    char *users[] = {u->id};
    const char *roles[] = {"member"};
    if (call_after_change(t, gid, users, &version, roles, 1, "added") != 0)
        log_warn("member cache of %s not cleared yet (tick retries)", u->id);
    Extranet__Membership__Invitation inv = EXTRANET__MEMBERSHIP__INVITATION__INIT;
    inv.group_id = (char *)gid;
    inv.email = u->email;
    inv.state = "added";
    inv.invited_by = call->req->actor->user_id;
    svc_reply_ok(call, &inv.base);
}

/* Registers expiry's "invitation.expire" timer (subject "<gid>:<id>", due at expires_at) after
 * the invitation committed. Clean-up only (every read compares expires_at), so a failure is
 * logged and the invitation stands; at most 2 s of the caller's time. */
static void s_schedule_expiry(svc_thread_t *t, svc_call_t *call,
                              const Extranet__Membership__Invitation *inv) {
    char *subject = arena_printf(call->arena, "%s:%s", inv->group_id, inv->id);
    if (!subject) {
        log_warn("invitation %s: no expiry timer (out of memory)", inv->id);
        return;
    }
    Extranet__Expiry__Timer timer = EXTRANET__EXPIRY__TIMER__INIT;
    timer.kind = "invitation.expire";
    timer.subject = subject;
    timer.due_at = inv->expires_at;
    Extranet__Expiry__ScheduleRequest req = EXTRANET__EXPIRY__SCHEDULE_REQUEST__INIT;
    req.timer = &timer;
    Extranet__Actor sys = EXTRANET__ACTOR__INIT;
    sys.kind = EXTRANET__ACTOR_KIND__SYSTEM;
    char err[160] = "";
    int rc = rpc_call(t->rpc, "expiry.Schedule", &sys, call->req->request_id,
                      svc_call_nested_deadline_ms(call, 200, 2000), &req.base, NULL, NULL, err,
                      sizeof err);
    if (rc != 0)
        log_warn("invitation %s: expiry timer not scheduled (%d: %s)", inv->id, rc, err);
}

void invitations_create(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__InviteRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    Extranet__Membership__Group *g =
        call_group_for_change_or_reply(t, call, req->gid, "invitation.created", &k, &role);
    if (!g)
        return;
    gkind_t gk = strcmp(g->kind, "extranet") == 0 ? GKIND_EXTRANET : GKIND_INTERNAL;
    if (!call_verdict_or_deny(t, call, rules_invite(k, role, gk, g->archived), "invitation.created",
                              "group", req->gid, req->gid))
        return;
    const char *err = rules_email_check(req->email);
    if (err) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "%s", err);
        return;
    }
    /* An employee's address adds the employee (inviters are employees or admins, who may see
     * every employee, R4); an extranet account or an unknown address gets the invitation. */
    Extranet__Identity__EmailRequest er = EXTRANET__IDENTITY__EMAIL_REQUEST__INIT;
    er.email = req->email;
    ProtobufCMessage *rep = NULL;
    char ierr[160] = "";
    int rc = call_identity(t, call, "identity.LookupEmail", &er.base,
                           &extranet__identity__user__descriptor, &rep, ierr, sizeof ierr);
    if (rc == 0) {
        const Extranet__Identity__User *u = (const void *)rep;
        if (strcmp(u->kind, "extranet") != 0) {
            /* A deactivated or expired employee is not added (R9). Inviters are employees or
             * admins, who see every employee (R4), so saying why leaks nothing. A deactivated
             * extranet account is not told apart from any other address: it gets the
             * invitation mail, which it cannot redeem without signing in. */
            if (!call_account_usable(u->status, u->expires_at)) {
                protobuf_c_message_free_unpacked(rep, NULL);
                svc_fail(call, EXTRANET__STATUS__CONFLICT,
                         "the account of this address is deactivated or expired");
                return;
            }
            s_add_employee(t, call, req->gid, u);
            protobuf_c_message_free_unpacked(rep, NULL);
            return;
        }
        protobuf_c_message_free_unpacked(rep, NULL);
    } else if (rc != ERR_STATUS(EXTRANET__STATUS__NOT_FOUND)) {
        log_warn("identity.LookupEmail failed (%d: %s)", rc, ierr);
        s_unavailable(call, "identity");
        return;
    }
    char token[RULES_TOKEN_LEN + 1], hash[HASH_LEN + 1];
    s_token_new(token, hash);
    Extranet__Membership__Invitation *inv = NULL;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_invitation_insert(t->pg, call->arena, req->gid, req->email, hash,
                                      call->req->actor->user_id, membership_cfg.invitation_ttl_s,
                                      &inv)) != 0 ||
        (rc = call_audit(t, call, "invitation.created", "invitation", inv->id, req->gid, NULL)) !=
            0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc != 0) {
        sodium_memzero(token, sizeof token);
        call_store_fail(call, rc, "conflict");
        return;
    }
    char *subject = arena_printf(call->arena, "Invitation to %.150s", g->name);
    char *body = arena_printf(
        call->arena,
        "Hello,\n\nyou are invited to join the workgroup \"%s\".\n\n"
        "Open this link to accept the invitation (valid until %s):\n\n%s/invitations/%s\n\n"
        "If you did not expect this invitation, ignore this mail.\n\n-- extranet\n",
        g->name, inv->expires_at, membership_cfg.public_url, token);
    sodium_memzero(token, sizeof token);
    if (!subject || !body) {
        svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
        return;
    }
    for (char *p = subject; *p; p++) /* a group name never breaks the header line */
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    if (s_send_mail(t, call, inv->email, subject, body) != 0) {
        /* Nobody can redeem an invitation whose token was never delivered: withdraw it. */
        if ((rc = pg_begin(t->pg)) != 0 || (rc = store_invitation_revoke(t->pg, inv->id)) != 0 ||
            (rc = call_audit(t, call, "invitation.withdrawn", "invitation", inv->id, req->gid,
                             "{\"reason\":\"mail\"}")) != 0 ||
            (rc = pg_commit(t->pg)) != 0) {
            pg_rollback(t->pg);
            log_warn("invitation %s: could not withdraw after the mail failed", inv->id);
        }
        s_unavailable(call, "mail");
        return;
    }
    s_schedule_expiry(t, call, inv);
    log_info("invitation %s to group %s created by %s", inv->id, req->gid,
             call->req->actor->user_id);
    svc_reply_ok(call, &inv->base);
}

void invitations_list(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__GroupIdRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    if (!call_group_or_reply(t, call, req->gid, &k, &role) ||
        !call_verdict_or_reply(call, rules_invitations_manage(k, role)))
        return;
    Extranet__Membership__InvitationList reply = EXTRANET__MEMBERSHIP__INVITATION_LIST__INIT;
    int rc = store_invitations_list(t->pg, call->arena, req->gid, &reply.invitations,
                                    &reply.n_invitations);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    svc_reply_ok(call, &reply.base);
}

void invitations_revoke(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__InvitationIdRequest *req = (const void *)call->msg;
    ukind_t k;
    mrole_t role;
    if (!call_group_for_change_or_reply(t, call, req->gid, "invitation.revoked", &k, &role) ||
        /* the record names the group, not the id: it may be another group's invitation */
        !call_verdict_or_deny(t, call, rules_invitations_manage(k, role), "invitation.revoked",
                              "group", req->gid, req->gid) ||
        !call_gid_or_reply(call, req->id))
        return;
    /* An invitation of another group is not found here, whoever asks. */
    char *gid = NULL;
    int rc = store_invitation_group(t->pg, call->arena, req->id, &gid);
    if (rc == 0 && strcasecmp(gid, req->gid) != 0)
        rc = -ENOENT;
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_invitation_revoke(t->pg, req->id)) != 0 ||
        (rc = call_audit(t, call, "invitation.revoked", "invitation", req->id, req->gid, NULL)) !=
            0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc == -ENOENT) {
        svc_fail(call, EXTRANET__STATUS__CONFLICT, "the invitation is no longer pending");
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    log_info("invitation %s revoked by %s", req->id, call->req->actor->user_id);
    svc_reply_ok(call, NULL);
}

void invitations_lookup(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__TokenRequest *req = (const void *)call->msg;
    char hash[HASH_LEN + 1];
    if (!s_token_hash_or_reply(call, req->token, hash))
        return;
    /* Only the invitation's own fields: never whether an account exists for the email (R13). */
    Extranet__Membership__InvitationInfo *info = NULL;
    int rc = store_invitation_lookup(t->pg, call->arena, hash, &info);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    svc_reply_ok(call, &info->base);
}

/* Commits the membership of user_id from the claimed invitation c. Returns 0 or answers. */
static int s_finish(svc_thread_t *t, svc_call_t *call, const store_claim_t *c, const char *user_id,
                    const char *kind) {
    bool added = false;
    int64_t version = 0;
    int rc;
    if ((rc = pg_begin(t->pg)) != 0 ||
        (rc = store_member_ensure(t->pg, c->group_id, user_id, kind, &added)) != 0 ||
        (rc = store_invitation_finish(t->pg, c->id, user_id)) != 0 ||
        (rc = store_pending_add(t->pg, user_id, &version)) != 0 ||
        (rc = call_audit(t, call, "invitation.accepted", "invitation", c->id, c->group_id, NULL)) !=
            0 ||
        (added && (rc = call_audit(t, call, "member.added", "user", user_id, c->group_id,
                                   "{\"role\":\"member\",\"via\":\"invitation\"}")) != 0) ||
        (rc = pg_commit(t->pg)) != 0) {
        pg_rollback(t->pg);
        call_store_fail(call, rc, NULL);
        return -1;
    }
    char *users[] = {(char *)user_id};
    const char *roles[] = {"member"};
    if (call_after_change(t, c->group_id, users, &version, roles, 1, "added") != 0)
        log_warn("member cache of %s not cleared yet (tick retries)", user_id);
    log_info("invitation %s accepted by %s", c->id, user_id);
    return 0;
}

static void s_reply_accepted(svc_call_t *call, const store_claim_t *c) {
    Extranet__Membership__AcceptReply r = EXTRANET__MEMBERSHIP__ACCEPT_REPLY__INIT;
    r.email = c->email;
    r.group_id = c->group_id;
    svc_reply_ok(call, &r.base);
}

void invitations_accept(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__AcceptRequest *req = (const void *)call->msg;
    char hash[HASH_LEN + 1];
    if (!s_token_hash_or_reply(call, req->token, hash))
        return;
    if (!req->password[0]) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "password is required");
        return;
    }
    store_claim_t c;
    int rc = store_invitation_claim(t->pg, call->arena, hash, NULL, &c);
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    Extranet__Identity__CreateExtranetAccountRequest cr =
        EXTRANET__IDENTITY__CREATE_EXTRANET_ACCOUNT_REQUEST__INIT;
    cr.email = c.email;
    cr.display_name = req->display_name;
    cr.password = req->password;
    ProtobufCMessage *rep = NULL;
    char ierr[160] = "";
    rc = call_identity(t, call, "identity.CreateExtranetAccount", &cr.base,
                       &extranet__identity__user__descriptor, &rep, ierr, sizeof ierr);
    if (rc == 0) {
        const Extranet__Identity__User *u = (const void *)rep;
        char *uid = arena_strdup(call->arena, u->id);
        protobuf_c_message_free_unpacked(rep, NULL);
        if (!uid) {
            svc_fail(call, EXTRANET__STATUS__INTERNAL, "out of memory");
            return;
        }
        if (s_finish(t, call, &c, uid, "extranet") == 0)
            s_reply_accepted(call, &c);
        return;
    }
    /* Not redeemed: the invitation goes back to pending for its rightful redeemer. */
    if (store_invitation_unclaim(t->pg, c.id) != 0)
        log_warn("invitation %s stays claimed until its claim lapses", c.id);
    if (rc == ERR_STATUS(EXTRANET__STATUS__CONFLICT)) {
        /* The address already has an account. It redeems only when signed in as that address;
         * the answer here is the same as for a new account (R13), and the owner of the
         * mailbox learns by mail what to do. */
        char *body = arena_printf(
            call->arena,
            "Hello,\n\nsomeone tried to accept an invitation for this address, which already "
            "has an account.\nSign in with your existing account and open the invitation link "
            "again to join.\nIf this was not you, no action is needed.\n\n-- extranet\n");
        if (!body || s_send_mail(t, call, c.email, "Your invitation", body) != 0)
            log_warn("invitation %s: notice to the existing account not sent", c.id);
        s_reply_accepted(call, &c);
        return;
    }
    if (rc == ERR_STATUS(EXTRANET__STATUS__INVALID)) {
        svc_fail(call, EXTRANET__STATUS__INVALID, "%s", ierr);
        return;
    }
    log_warn("identity.CreateExtranetAccount failed (%d: %s)", rc, ierr);
    s_unavailable(call, "identity");
}

void invitations_join(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__TokenRequest *req = (const void *)call->msg;
    ukind_t k;
    char hash[HASH_LEN + 1];
    if (!call_user_or_reply(call, &k) || !s_token_hash_or_reply(call, req->token, hash))
        return;
    muser_t *me = NULL;
    int rc = call_user(t, call, call->req->actor->user_id, &me);
    if (rc != 0 || !me) {
        s_unavailable(call, "identity");
        return;
    }
    /* Only the invited address redeems it: another account's claim finds no row, and answers
     * like an unknown token. */
    store_claim_t c;
    if ((rc = store_invitation_claim(t->pg, call->arena, hash, me->email, &c)) != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    /* Invitations exist for extranet groups only, where every kind may be a member (R2). */
    if (s_finish(t, call, &c, me->id, me->kind) == 0)
        s_reply_accepted(call, &c);
    else if (store_invitation_unclaim(t->pg, c.id) != 0)
        log_warn("invitation %s stays claimed until its claim lapses", c.id);
}

/* expiry's "invitation.expire" timer (SYSTEM only): marks the invitation expired once past
 * expires_at. Idempotent: one already accepted, revoked or expired answers OK and changes
 * nothing; not yet expired (or a redeemer's claim running): UNAVAILABLE, so the timer retries;
 * one that does not exist (in that group): NOT_FOUND. */
void invitations_expire(svc_thread_t *t, svc_call_t *call) {
    const Extranet__Membership__InvitationIdRequest *req = (const void *)call->msg;
    if (!call_system_or_reply(call))
        return;
    if (!util_uuid_valid(req->gid) || !util_uuid_valid(req->id)) {
        svc_fail(call, EXTRANET__STATUS__NOT_FOUND, RULES_NOT_FOUND);
        return;
    }
    char *gid = NULL;
    int rc = store_invitation_group(t->pg, call->arena, req->id, &gid);
    if (rc == 0 && strcasecmp(gid, req->gid) != 0)
        rc = -ENOENT;
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    if ((rc = pg_begin(t->pg)) != 0 || (rc = store_invitation_expire(t->pg, gid, req->id)) != 0 ||
        (rc = call_audit(t, call, "invitation.expired", "invitation", req->id, gid, NULL)) != 0 ||
        (rc = pg_commit(t->pg)) != 0)
        pg_rollback(t->pg);
    if (rc == -ENOENT) { /* nothing left to change: already accepted, revoked or expired */
        svc_reply_ok(call, NULL);
        return;
    }
    if (rc != 0) {
        call_store_fail(call, rc, NULL);
        return;
    }
    log_info("invitation %s expired", req->id);
    svc_reply_ok(call, NULL);
}
