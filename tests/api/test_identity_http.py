"""Black-box tests of identity over HTTP through the real gateway: login/logout, wrong password
vs unknown user, TOTP enrolment and login with oathtool/pyotp codes, replay refusal, recovery
codes, mandatory 2FA (R10), deactivation on the next request (R9), transfer (R12), admin-only
endpoints, policy, own sessions, password change, security notice mail, malformed inputs.

This module runs its own cluster (same tests/lib/cluster.py) with the login rate limit raised:
it logs in far more often than the default 30 attempts per ip per 5 minutes allow, and the
shared session cluster's limiter must stay untouched for the tests that exercise it."""

import email
import email.policy
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyotp
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402

ADMIN_EMAIL = "root-admin@identity.test"
ADMIN_PASSWORD = "Identity-Admin-Passw0rd"
PASSWORD = "User-Passw0rd-123"


@pytest.fixture(scope="module")
def idc():
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_LOGIN_RATE_IP": "100000",
                                       "EXTRANET_LOGIN_RATE_ACCOUNT": "100000"})
    if not c.gateway_bin() or not c.broker_bin() or "identity" not in c.service_bins():
        pytest.skip("gateway, broker or identity not built in %s" % c.build)
    c.start()
    yield c
    keep = bool(os.environ.get("EXTRANET_KEEP_CLUSTER"))
    c.stop(remove=not keep)


