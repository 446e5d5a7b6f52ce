"""Black-box tests of the identity service straight through the broker, no gateway: an MDP
client (a minimal one below) sends extranet.Request envelopes built from proto/*.proto with
protoc --python_out. Covers what HTTP cannot reach: identity.Authenticate and its Redis fill
(sess:{h}), internal SYSTEM-only methods, session.revoked events, the pending-invalidation
outbox when Redis stalls, and the actor checks of every method."""

import hashlib
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyotp
import pytest
import zmq


class Client:
    """A minimal MDP/Client (RFC 7) on a DEALER: frames "" | MDPC01 | service | body."""

    def __init__(self, ctx, endpoint):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, service, body):
        self.sock.send_multipart([b"", b"MDPC01", service.encode(), body])

    def recv(self, timeout):
        """(service, [body frames]) or None on timeout."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) >= 4 and frames[0] == b"" and frames[1] == b"MDPC01", frames
        return frames[2], frames[3:]

REPO = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@extranet.test"        # conftest.py's first admin
ADMIN_PASSWORD = "Admin-Test-Passw0rd-1"


@pytest.fixture(scope="session")
def idpb(tmp_path_factory):
    """Generated Python protobuf modules: .envelope, .identity."""
    out = tmp_path_factory.mktemp("identity_pb")
    subprocess.run(["protoc", "--proto_path", str(REPO / "proto"), "--python_out", str(out),
                    "envelope.proto", "identity.proto", "expiry.proto"], check=True)
    sys.path.insert(0, str(out))
    import envelope_pb2
    import identity_pb2

    class PB:
        envelope, identity = envelope_pb2, identity_pb2
    return PB


class Actor:
    """Who calls: kind name plus the ids Authenticate returned (for signed-in users)."""

    def __init__(self, kind, user_id="", session_id="", mfa_pending=False):
        self.kind, self.user_id, self.session_id = kind, user_id, session_id
        self.mfa_pending = mfa_pending


ANON = Actor("ANONYMOUS")
SYSTEM = Actor("SYSTEM")


class Rpc:
    def __init__(self, pb, endpoint):
        self.pb = pb
        self.ctx = zmq.Context()
        self.client = Client(self.ctx, endpoint)

    def call(self, method, msg, actor=ANON, reply=None, timeout=15.0):
        """Returns (status name, message, decoded reply or None)."""
        env = self.pb.envelope
        req = env.Request(request_id=str(uuid.uuid4()), method=method,
                          deadline_ms=int(time.time() * 1000 + timeout * 1000),
                          payload=msg.SerializeToString() if msg is not None else b"")
        req.actor.kind = env.ActorKind.Value(actor.kind)
        req.actor.user_id = actor.user_id
        req.actor.session_id = actor.session_id
        req.actor.mfa_pending = actor.mfa_pending
        req.actor.client_ip = "192.0.2.7"
        self.client.send("identity", req.SerializeToString())
        end = time.monotonic() + timeout + 1
        while True:
            got = self.client.recv(max(end - time.monotonic(), 0.01))
            assert got is not None, "no reply to %s" % method
            rep = env.Reply()
            rep.ParseFromString(got[1][0])
            if rep.request_id == req.request_id:
                break
        status = env.Status.Name(rep.status)
        body = None
        if status == "OK" and reply is not None:
            body = reply()
            body.ParseFromString(rep.payload)
        return status, rep.message, body

    def close(self):
        self.client.sock.close(0)
        self.ctx.term()


@pytest.fixture(scope="module")
def rpc(cluster, idpb, require_service):
    require_service("identity")
    r = Rpc(idpb, cluster.urls["broker"])
    yield r
    r.close()


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Ops:
    """Short-hands over rpc for the tests below."""

    def __init__(self, rpc, pb, cluster):
        self.rpc, self.pb, self.id, self.c = rpc, pb, pb.identity, cluster

    def login(self, email, password):
        return self.rpc.call("identity.Login", self.id.LoginRequest(email=email, password=password),
                             reply=self.id.LoginReply)

    def auth(self, token):
        return self.rpc.call("identity.Authenticate",
                             self.id.AuthenticateRequest(token_sha256=sha(token)),
                             reply=self.id.AuthenticateReply)

    def actor_of(self, token):
        st, msg, a = self.auth(token)
        assert st == "OK", msg
        return Actor(a.kind.upper(), a.user_id, a.session_id, a.mfa_pending)

    def admin(self):
        st, msg, r = self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        assert st == "OK", msg
        return r.token, self.actor_of(r.token)

    def create_user(self, admin, kind="employee", password="Employee-Passw0rd"):
        email = "%s-%s@example.test" % (kind, uuid.uuid4().hex[:10])
        if kind == "extranet":
            st, msg, u = self.rpc.call("identity.CreateExtranetAccount",
                                       self.id.CreateExtranetAccountRequest(
                                           email=email, display_name="Ext " + email[:8],
                                           password=password),
                                       actor=SYSTEM, reply=self.id.User)
        else:
            st, msg, u = self.rpc.call("identity.CreateUser",
                                       self.id.CreateUserRequest(email=email, kind=kind,
                                                                 password=password),
                                       actor=admin, reply=self.id.User)
        assert st == "OK", msg
        return u, email, password

    def empty(self):
        return self.pb.envelope.Empty()


@pytest.fixture(scope="module")
def ops(rpc, idpb, cluster):
    return Ops(rpc, idpb, cluster)


def test_login_fills_session_cache_under_lease(ops, cluster):
    token, admin = ops.admin()
    assert admin.kind == "ADMIN" and not admin.mfa_pending
    assert len(token) == 43
    h = sha(token)
    # Authenticate filled sess:{h}; the lease is released; the TTL is at most 60 s.
    assert cluster.redis_command("HGET", "sess:" + h, "user_id") == admin.user_id.encode() \
        or cluster.redis_command("HGET", "sess:" + h, "user_id") == admin.user_id
    ttl = cluster.redis_command("PTTL", "sess:" + h)
    assert 0 < int(ttl) <= 60000
    assert cluster.redis_command("EXISTS", "fill:sess:" + h) == 0
    fields = cluster.redis_command("HGETALL", "sess:" + h)
    flat = [f.decode() if isinstance(f, bytes) else f for f in fields]
    d = dict(zip(flat[::2], flat[1::2]))
    assert d["kind"] == "admin" and d["session_id"] == admin.session_id
    assert d["mfa_pending"] == "0" and int(d["valid_until_ms"]) > time.time() * 1000
    # Only the hash is stored in PostgreSQL, never the token.
    rows = cluster.psql("SELECT token_hash FROM identity.sessions WHERE id = :'sid'",
                        sid=admin.session_id)
    assert rows == [[h]]


def test_authenticate_rejects_unknown_and_malformed(ops, rpc, idpb):
    st, _, _ = ops.auth("not-a-token")
    assert st == "UNAUTHENTICATED"
    st, msg, _ = rpc.call("identity.Authenticate", idpb.identity.AuthenticateRequest(
        token_sha256="XYZ"))
    assert st == "INVALID" and "token_sha256" in msg


def test_wrong_password_and_unknown_email_same_answer(ops):
    a = ops.login(ADMIN_EMAIL, "wrong-password")
    b = ops.login("nobody-%s@example.test" % uuid.uuid4().hex[:8], "wrong-password")
    assert a[0] == b[0] == "UNAUTHENTICATED"
    assert a[1] == b[1]
    # Case-insensitive email.
    st, msg, _ = ops.login(ADMIN_EMAIL.upper(), ADMIN_PASSWORD)
    assert st == "OK", msg


def test_logout_deletes_cache_before_answering_and_publishes(ops, rpc, cluster):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    st, msg, r = ops.login(email, pw)
    assert st == "OK", msg
    actor = ops.actor_of(r.token)
    assert cluster.redis_command("EXISTS", "sess:" + sha(r.token)) == 1
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"session.revoked")
    sub.connect(cluster.urls["events"])
    time.sleep(0.3)   # slow joiner: let the subscription reach the broker's XPUB
    try:
        st, msg, _ = rpc.call("identity.Logout", ops.empty(), actor=actor)
        assert st == "OK", msg
        assert cluster.redis_command("EXISTS", "sess:" + sha(r.token)) == 0
        assert ops.auth(r.token)[0] == "UNAUTHENTICATED"
        assert sub.poll(5000), "no session.revoked event"
        frames = sub.recv_multipart()
        assert frames[0] == b"session.revoked"
        ev = ops.pb.envelope.Event()
        ev.ParseFromString(frames[1])
        payload = ops.id.SessionRevoked()
        payload.ParseFromString(ev.payload)
        assert payload.user_id == u.id and list(payload.session_ids) == [actor.session_id]
        assert payload.reason == "logout"
    finally:
        sub.close(0)
        ctx.term()


def test_access_checks_every_method(ops, rpc):
    """Admin methods refuse employees; SYSTEM-only methods refuse admins; user methods refuse
    anonymous callers."""
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    employee = ops.actor_of(ops.login(email, pw)[2].token)
    I = ops.id
    admin_only = [("identity.ListUsers", I.ListUsersRequest()),
                  ("identity.CreateUser", I.CreateUserRequest(email="x@y.test", password="x" * 9)),
                  ("identity.UpdateUser", I.UpdateUserRequest(id=u.id, display_name="x")),
                  ("identity.TransferToIntranet", I.UserIdRequest(id=u.id)),
                  ("identity.ResetMfa", I.UserIdRequest(id=u.id)),
                  ("identity.SetPolicy", I.Policy(extranet_mfa_required=False)),
                  ("identity.GetPolicy", ops.empty()),
                  ("identity.GetUser", I.UserIdRequest(id=u.id)),
                  ("identity.Deactivate", I.UserIdRequest(id=admin.user_id)),
                  ("identity.Reactivate", I.UserIdRequest(id=u.id))]
    for method, msg in admin_only:
        assert rpc.call(method, msg, actor=employee)[0] == "FORBIDDEN", method
        assert rpc.call(method, msg, actor=ANON)[0] == "UNAUTHENTICATED", method
    system_only = [("identity.CreateExtranetAccount",
                    I.CreateExtranetAccountRequest(email="q@y.test", password="x" * 9)),
                   ("identity.LookupEmail", I.EmailRequest(email=email)),
                   ("identity.SendMail", I.SendMailRequest(to="a@b.test", subject="s", body="b"))]
    for method, msg in system_only:
        assert rpc.call(method, msg, actor=admin)[0] == "FORBIDDEN", method
        assert rpc.call(method, msg, actor=ANON)[0] == "UNAUTHENTICATED", method
    user_methods = ["identity.GetMe", "identity.Logout", "identity.ListSessions",
                    "identity.MfaEnroll", "identity.RevokeOtherSessions"]
    for method in user_methods:
        assert rpc.call(method, ops.empty(), actor=ANON)[0] == "UNAUTHENTICATED", method
        assert rpc.call(method, ops.empty(), actor=SYSTEM)[0] == "UNAUTHENTICATED", method
    # SYSTEM may look up by email and read users and the policy.
    st, _, found = rpc.call("identity.LookupEmail", I.EmailRequest(email=email.upper()),
                            actor=SYSTEM, reply=I.User)
    assert st == "OK" and found.id == u.id
    assert rpc.call("identity.GetPolicy", ops.empty(), actor=SYSTEM)[0] == "OK"


def test_mandatory_2fa_then_login_with_codes(ops, rpc, cluster):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin, kind="extranet")
    st, msg, r = ops.login(email, pw)
    assert st == "OK", msg
    assert r.mfa_enrollment_required and not r.mfa_required
    actor = ops.actor_of(r.token)
    assert actor.mfa_pending
    # A pending session can read /me and enroll, nothing else.
    assert rpc.call("identity.GetMe", ops.empty(), actor=actor)[0] == "OK"
    assert rpc.call("identity.ListSessions", ops.empty(),
                    actor=actor)[0] == "MFA_ENROLLMENT_REQUIRED"
    st, msg, enroll = rpc.call("identity.MfaEnroll", ops.empty(), actor=actor,
                               reply=ops.id.MfaEnrollReply)
    assert st == "OK", msg
    assert enroll.otpauth_uri.startswith("otpauth://totp/extranet:")
    assert "issuer=extranet" in enroll.otpauth_uri and enroll.secret in enroll.otpauth_uri
    totp = pyotp.TOTP(enroll.secret)
    # A wrong code is refused; the right one enables 2FA and returns ten recovery codes.
    st, _, _ = rpc.call("identity.MfaConfirm", ops.id.MfaConfirmRequest(code="000000"
                        if totp.now() != "000000" else "111111"), actor=actor)
    assert st == "INVALID"
    code = totp.now()
    st, msg, conf = rpc.call("identity.MfaConfirm", ops.id.MfaConfirmRequest(code=code),
                             actor=actor, reply=ops.id.MfaConfirmReply)
    assert st == "OK", msg
    codes = list(conf.recovery_codes)
    assert len(codes) == 10 and len(set(codes)) == 10
    # The session's cache entry was invalidated: the next Authenticate says not pending.
    assert not ops.actor_of(r.token).mfa_pending
    # Secrets are stored sealed, recovery codes hashed.
    rows = cluster.psql("SELECT secret_enc FROM identity.mfa WHERE user_id = :'u'", u=u.id)
    assert enroll.secret not in rows[0][0]
    rows = cluster.psql("SELECT hash FROM identity.recovery_codes WHERE user_id = :'u'", u=u.id)
    assert len(rows) == 10 and all(c.replace("-", "") not in r[0] for c in codes for r in rows)

    # Login now needs the second factor; the mfa_token is no bearer token.
    st, msg, r2 = ops.login(email, pw)
    assert st == "OK" and r2.mfa_required and not r2.token
    assert ops.auth(r2.mfa_token)[0] == "UNAUTHENTICATED"
    mfa = lambda tok, c: rpc.call("identity.LoginMfa", ops.id.LoginMfaRequest(  # noqa: E731
        mfa_token=tok, code=c), reply=ops.id.LoginReply)
    # The code used for confirmation cannot be replayed.
    assert mfa(r2.mfa_token, code)[0] == "UNAUTHENTICATED"
    # A code of the next step (within ±1) works once.
    nxt = totp.at(time.time() + 30)
    st, msg, ok = mfa(r2.mfa_token, nxt)
    assert st == "OK", msg
    assert ok.token and not ok.mfa_enrollment_required
    assert not ops.actor_of(ok.token).mfa_pending
    # The mfa_token is used up; and the same code with a fresh token is a replay.
    assert mfa(r2.mfa_token, nxt)[0] == "UNAUTHENTICATED"
    r3 = ops.login(email, pw)[2]
    assert mfa(r3.mfa_token, nxt)[0] == "UNAUTHENTICATED"
    # A recovery code works once (typed in upper case).
    st, msg, _ = mfa(r3.mfa_token, codes[0].upper())
    assert st == "OK", msg
    r4 = ops.login(email, pw)[2]
    assert mfa(r4.mfa_token, codes[0])[0] == "UNAUTHENTICATED"
    assert mfa(r4.mfa_token, codes[1])[0] == "OK"


def test_mfa_token_five_tries(ops, rpc):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin, kind="extranet")
    actor = ops.actor_of(ops.login(email, pw)[2].token)
    enroll = rpc.call("identity.MfaEnroll", ops.empty(), actor=actor,
                      reply=ops.id.MfaEnrollReply)[2]
    totp = pyotp.TOTP(enroll.secret)
    assert rpc.call("identity.MfaConfirm", ops.id.MfaConfirmRequest(code=totp.now()),
                    actor=actor)[0] == "OK"
    tok = ops.login(email, pw)[2].mfa_token
    good = totp.at(time.time() + 30)
    bad = "%06d" % ((int(good) + 1) % 1000000)
    for _ in range(5):
        assert rpc.call("identity.LoginMfa", ops.id.LoginMfaRequest(
            mfa_token=tok, code=bad))[0] == "UNAUTHENTICATED"
    # Sixth try: even the right code is refused, the token is spent.
    assert rpc.call("identity.LoginMfa", ops.id.LoginMfaRequest(
        mfa_token=tok, code=good))[0] == "UNAUTHENTICATED"


def test_deactivation_and_expiry_refuse_authentication(ops, rpc, cluster):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    tok = ops.login(email, pw)[2].token
    ops.actor_of(tok)  # cached
    # expiry (SYSTEM) firing for a user who is not expired does nothing.
    assert rpc.call("identity.Deactivate", ops.id.UserIdRequest(id=u.id), actor=SYSTEM)[0] == "OK"
    assert ops.auth(tok)[0] == "OK"
    # expires_at in the past: authentication refuses at once (the cache entry is gone).
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    st, msg, upd = rpc.call("identity.UpdateUser", ops.id.UpdateUserRequest(
        id=u.id, expires_at=past), actor=admin, reply=ops.id.User)
    assert st == "OK", msg
    assert upd.expires_at == past
    assert cluster.redis_command("EXISTS", "sess:" + sha(tok)) == 0
    assert ops.auth(tok)[0] == "UNAUTHENTICATED"
    assert ops.login(email, pw)[0] == "UNAUTHENTICATED"
    # Now expiry firing deactivates and revokes.
    assert rpc.call("identity.Deactivate", ops.id.UserIdRequest(id=u.id), actor=SYSTEM)[0] == "OK"
    got = rpc.call("identity.GetUser", ops.id.UserIdRequest(id=u.id), actor=admin,
                   reply=ops.id.User)[2]
    assert got.status == "deactivated"
    assert cluster.psql("SELECT count(*) FROM identity.sessions WHERE user_id = :'u'",
                        u=u.id) == [["0"]]
    # Clear expiry + reactivate: the user can log in again.
    assert rpc.call("identity.UpdateUser", ops.id.UpdateUserRequest(
        id=u.id, clear_expires_at=True, status="active"), actor=admin)[0] == "OK"
    assert ops.login(email, pw)[0] == "OK"
    # Admin deactivation revokes an open session before answering.
    tok = ops.login(email, pw)[2].token
    ops.actor_of(tok)
    assert rpc.call("identity.Deactivate", ops.id.UserIdRequest(id=u.id), actor=admin)[0] == "OK"
    assert cluster.redis_command("EXISTS", "sess:" + sha(tok)) == 0
    assert ops.auth(tok)[0] == "UNAUTHENTICATED"
    # An admin cannot deactivate themselves.
    assert rpc.call("identity.Deactivate", ops.id.UserIdRequest(id=admin.user_id),
                    actor=admin)[0] == "CONFLICT"


def test_transfer_to_intranet(ops, rpc):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin, kind="extranet")
    tok = ops.login(email, pw)[2].token
    ops.actor_of(tok)
    st, msg, t = rpc.call("identity.TransferToIntranet", ops.id.UserIdRequest(id=u.id),
                          actor=admin, reply=ops.id.User)
    assert st == "OK", msg
    assert t.kind == "employee"
    assert ops.auth(tok)[0] == "UNAUTHENTICATED"   # sessions revoked so the new kind applies
    r = ops.login(email, pw)[2]
    assert not r.mfa_enrollment_required and ops.actor_of(r.token).kind == "EMPLOYEE"
    assert rpc.call("identity.TransferToIntranet", ops.id.UserIdRequest(id=u.id),
                    actor=admin)[0] == "CONFLICT"


def test_malformed_inputs(ops, rpc):
    _, admin = ops.admin()
    I = ops.id
    cases = [
        ("identity.Login", I.LoginRequest(email="not-an-email", password="x"), ANON),
        ("identity.Login", I.LoginRequest(email="a@b.test", password=""), ANON),
        ("identity.Login", I.LoginRequest(email="a@b.test", password="x" * 2000), ANON),
        ("identity.CreateUser", I.CreateUserRequest(email="a@b.test", password="short"), admin),
        ("identity.CreateUser", I.CreateUserRequest(email="a\r\n@b.test", password="x" * 9),
         admin),
        ("identity.CreateUser", I.CreateUserRequest(email="a@b.test", password="x" * 9,
                                                    kind="root"), admin),
        ("identity.CreateUser", I.CreateUserRequest(email="a@b.test", password="x" * 9,
                                                    display_name="n" * 300), admin),
        ("identity.CreateUser", I.CreateUserRequest(email="a@b.test", password="x" * 9,
                                                    expires_at="tomorrow"), admin),
        ("identity.GetUser", I.UserIdRequest(id="123"), admin),
        ("identity.UpdateUser", I.UpdateUserRequest(id=admin.user_id, status="gone"), admin),
        ("identity.ListUsers", I.ListUsersRequest(limit=1000), admin),
        ("identity.ListUsers", I.ListUsersRequest(cursor="zz"), admin),
        ("identity.SendMail", I.SendMailRequest(to="a@b.test", subject="x\r\nBcc: c@d.test",
                                                body="b"), SYSTEM),
        ("identity.SendMail", I.SendMailRequest(to="<a@b.test>", subject="x", body="b"), SYSTEM),
    ]
    for method, msg, actor in cases:
        st, text, _ = rpc.call(method, msg, actor=actor)
        assert st == "INVALID", (method, msg, st, text)
        assert text
    st, _, _ = rpc.call("identity.GetUser", I.UserIdRequest(id=str(uuid.uuid4())), actor=admin)
    assert st == "NOT_FOUND"


def test_list_users_paging(ops, rpc):
    _, admin = ops.admin()
    for _ in range(3):
        ops.create_user(admin)
    seen, cursor = [], ""
    while True:
        st, msg, page = rpc.call("identity.ListUsers", ops.id.ListUsersRequest(
            limit=2, cursor=cursor), actor=admin, reply=ops.id.UserList)
        assert st == "OK", msg
        assert len(page.users) <= 2
        seen += [u.email for u in page.users]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) >= 4 and seen == sorted(seen)
    assert ADMIN_EMAIL in seen


def test_send_mail_and_notices(ops, rpc, mail):
    st, msg, _ = rpc.call("identity.SendMail", ops.id.SendMailRequest(
        to="friend@example.test", subject="Invitation to Zoë's group", body="Hello\nline 2\n"),
        actor=SYSTEM)
    assert st == "OK", msg
    m = mail.wait(to="friend@example.test", subject="Invitation")
    assert m["Subject"] == "Invitation to Zoë's group"
    assert m["Message-ID"] and m["Date"] and "extranet@localhost" in m["From"]
    assert "line 2" in mail.text(m)
    # Password change: notice mail, other sessions revoked, old password refused.
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    a1 = ops.actor_of(ops.login(email, pw)[2].token)
    t2 = ops.login(email, pw)[2].token
    ops.actor_of(t2)
    assert rpc.call("identity.ChangePassword", ops.id.ChangePasswordRequest(
        old_password="wrong", new_password="New-Passw0rd-x"), actor=a1)[0] == "INVALID"
    st, msg, _ = rpc.call("identity.ChangePassword", ops.id.ChangePasswordRequest(
        old_password=pw, new_password="New-Passw0rd-x"), actor=a1)
    assert st == "OK", msg
    assert ops.auth(t2)[0] == "UNAUTHENTICATED"
    assert rpc.call("identity.GetMe", ops.empty(), actor=a1)[0] == "OK"
    assert ops.login(email, pw)[0] == "UNAUTHENTICATED"
    assert ops.login(email, "New-Passw0rd-x")[0] == "OK"
    m = mail.wait(to=email, subject="password was changed")
    assert "New-Passw0rd-x" not in mail.text(m)


def test_sessions_list_and_revoke(ops, rpc):
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    a1 = ops.actor_of(ops.login(email, pw)[2].token)
    t2 = ops.login(email, pw)[2].token
    a2 = ops.actor_of(t2)
    st, msg, lst = rpc.call("identity.ListSessions", ops.empty(), actor=a1,
                            reply=ops.id.SessionList)
    assert st == "OK", msg
    assert {s.id for s in lst.sessions} == {a1.session_id, a2.session_id}
    assert [s.current for s in lst.sessions if s.id == a1.session_id] == [True]
    # Someone else's session id answers like a missing one.
    assert rpc.call("identity.RevokeSession", ops.id.SessionIdRequest(id=admin.session_id),
                    actor=a1)[0] == "NOT_FOUND"
    assert rpc.call("identity.RevokeSession", ops.id.SessionIdRequest(id=a2.session_id),
                    actor=a1)[0] == "OK"
    assert ops.auth(t2)[0] == "UNAUTHENTICATED"


def test_redis_stalled_revocation_is_queued_and_retried(ops, rpc, cluster):
    """DESIGN.md §5: Redis unreachable for the delete -> committed, queued, UNAVAILABLE; the
    tick finishes the delete once Redis is back."""
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin)
    tok = ops.login(email, pw)[2].token
    actor = ops.actor_of(tok)
    redis = cluster.procs["redis"]
    redis.popen.send_signal(signal.SIGSTOP)
    try:
        st, msg, _ = rpc.call("identity.Logout", ops.empty(), actor=actor, timeout=15)
        assert st == "UNAVAILABLE", (st, msg)
        assert cluster.psql("SELECT count(*) FROM identity.pending_invalidations "
                            "WHERE token_hash = :'h'", h=sha(tok)) == [["1"]]
        # PostgreSQL already says no, whatever the cache holds.
        assert ops.auth(tok)[0] == "UNAUTHENTICATED"
    finally:
        redis.popen.send_signal(signal.SIGCONT)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if cluster.psql("SELECT count(*) FROM identity.pending_invalidations WHERE "
                        "token_hash = :'h'", h=sha(tok)) == [["0"]]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("pending invalidation not retried")
    assert cluster.redis_command("EXISTS", "sess:" + sha(tok)) == 0


def test_concurrent_replay_of_one_code_wins_once(ops, idpb, cluster):
    """Eight sign-ins race with the same TOTP code, then with the same recovery code, each on
    its own mfa_token and connection: exactly one of each succeeds (conditional UPDATEs)."""
    import threading
    _, admin = ops.admin()
    u, email, pw = ops.create_user(admin, kind="extranet")
    actor = ops.actor_of(ops.login(email, pw)[2].token)
    enroll = ops.rpc.call("identity.MfaEnroll", ops.empty(), actor=actor,
                          reply=ops.id.MfaEnrollReply)[2]
    totp = pyotp.TOTP(enroll.secret)
    codes = list(ops.rpc.call("identity.MfaConfirm", ops.id.MfaConfirmRequest(code=totp.now()),
                              actor=actor, reply=ops.id.MfaConfirmReply)[2].recovery_codes)

    def race(code):
        tokens = [ops.login(email, pw)[2].mfa_token for _ in range(8)]
        results, barrier = [], threading.Barrier(len(tokens))

        def one(tok):
            r = Rpc(idpb, cluster.urls["broker"])
            try:
                barrier.wait()
                results.append(r.call("identity.LoginMfa", ops.id.LoginMfaRequest(
                    mfa_token=tok, code=code))[0])
            finally:
                r.close()
        threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        return results

    # The losers are refused; after six failures the account's backoff answers some of them.
    res = race(totp.at(time.time() + 30))
    assert len(res) == 8 and res.count("OK") == 1, res
    assert set(res) <= {"OK", "UNAUTHENTICATED", "RATE_LIMITED"}, res
    # Seven failed sign-ins started the account's backoff; this test is not about that.
    cluster.psql("DELETE FROM identity.login_failures")
    res = race(codes[0])
    assert len(res) == 8 and res.count("OK") == 1, res
    assert set(res) <= {"OK", "UNAUTHENTICATED", "RATE_LIMITED"}, res