class Api:
    def __init__(self, base):
        self.base = base + "/api/v1"
        self.s = requests.Session()

    def call(self, method, path, token=None, body=None, params=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return self.s.request(method, self.base + path, json=body, params=params,
                              headers=headers, timeout=20)

    def login(self, email_, password):
        return self.call("POST", "/auth/login", body={"email": email_, "password": password})

    def token(self, email_, password=PASSWORD):
        r = self.login(email_, password)
        assert r.status_code == 200, r.text
        assert r.json()["token"], r.text
        return r.json()["token"]


@pytest.fixture(scope="module")
def api(idc):
    return Api(idc.base_url)


@pytest.fixture(scope="module")
def admin(api):
    return api.token(ADMIN_EMAIL, ADMIN_PASSWORD)


def new_user(api, admin, kind="employee", **extra):
    em = "%s-%s@Example.test" % (kind, uuid.uuid4().hex[:10])
    body = {"email": em, "password": PASSWORD, "kind": kind, "display_name": "U " + kind}
    body.update(extra)
    r = api.call("POST", "/admin/users", admin, body)
    assert r.status_code == 201, r.text
    u = r.json()
    assert u["email"] == em.lower() and u["kind"] == kind and u["status"] == "active"
    return u


def error_of(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert e["code"] == code, e
    assert e["message"] and e["request_id"] == r.headers["X-Request-Id"]
    return e


def oathtool(secret, when=None):
    argv = ["oathtool", "--totp", "-b"]
    if when is not None:
        argv += ["--now", "@%d" % int(when)]
    return subprocess.run(argv + [secret], check=True, capture_output=True,
                          text=True).stdout.strip()


def wait_mail(idc, to, subject, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in sorted(Path(idc.mail_dir).glob("*.eml")):
            m = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            rcpt = (m.get("X-Sink-Rcpt-To", "") + "," + m.get("To", "")).lower()
            if to.lower() in rcpt and subject in (m.get("Subject") or ""):
                return m
        time.sleep(0.1)
    pytest.fail("no mail to %s with subject %r" % (to, subject))


def enroll(api, token):
    """Enrolls and confirms 2FA for the session; returns (secret, recovery codes, step time)."""
    r = api.call("POST", "/me/mfa/enroll", token)
    assert r.status_code == 200, r.text
    secret, uri = r.json()["secret"], r.json()["otpauth_uri"]
    assert uri.startswith("otpauth://totp/extranet:") and "secret=" + secret in uri
    assert "issuer=extranet" in uri
    now = time.time()
    r = api.call("POST", "/me/mfa/confirm", token, {"code": oathtool(secret, now)})
    assert r.status_code == 200, r.text
    codes = r.json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes, now


# --------------------------------------------------------------------------------------------

def test_login_me_logout(api, admin):
    r = api.login(ADMIN_EMAIL.upper(), ADMIN_PASSWORD)   # email is case-insensitive
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["kind"] == "admin" and body["user"]["email"] == ADMIN_EMAIL
    assert not body["mfa_required"] and not body["mfa_enrollment_required"]
    tok = body["token"]
    me = api.call("GET", "/me", tok)
    assert me.status_code == 200 and me.json()["email"] == ADMIN_EMAIL
    assert "password" not in me.text and "hash" not in me.text
    assert api.call("POST", "/auth/logout", tok).status_code == 204
    error_of(api.call("GET", "/me", tok), 401, "unauthenticated")
    # The admin fixture's own session is untouched.
    assert api.call("GET", "/me", admin).status_code == 200


def test_wrong_password_and_unknown_user_look_the_same(api, admin):
    u = new_user(api, admin)
    wrong = api.login(u["email"], "Wrong-Passw0rd")
    unknown = api.login("nobody-%s@example.test" % uuid.uuid4().hex[:8], "Wrong-Passw0rd")
    e1, e2 = error_of(wrong, 401, "unauthenticated"), error_of(unknown, 401, "unauthenticated")
    assert e1["message"] == e2["message"]
    # Timing: an unknown email costs a password verification too (dummy hash).
    def timed(em):
        t = time.monotonic()
        api.login(em, "Wrong-Passw0rd")
        return time.monotonic() - t
    known = statistics.median(timed(u["email"]) for _ in range(5))
    unk = statistics.median(timed("ghost-%s@example.test" % uuid.uuid4().hex[:6])
                            for _ in range(5))
    assert unk > 0.5 * known, (unk, known)


def test_r10_extranet_without_2fa_can_only_enroll(api, admin):
    u = new_user(api, admin, kind="extranet")
    r = api.login(u["email"], PASSWORD)
    assert r.status_code == 200, r.text
    assert r.json()["mfa_enrollment_required"] and r.json()["token"]
    tok = r.json()["token"]
    assert api.call("GET", "/me", tok).status_code == 200
    error_of(api.call("GET", "/me/sessions", tok), 403, "mfa_enrollment_required")
    error_of(api.call("POST", "/me/password", tok, {"old_password": PASSWORD,
                                                    "new_password": "x" * 12}),
             403, "mfa_enrollment_required")
    secret, codes, _ = enroll(api, tok)
    # The same session may now do everything its kind allows, at once.
    assert api.call("GET", "/me/sessions", tok).status_code == 200
    assert api.call("GET", "/me", tok).json()["mfa_enabled"] is True
    # Enrolling again is refused while 2FA is on.
    error_of(api.call("POST", "/me/mfa/enroll", tok), 409, "conflict")


def test_r10_confirming_2fa_signs_out_the_other_sessions(api, admin):
    """mfa_pending belongs to the user: confirming 2FA in one session used to lift R10 for
    every other password-only session of the user as well (e.g. someone who had only the
    password). They are revoked, cache entries included; the confirming session goes on."""
    u = new_user(api, admin, kind="extranet")
    intruder, owner = api.token(u["email"]), api.token(u["email"])
    for tok in (intruder, owner):   # both cached in Redis as mfa_pending sessions
        assert api.call("GET", "/me", tok).status_code == 200
    error_of(api.call("GET", "/me/sessions", intruder), 403, "mfa_enrollment_required")
    enroll(api, owner)
    error_of(api.call("GET", "/me/sessions", intruder), 401, "unauthenticated")
    error_of(api.call("GET", "/me", intruder), 401, "unauthenticated")
    r = api.call("GET", "/me/sessions", owner)
    assert r.status_code == 200, r.text
    assert [s["current"] for s in r.json()["sessions"]] == [True]
    assert api.call("GET", "/me", owner).json()["mfa_enabled"] is True


def test_2fa_login_with_oathtool_codes_replay_and_recovery(api, admin, idc):
    u = new_user(api, admin, kind="extranet")
    tok = api.token(u["email"])
    secret, codes, confirmed_at = enroll(api, tok)
    mail = wait_mail(idc, u["email"], "Two-factor authentication enabled")
    assert secret not in mail.get_body(preferencelist=("plain",)).get_content()
    assert api.call("POST", "/auth/logout", tok).status_code == 204

    r = api.login(u["email"], PASSWORD)
    assert r.status_code == 200 and r.json()["mfa_required"] and not r.json()["token"]
    mfa_token = r.json()["mfa_token"]
    # The mfa_token is never a bearer token.
    error_of(api.call("GET", "/me", mfa_token), 401, "unauthenticated")
    # The code used to confirm is spent (same time step): replay refused.
    used = oathtool(secret, confirmed_at)
    error_of(api.call("POST", "/auth/mfa", body={"mfa_token": mfa_token, "code": used}),
             401, "unauthenticated")
    # The next step's code (±1 window) works, once.
    later = int(time.time()) + 30
    nxt = pyotp.TOTP(secret).at(later)
    assert nxt == oathtool(secret, later)   # both tools agree on the code of a given time
    r = api.call("POST", "/auth/mfa", body={"mfa_token": mfa_token, "code": nxt})
    assert r.status_code == 200, r.text
    t2 = r.json()["token"]
    assert api.call("GET", "/me/sessions", t2).status_code == 200
    mfa2 = api.login(u["email"], PASSWORD).json()["mfa_token"]
    error_of(api.call("POST", "/auth/mfa", body={"mfa_token": mfa2, "code": nxt}),
             401, "unauthenticated")
    # A recovery code works once.
    r = api.call("POST", "/auth/mfa", body={"mfa_token": mfa2, "code": codes[3]})
    assert r.status_code == 200, r.text
    mfa3 = api.login(u["email"], PASSWORD).json()["mfa_token"]
    error_of(api.call("POST", "/auth/mfa", body={"mfa_token": mfa3, "code": codes[3]}),
             401, "unauthenticated")
    assert api.call("POST", "/auth/mfa",
                    body={"mfa_token": mfa3, "code": codes[4]}).status_code == 200


def test_oathtool_code_accepted_for_login(api, admin):
    """A code straight from `oathtool --totp -b <secret>` at login (no replay: enrolment used
    the previous step, so wait for a fresh one if needed)."""
    u = new_user(api, admin)
    tok = api.token(u["email"])
    secret, _, confirmed_at = enroll(api, tok)
    step = int(confirmed_at // 30)
    while int(time.time() // 30) == step:
        time.sleep(0.5)
    # The wait may outlast the gateway's idle timeout (EXTRANET_HTTP_TIMEOUT_S, 15 s): drop the
    # pooled keep-alive connection rather than race the server closing it.
    api.s.close()
    mfa = api.login(u["email"], PASSWORD).json()["mfa_token"]
    r = api.call("POST", "/auth/mfa", body={"mfa_token": mfa, "code": oathtool(secret)})
    assert r.status_code == 200, r.text


def test_r9_deactivation_kills_open_session_on_next_request(api, admin):
    u = new_user(api, admin)
    tok = api.token(u["email"])
    assert api.call("GET", "/me", tok).status_code == 200   # now cached in Redis
    r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"status": "deactivated"})
    assert r.status_code == 200 and r.json()["status"] == "deactivated", r.text
    error_of(api.call("GET", "/me", tok), 401, "unauthenticated")
    error_of(api.login(u["email"], PASSWORD), 401, "unauthenticated")
    r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"status": "active"})
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert api.login(u["email"], PASSWORD).status_code == 200


def test_r9_expires_at_in_the_past_refuses_at_once(api, admin):
    u = new_user(api, admin)
    tok = api.token(u["email"])
    assert api.call("GET", "/me", tok).status_code == 200
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"expires_at": past})
    assert r.status_code == 200 and r.json()["expires_at"] == past, r.text
    error_of(api.call("GET", "/me", tok), 401, "unauthenticated")
    error_of(api.login(u["email"], PASSWORD), 401, "unauthenticated")
    # expiry may have fired meanwhile and deactivated the user: clear and reactivate.
    r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"clear_expires_at": True,
                                                             "status": "active"})
    assert r.status_code == 200 and r.json()["expires_at"] == "", r.text
    assert api.login(u["email"], PASSWORD).status_code == 200


def test_r12_transfer_to_intranet(api, admin):
    u = new_user(api, admin, kind="extranet")
    tok = api.token(u["email"])
    r = api.call("POST", "/admin/users/%s/transfer-to-intranet" % u["id"], admin)
    assert r.status_code == 200 and r.json()["kind"] == "employee", r.text
    error_of(api.call("GET", "/me", tok), 401, "unauthenticated")  # re-login for the new kind
    r = api.login(u["email"], PASSWORD)
    assert r.status_code == 200 and not r.json()["mfa_enrollment_required"]
    assert r.json()["user"]["kind"] == "employee"
    error_of(api.call("POST", "/admin/users/%s/transfer-to-intranet" % u["id"], admin),
             409, "conflict")


def test_admin_reset_mfa(api, admin):
    u = new_user(api, admin, kind="extranet")
    tok = api.token(u["email"])
    enroll(api, tok)
    r = api.call("POST", "/admin/users/%s/reset-mfa" % u["id"], admin)
    assert r.status_code == 200 and r.json()["mfa_enabled"] is False, r.text
    error_of(api.call("GET", "/me", tok), 401, "unauthenticated")
    r = api.login(u["email"], PASSWORD)
    assert r.status_code == 200 and r.json()["mfa_enrollment_required"]


def test_admin_endpoints_refuse_non_admins(api, admin):
    emp = api.token(new_user(api, admin)["email"])
    other = new_user(api, admin)
    for method, path, body in [
            ("GET", "/admin/users", None),
            ("POST", "/admin/users", {"email": "z@z.test", "password": PASSWORD}),
            ("GET", "/admin/users/" + other["id"], None),
            ("PATCH", "/admin/users/" + other["id"], {"status": "deactivated"}),
            ("POST", "/admin/users/%s/transfer-to-intranet" % other["id"], None),
            ("POST", "/admin/users/%s/reset-mfa" % other["id"], None),
            ("GET", "/admin/policy", None),
            ("PUT", "/admin/policy", {"extranet_mfa_required": False})]:
        error_of(api.call(method, path, emp, body), 403, "forbidden")
        error_of(api.call(method, path, None, body), 401, "unauthenticated")
    # Nothing changed.
    r = api.call("GET", "/admin/users/" + other["id"], admin)
    assert r.json()["status"] == "active"
    assert api.call("GET", "/admin/policy", admin).json()["extranet_mfa_required"] is True


def test_admin_list_users_paging_and_filters(api, admin):
    made = {new_user(api, admin)["email"] for _ in range(3)}
    seen, cursor = [], ""
    for _ in range(100):
        r = api.call("GET", "/admin/users", admin, params={"limit": 2, "cursor": cursor})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["users"]) <= 2
        seen += [u["email"] for u in page["users"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert made <= set(seen) and seen == sorted(seen) and len(seen) == len(set(seen))
    r = api.call("GET", "/admin/users", admin, params={"kind": "admin"})
    assert {u["kind"] for u in r.json()["users"]} == {"admin"}


def test_policy_extranet_mfa_optional_and_back(api, admin):
    r = api.call("PUT", "/admin/policy", admin, {"extranet_mfa_required": False})
    assert r.status_code == 200 and r.json()["extranet_mfa_required"] is False, r.text
    try:
        u = new_user(api, admin, kind="extranet")
        r = api.login(u["email"], PASSWORD)
        assert r.status_code == 200 and not r.json()["mfa_enrollment_required"]
        tok = r.json()["token"]
        assert api.call("GET", "/me/sessions", tok).status_code == 200   # cached: not pending
    finally:
        r = api.call("PUT", "/admin/policy", admin, {"extranet_mfa_required": True})
        assert r.status_code == 200 and r.json()["extranet_mfa_required"] is True
    # Turning the policy on applies to open sessions on their next request (R10).
    error_of(api.call("GET", "/me/sessions", tok), 403, "mfa_enrollment_required")
    assert api.call("GET", "/me", tok).status_code == 200


def test_own_sessions_and_password_change(api, admin, idc):
    u = new_user(api, admin)
    t1, t2, t3 = (api.token(u["email"]) for _ in range(3))
    r = api.call("GET", "/me/sessions", t1)
    assert r.status_code == 200
    sessions = r.json()["sessions"]
    assert len(sessions) == 3 and sum(s["current"] for s in sessions) == 1
    other = [s for s in sessions if not s["current"]][0]
    assert api.call("DELETE", "/me/sessions/" + other["id"], t1).status_code == 204
    error_of(api.call("DELETE", "/me/sessions/" + other["id"], t1), 404, "not_found")
    # A path id that is not a uuid cannot exist: the gateway answers like a missing one (R1).
    error_of(api.call("DELETE", "/me/sessions/not-a-uuid", t1), 404, "not_found")
    alive = [t for t in (t2, t3) if api.call("GET", "/me", t).status_code == 200]
    assert len(alive) == 1
    # Password change: needs the old one, signs out the other sessions, sends a notice.
    error_of(api.call("POST", "/me/password", t1, {"old_password": "nope-nope",
                                                   "new_password": "Another-Passw0rd"}),
             400, "invalid")
    error_of(api.call("POST", "/me/password", t1, {"old_password": PASSWORD,
                                                   "new_password": "short"}), 400, "invalid")
    r = api.call("POST", "/me/password", t1, {"old_password": PASSWORD,
                                              "new_password": "Another-Passw0rd"})
    assert r.status_code == 204, r.text
    error_of(api.call("GET", "/me", alive[0]), 401, "unauthenticated")
    assert api.call("GET", "/me", t1).status_code == 200
    error_of(api.login(u["email"], PASSWORD), 401, "unauthenticated")
    assert api.login(u["email"], "Another-Passw0rd").status_code == 200
    m = wait_mail(idc, u["email"], "password was changed")
    assert "Another-Passw0rd" not in m.get_body(preferencelist=("plain",)).get_content()


def test_wrong_old_passwords_back_off_like_sign_ins(api, admin):
    """A stolen session must not make POST /me/password an unlimited password oracle: wrong
    old passwords count in the account's sign-in backoff (five free, then 1 s, 2 s, ...), and
    the change that succeeds resets it."""
    u = new_user(api, admin)
    tok = api.token(u["email"])
    body = {"new_password": "Another-Passw0rd"}
    for i in range(10):
        r = api.call("POST", "/me/password", tok, dict(body, old_password="Wrong-%d" % i))
        if r.status_code == 429:
            break
        error_of(r, 400, "invalid")
    error_of(r, 429, "rate_limited")
    assert i == 6, i
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    # the right one waits too, and so do sign-ins of the account
    r = api.call("POST", "/me/password", tok, dict(body, old_password=PASSWORD))
    error_of(r, 429, "rate_limited")
    error_of(api.login(u["email"], PASSWORD), 429, "rate_limited")
    time.sleep(int(r.headers["Retry-After"]) + 0.2)
    r = api.call("POST", "/me/password", tok, dict(body, old_password=PASSWORD))
    assert r.status_code == 204, r.text
    for _ in range(5):   # reset: five failures are free again
        error_of(api.login(u["email"], "Wrong-Passw0rd"), 401, "unauthenticated")
    assert api.login(u["email"], "Another-Passw0rd").status_code == 200


def test_rehash_on_login_does_not_undo_a_concurrent_password_change(api, admin, idc):
    """A sign-in with a hash of other parameters stores a new hash of the password it verified.
    Written unconditionally, it undid a password change that committed meanwhile (the old
    password worked again). Slow stored hash (argon2id t=24, made with libsodium here): the
    change verifies it and commits while the sign-in, started 0.3 s later, still verifies."""
    import ctypes
    import ctypes.util
    import threading
    sodium = ctypes.CDLL(ctypes.util.find_library("sodium") or "libsodium.so.23")
    assert sodium.sodium_init() >= 0
    pw = PASSWORD.encode()
    slow = ctypes.create_string_buffer(128)
    assert sodium.crypto_pwhash_str(slow, pw, ctypes.c_ulonglong(len(pw)), ctypes.c_ulonglong(24),
                                    ctypes.c_size_t(64 << 20)) == 0
    u = new_user(api, admin)
    tok = api.token(u["email"])
    idc.psql("UPDATE identity.users SET password_hash = :'h' WHERE id = :'id'",
             h=slow.value.decode(), id=u["id"])
    out = {}

    def change():
        out["change"] = Api(idc.base_url).call("POST", "/me/password", tok,
                                               {"old_password": PASSWORD,
                                                "new_password": "Another-Passw0rd"})

    def login():
        time.sleep(0.3)
        out["login"] = Api(idc.base_url).login(u["email"], PASSWORD)
    threads = [threading.Thread(target=change), threading.Thread(target=login)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out["change"].status_code == 204, out["change"].text
    assert out["login"].status_code in (200, 401), out["login"].text  # 401: came too late
    assert api.login(u["email"], "Another-Passw0rd").status_code == 200
    error_of(api.login(u["email"], PASSWORD), 401, "unauthenticated")


def test_invalidation_already_pending_still_clears_the_cache_at_once(api, admin, idc):
    """A session whose cache entry was already queued in pending_invalidations (a Redis
    failure earlier; the tick not there yet) used to be left out of the next invalidation's
    immediate delete (INSERT .. ON CONFLICT DO NOTHING RETURNING returns new rows only)."""
    import hashlib
    u = new_user(api, admin)
    tok = api.token(u["email"])
    h = hashlib.sha256(tok.encode()).hexdigest()
    assert api.call("GET", "/me", tok).status_code == 200
    assert idc.redis_command("EXISTS", "sess:" + h) == 1
    # The tick clears 100 rows a second, oldest first: 1,000 older rows keep ours queued.
    idc.psql("INSERT INTO identity.pending_invalidations (token_hash, created_at) "
             "SELECT 'gwfix-filler-' || g, now() - interval '1 hour' "
             "FROM generate_series(1, 1000) g; "
             "INSERT INTO identity.pending_invalidations (token_hash) VALUES (:'h')", h=h)
    try:
        past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
        r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"expires_at": past})
        assert r.status_code == 200, r.text
        assert idc.redis_command("EXISTS", "sess:" + h) == 0
        error_of(api.call("GET", "/me", tok), 401, "unauthenticated")
    finally:
        idc.psql("DELETE FROM identity.pending_invalidations "
                 "WHERE token_hash LIKE 'gwfix-filler-%'")


@pytest.mark.parametrize("expires_at", ["2026-02-31T00:00:00Z", "2027-02-29T12:00:00Z",
                                        "2030-01-01T00:00:00+23:59", "0000-01-01T00:00:00Z"])
def test_impossible_dates_are_400_not_500(api, admin, expires_at):
    u = new_user(api, admin)
    error_of(api.call("PATCH", "/admin/users/" + u["id"], admin, {"expires_at": expires_at}),
             400, "invalid")
    error_of(api.call("POST", "/admin/users", admin,
                      {"email": "d-%s@example.test" % uuid.uuid4().hex[:8],
                       "password": PASSWORD, "expires_at": expires_at}), 400, "invalid")


@pytest.mark.parametrize("body", [
    {"email": "not-an-email", "password": PASSWORD},
    {"email": "a@b.test", "password": ""},
    {"email": "", "password": PASSWORD},
    {"email": "a@b.test", "password": "short"},
    {"email": "a" * 250 + "@b.test", "password": PASSWORD},
    {"email": "a@b.test", "password": PASSWORD, "display_name": "x" * 201},
    {"email": "a@b.test", "password": PASSWORD, "display_name": "bad\nname"},
    {"email": "a@b.test", "password": PASSWORD, "kind": "root"},
    {"email": "a@b.test", "password": PASSWORD, "expires_at": "next tuesday"},
])
def test_admin_create_user_malformed_400(api, admin, body):
    error_of(api.call("POST", "/admin/users", admin, body), 400, "invalid")


def test_malformed_ids_and_unknown_ids(api, admin):
    error_of(api.call("GET", "/admin/users/not-a-uuid", admin), 404, "not_found")
    error_of(api.call("GET", "/admin/users/" + str(uuid.uuid4()), admin), 404, "not_found")
    error_of(api.call("PATCH", "/admin/users/" + str(uuid.uuid4()), admin,
                      {"display_name": "x"}), 404, "not_found")
    u = new_user(api, admin)
    error_of(api.call("PATCH", "/admin/users/" + u["id"], admin, {"status": "gone"}),
             400, "invalid")
    error_of(api.call("PATCH", "/admin/users/" + u["id"], admin, {"expires_at": "2026-13-01"}),
             400, "invalid")
    error_of(api.call("GET", "/admin/users", admin, params={"limit": 5000}), 400, "invalid")
    error_of(api.call("POST", "/auth/login", None, {"email": "x@y.test", "password": ""}),
             400, "invalid")
    error_of(api.call("POST", "/auth/mfa", None, {"mfa_token": "nope", "code": "123456"}),
             401, "unauthenticated")
    dup = new_user(api, admin)
    error_of(api.call("POST", "/admin/users", admin, {"email": dup["email"].upper(),
                                                      "password": PASSWORD}), 409, "conflict")


def test_failed_logins_back_off_exponentially_known_or_not(api, admin):
    """DESIGN.md §12: failed sign-ins slow down per account (identity's own backoff, on top of
    the gateway's rate limit): the first five are free, then 1 s, 2 s, 4 s ... The same for an
    email nobody has, so the backoff is no account oracle; it never locks out for good."""
    u = new_user(api, admin)
    ghost = "ghost-%s@example.test" % uuid.uuid4().hex[:8]
    for em in (u["email"], ghost):
        for _ in range(6):
            error_of(api.login(em, "Wrong-Passw0rd"), 401, "unauthenticated")
        r = api.login(em, PASSWORD)
        error_of(r, 429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 2
    time.sleep(int(r.headers["Retry-After"]) + 0.2)
    assert api.login(u["email"], PASSWORD).status_code == 200
    # Success resets the count: five failures are free again.
    for _ in range(5):
        error_of(api.login(u["email"], "Wrong-Passw0rd"), 401, "unauthenticated")
    assert api.login(u["email"], PASSWORD).status_code == 200


def test_expires_at_normalized_to_utc_seconds(api, admin):
    u = new_user(api, admin, expires_at="2030-01-01T00:00:00.750+01:00")
    assert u["expires_at"] == "2029-12-31T23:00:00Z"
    r = api.call("PATCH", "/admin/users/" + u["id"], admin,
                 {"expires_at": "2031-06-01T12:30:15.999Z"})
    assert r.status_code == 200 and r.json()["expires_at"] == "2031-06-01T12:30:15Z", r.text
    error_of(api.call("PATCH", "/admin/users/" + u["id"], admin,
                      {"expires_at": "2031-06-01T12:30:15Z", "clear_expires_at": True}),
             400, "invalid")
    r = api.call("PATCH", "/admin/users/" + u["id"], admin, {"clear_expires_at": True})
    assert r.status_code == 200 and r.json()["expires_at"] == ""
    assert api.login(u["email"], PASSWORD).status_code == 200
