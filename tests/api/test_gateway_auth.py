"""Black-box tests of the gateway's authentication, 2FA gate and login rate limit, against the
real identity service of the session cluster: Bearer tokens looked up in Redis (sess:{sha256})
with identity.Authenticate on a miss, 401 for anything forged, validation answered only after
authentication, 403 mfa_enrollment_required for un-enrolled extranet sessions (R10), R1-uniform
404s, and the per-account / per-address login limits (Redis, and the stricter in-process
fallback when Redis is down)."""

import hashlib
import importlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests

from test_gateway_http import OwnGateway, assert_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def identity(require_service):
    require_service("identity")


@pytest.fixture(scope="module")
def admin_token(identity, api_url, admin_credentials):
    r = requests.post(api_url + "/auth/login", json=admin_credentials, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"] and body["user"]["kind"] == "admin"
    return body["token"]


def bearer(token):
    return {"Authorization": "Bearer " + token}


def sess_key(token):
    return "sess:" + hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ a system-actor client

@pytest.fixture(scope="module")
def pb():
    """envelope_pb2 + identity_pb2 generated into a temp dir (nothing generated is committed)."""
    out = tempfile.mkdtemp(prefix="gw-auth-pb-")
    subprocess.run(["protoc", "--proto_path", str(ROOT / "proto"), "--python_out", out,
                    str(ROOT / "proto" / "envelope.proto"), str(ROOT / "proto" / "identity.proto")],
                   check=True)
    sys.path.insert(0, out)
    return importlib.import_module("envelope_pb2"), importlib.import_module("identity_pb2")


def system_call(cluster, pb, method, msg, reply_type):
    """One Majordomo request as actor SYSTEM (what membership does for invitations)."""
    import zmq
    env_pb, _ = pb
    req = env_pb.Request(request_id=str(uuid.uuid4()), method=method,
                         deadline_ms=int(time.time() * 1000) + 10000,
                         payload=msg.SerializeToString())
    req.actor.kind = env_pb.SYSTEM
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(cluster.urls["broker"])
        s.send_multipart([b"", b"MDPC01", method.split(".")[0].encode(), req.SerializeToString()])
        assert s.poll(10000), "no reply to " + method
        frames = s.recv_multipart()
    finally:
        s.close()
    rep = env_pb.Reply()
    rep.ParseFromString(frames[3])
    assert rep.status == env_pb.OK, (rep.status, rep.message)
    out = reply_type()
    out.ParseFromString(rep.payload)
    return out


@pytest.fixture(scope="module")
def extranet_user(cluster, identity, pb):
    """A new extranet user (created as SYSTEM, like an accepted invitation), never enrolled."""
    _, id_pb = pb
    email = "ext-%s@example.test" % secrets.token_hex(4)
    password = "Ext-Passw0rd-" + secrets.token_hex(4)
    system_call(cluster, pb, "identity.CreateExtranetAccount",
                id_pb.CreateExtranetAccountRequest(email=email, display_name="Ext User",
                                                   password=password), id_pb.User)
    return {"email": email, "password": password}


# ------------------------------------------------------------------ sessions

def test_login_and_me(api_url, admin_token, admin_credentials):
    r = requests.get(api_url + "/me", headers=bearer(admin_token), timeout=10)
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["email"] == admin_credentials["email"] and me["kind"] == "admin"
    assert set(me) >= {"id", "email", "display_name", "kind", "status", "expires_at",
                       "mfa_enabled", "created_at", "updated_at"}
    # the scheme is case-insensitive (RFC 7235 §2.1)
    r = requests.get(api_url + "/me", headers={"Authorization": "bearer " + admin_token},
                     timeout=10)
    assert r.status_code == 200


def test_forged_token_401(api_url, identity):
    for token in (secrets.token_urlsafe(32), "A" * 43, secrets.token_hex(40)):
        assert_error(requests.get(api_url + "/me", headers=bearer(token), timeout=10), 401,
                     "unauthenticated")


def test_session_cache_miss_is_refilled(cluster, api_url, admin_token):
    assert requests.get(api_url + "/me", headers=bearer(admin_token), timeout=10).status_code == 200
    cluster.redis_command("DEL", sess_key(admin_token))
    r = requests.get(api_url + "/me", headers=bearer(admin_token), timeout=10)
    assert r.status_code == 200, r.text
    entry = cluster.redis_command("HGETALL", sess_key(admin_token))
    assert entry, "identity.Authenticate did not refill the session cache"


def test_forged_cache_entry_for_unknown_token_is_not_enough_when_expired(cluster, api_url,
                                                                        identity):
    """An entry past valid_until_ms is a miss: identity decides, and it knows no such token."""
    token = secrets.token_urlsafe(32)
    key = sess_key(token)
    cluster.redis_command("HSET", key, "user_id", str(uuid.uuid4()), "kind", "admin",
                          "session_id", str(uuid.uuid4()), "mfa_pending", "0",
                          "valid_until_ms", str(int(time.time() * 1000) - 1000))
    cluster.redis_command("PEXPIRE", key, "30000")
    try:
        assert_error(requests.get(api_url + "/me", headers=bearer(token), timeout=10), 401,
                     "unauthenticated")
    finally:
        cluster.redis_command("DEL", key)


def test_logout(api_url, identity, admin_credentials):
    r = requests.post(api_url + "/auth/login", json=admin_credentials, timeout=30)
    token = r.json()["token"]
    r = requests.post(api_url + "/auth/logout", headers=bearer(token), timeout=10)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["X-Request-Id"]
    assert_error(requests.get(api_url + "/me", headers=bearer(token), timeout=10), 401,
                 "unauthenticated")


def test_wrong_password_401(api_url, identity, admin_credentials):
    r = requests.post(api_url + "/auth/login",
                      json={"email": admin_credentials["email"], "password": "wrong-password"},
                      timeout=30)
    assert_error(r, 401, "unauthenticated")


# ------------------------------------------------------------------ validation after auth, R1

def test_invalid_uuid_path_is_404_like_a_missing_id(api_url, admin_token):
    bad = requests.get(api_url + "/admin/users/not-a-uuid", headers=bearer(admin_token),
                       timeout=10)
    missing = requests.get(api_url + "/admin/users/%s" % uuid.uuid4(),
                           headers=bearer(admin_token), timeout=10)
    e1 = assert_error(bad, 404, "not_found")
    e2 = assert_error(missing, 404, "not_found")
    assert e1["message"] == e2["message"]
    assert set(bad.headers) == set(missing.headers)


def test_validation_errors_for_an_authenticated_caller(cluster, api_url, admin_token):
    h = dict(bearer(admin_token), **{"Content-Type": "application/json"})
    cases = [("{bad", 400), ('{"email": "x@y.z", "nope": 1}', 400), ('{"email": 5}', 400),
             ("[]", 400)]
    for raw, status in cases:
        # once with the session cached, once through identity.Authenticate (deferred error)
        for drop_cache in (False, True):
            if drop_cache:
                cluster.redis_command("DEL", sess_key(admin_token))
            r = requests.post(api_url + "/admin/users", data=raw, headers=h, timeout=10)
            assert_error(r, status, "invalid")
    r = requests.get(api_url + "/admin/users?limit=abc", headers=bearer(admin_token), timeout=10)
    assert_error(r, 400, "invalid")
    r = requests.get(api_url + "/admin/users?limit=5", headers=bearer(admin_token), timeout=10)
    assert r.status_code == 200, r.text
    assert len(r.json()["users"]) <= 5


def test_path_id_overrides_body_id(api_url, admin_token):
    me = requests.get(api_url + "/me", headers=bearer(admin_token), timeout=10).json()
    other = str(uuid.uuid4())
    r = requests.patch(api_url + "/admin/users/%s" % me["id"], headers=bearer(admin_token),
                       json={"id": other, "display_name": me["display_name"]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == me["id"]


def test_uuid_path_parameter_in_upper_case_is_the_same_id(api_url, admin_token):
    """The gateway hands every uuid path parameter on in lower case: services compare ids as
    strings, and an upper-case spelling of one's own id slipped past identity's "you cannot
    deactivate your own account". A second admin, so a regression deactivates only it."""
    email = "adm-%s@example.test" % secrets.token_hex(4)
    password = "Adm-Passw0rd-" + secrets.token_hex(4)
    r = requests.post(api_url + "/admin/users", headers=bearer(admin_token), timeout=30,
                      json={"email": email, "display_name": "Second Admin", "kind": "admin",
                            "password": password})
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    r = requests.post(api_url + "/auth/login", json={"email": email, "password": password},
                      timeout=30)
    assert r.status_code == 200, r.text
    own = bearer(r.json()["token"])
    r = requests.get(api_url + "/admin/users/" + uid.upper(), headers=own, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == uid
    for spelling in (uid, uid.upper(), uid[:8].upper() + uid[8:]):
        r = requests.patch(api_url + "/admin/users/" + spelling, headers=own,
                           json={"status": "deactivated"}, timeout=10)
        assert_error(r, 409, "conflict")
    r = requests.get(api_url + "/me", headers=own, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text


# ------------------------------------------------------------------ R10: mfa_pending sessions

def test_r10_mfa_pending_session_may_only_enroll(cluster, api_url, extranet_user):
    r = requests.post(api_url + "/auth/login", json=extranet_user, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mfa_enrollment_required"] is True and body["token"]
    token = body["token"]
    for drop_cache in (False, True):   # the Redis hit and the identity.Authenticate path
        if drop_cache:
            cluster.redis_command("DEL", sess_key(token))
        assert requests.get(api_url + "/me", headers=bearer(token), timeout=10).status_code == 200
        for method, path, data in (("GET", "/me/sessions", None),
                                   ("DELETE", "/me/sessions", None),
                                   ("POST", "/me/password",
                                    {"old_password": "a", "new_password": "b"}),
                                   ("GET", "/admin/users", None),
                                   ("GET", "/admin/policy", None)):
            if drop_cache:
                cluster.redis_command("DEL", sess_key(token))
            r = requests.request(method, api_url + path, headers=bearer(token), json=data,
                                 timeout=10)
            assert_error(r, 403, "mfa_enrollment_required")
    r = requests.post(api_url + "/me/mfa/enroll", headers=bearer(token), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["otpauth_uri"].startswith("otpauth://totp/")
    r = requests.post(api_url + "/me/mfa/confirm", headers=bearer(token), json={"code": "000000"},
                      timeout=10)
    assert r.status_code in (400, 401, 403), r.text   # wrong code, but the route is allowed
    assert r.json()["error"]["code"] != "mfa_enrollment_required"
    assert requests.post(api_url + "/auth/logout", headers=bearer(token),
                         timeout=10).status_code == 204


# ------------------------------------------------------------------ login rate limit

def rate_gateway(cluster, **env):
    e = {"EXTRANET_TRUSTED_PROXIES": "127.0.0.1", "EXTRANET_LOGIN_RATE_ACCOUNT": "1000",
         "EXTRANET_LOGIN_RATE_IP": "1000"}
    e.update(env)
    return OwnGateway(cluster, e)


def fresh_ip():
    """A client address no other test used (documentation range, RFC 3849)."""
    return "2001:db8::%x:%x" % (secrets.randbits(16), secrets.randbits(16))


def attempt(gw, email, ip=None, path="/api/v1/auth/login", data=None):
    headers = {"X-Forwarded-For": ip} if ip else {}
    return requests.post(gw.url + path, json=data or {"email": email, "password": "wrong-pw"},
                         headers=headers, timeout=30)


def test_login_rate_limit_per_account(cluster, identity):
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_ACCOUNT="3") as gw:
        email = "nobody-%s@example.test" % secrets.token_hex(4)
        for i in range(3):
            variant = email.upper() if i == 1 else email   # emails are case-insensitive
            assert_error(attempt(gw, variant, fresh_ip()), 401, "unauthenticated")
        r = attempt(gw, email, fresh_ip())
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 300
        assert_error(attempt(gw, "other-" + email, fresh_ip()), 401, "unauthenticated")


def test_body_routes_refuse_query_parameters(cluster, identity, admin_credentials):
    """A route with a JSON body takes no query parameters: ?email=victim used to override the
    body's (decoy) email after the rate limiter had counted the decoy, and credentials could
    travel in URLs. The per-account limit still counts the account the service sees."""
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_ACCOUNT="3") as gw:
        login = gw.url + "/api/v1/auth/login"
        decoy = "decoy-%s@example.test" % secrets.token_hex(4)
        tricks = [
            ("?" + urllib.parse.urlencode({"email": admin_credentials["email"]}),
             {"email": decoy, "password": admin_credentials["password"]}),
            ("?" + urllib.parse.urlencode(admin_credentials), {}),
            ("?" + urllib.parse.urlencode(admin_credentials), None),
            ("?email", {"email": decoy, "password": "x"}),
        ]
        for query, body in tricks:
            r = requests.post(login + query, json=body, timeout=30,
                              headers={"X-Forwarded-For": fresh_ip()})
            assert_error(r, 400, "invalid")
        victim = "victim-%s@example.test" % secrets.token_hex(4)
        for i in range(3):
            assert_error(attempt(gw, victim, fresh_ip()), 401, "unauthenticated")
        assert_error(attempt(gw, victim, fresh_ip()), 429, "rate_limited")
        # a decoy in the body cannot reach the limited account any more
        r = requests.post(login + "?" + urllib.parse.urlencode({"email": victim}), timeout=30,
                          json={"email": decoy, "password": "wrong-pw"},
                          headers={"X-Forwarded-For": fresh_ip()})
        assert_error(r, 400, "invalid")
        assert_error(attempt(gw, decoy, fresh_ip()), 401, "unauthenticated")


def test_login_rate_limit_per_ip(cluster, identity):
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_IP="3") as gw:
        ip = fresh_ip()
        for i in range(3):
            assert_error(attempt(gw, "u%d-%s@example.test" % (i, secrets.token_hex(3)), ip),
                         401, "unauthenticated")
        r = attempt(gw, "u9-%s@example.test" % secrets.token_hex(3), ip)
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        # another client address (through the trusted proxy) is not limited
        assert_error(attempt(gw, "u10-%s@example.test" % secrets.token_hex(3), fresh_ip()), 401,
                     "unauthenticated")


def test_x_forwarded_for_ignored_from_untrusted_peer(cluster, identity):
    with rate_gateway(cluster, EXTRANET_TRUSTED_PROXIES="192.0.2.1",
                      EXTRANET_LOGIN_RATE_IP="2", EXTRANET_LOGIN_RATE_WINDOW_S="3") as gw:
        # every attempt counts for 127.0.0.1 whatever X-Forwarded-For says; the window is
        # short because other tests share that address's counter
        codes = [attempt(gw, "x%d-%s@example.test" % (i, secrets.token_hex(3)),
                         fresh_ip()).status_code for i in range(3)]
        assert codes[-1] == 429, codes


def test_login_rate_limit_window_ends(cluster, identity):
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_ACCOUNT="1",
                      EXTRANET_LOGIN_RATE_WINDOW_S="2") as gw:
        email = "w-%s@example.test" % secrets.token_hex(4)
        assert attempt(gw, email, fresh_ip()).status_code == 401
        r = attempt(gw, email, fresh_ip())
        assert r.status_code == 429
        time.sleep(int(r.headers["Retry-After"]) + 0.2)
        assert attempt(gw, email, fresh_ip()).status_code == 401


def test_mfa_endpoint_rate_limited_per_mfa_token(cluster, identity):
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_ACCOUNT="2") as gw:
        data = {"mfa_token": secrets.token_urlsafe(32), "code": "123456"}
        for _ in range(2):
            r = attempt(gw, None, fresh_ip(), path="/api/v1/auth/mfa", data=data)
            assert r.status_code in (400, 401), r.text
        assert_error(attempt(gw, None, fresh_ip(), path="/api/v1/auth/mfa", data=data), 429,
                     "rate_limited")


def test_rate_limit_falls_back_to_stricter_local_limiter_without_redis(cluster, identity,
                                                                       admin_credentials):
    import cluster as cluster_lib
    dead = "127.0.0.1:%d" % cluster_lib.free_port()
    with rate_gateway(cluster, EXTRANET_REDIS=dead, EXTRANET_LOGIN_RATE_ACCOUNT="4") as gw:
        email = "r-%s@example.test" % secrets.token_hex(4)
        codes = [attempt(gw, email, fresh_ip()).status_code for _ in range(3)]
        assert codes == [401, 401, 429], codes   # half the limit: never none
        # sessions still work without the gateway's Redis: every lookup asks identity
        r = requests.post(gw.url + "/api/v1/auth/login", json=admin_credentials,
                          headers={"X-Forwarded-For": fresh_ip()}, timeout=30)
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert requests.get(gw.url + "/api/v1/me", headers=bearer(token),
                            timeout=10).status_code == 200
        assert_error(requests.get(gw.url + "/api/v1/me", headers=bearer("A" * 43), timeout=10),
                     401, "unauthenticated")


def test_successful_logins_do_not_use_up_the_limit(cluster, extranet_user):
    with rate_gateway(cluster, EXTRANET_LOGIN_RATE_ACCOUNT="2", EXTRANET_LOGIN_RATE_IP="2") as gw:
        ip = fresh_ip()
        for _ in range(4):
            r = attempt(gw, None, ip, data=extranet_user)
            assert r.status_code == 200, r.text
            requests.post(gw.url + "/api/v1/auth/logout", headers=bearer(r.json()["token"]),
                          timeout=10)
        wrong = dict(extranet_user, password="wrong-password")
        assert [attempt(gw, None, ip, data=wrong).status_code for _ in range(3)] == \
            [401, 401, 429]
        # now even the right password waits for the window
        assert_error(attempt(gw, None, fresh_ip(), data=extranet_user), 429, "rate_limited")


def test_client_ip_is_the_rightmost_untrusted_forwarded_address(cluster, identity):
    """Behind trusted proxies (127.0.0.1 and 10.0.0.0/8) the client is the rightmost
    X-Forwarded-For entry that is not a proxy; entries a client wrote itself further left do
    not count, so it cannot escape the per-address limit by inventing addresses."""
    with rate_gateway(cluster, EXTRANET_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8",
                      EXTRANET_LOGIN_RATE_IP="1") as gw:
        b, d = fresh_ip(), fresh_ip()

        def code(xff):
            return attempt(gw, "ip-%s@example.test" % secrets.token_hex(4), xff).status_code
        assert code("%s, %s, 10.0.0.5" % (fresh_ip(), b)) == 401      # client b
        assert code("%s, %s" % (fresh_ip(), b)) == 429                # b again: limited
        assert code("%s, 10.20.30.40, 10.0.0.1" % b) == 429           # b behind two proxies
        assert code("%s, %s" % (b, d)) == 401                         # d, not b
        assert code("garbage, %s" % d) == 429                         # d again


def test_concurrent_requests_get_their_own_replies(cluster, api_url, admin_token):
    """Many requests of different users in flight at once through the one loop thread: every
    reply reaches the request it answers (matched by request_id), on both session paths."""
    from concurrent.futures import ThreadPoolExecutor
    users = []
    for i in range(4):
        email = "conc-%d-%s@example.test" % (i, secrets.token_hex(3))
        password = "Conc-Passw0rd-" + secrets.token_hex(4)
        r = requests.post(api_url + "/admin/users", headers=bearer(admin_token), timeout=30,
                          json={"email": email, "display_name": "C%d" % i, "password": password})
        assert r.status_code == 201, r.text
        r = requests.post(api_url + "/auth/login", json={"email": email, "password": password},
                          timeout=30)
        assert r.status_code == 200, r.text
        users.append((email, r.json()["token"]))

    def worker(n):
        email, token = users[n % len(users)]
        with requests.Session() as s:
            for k in range(15):
                if k % 5 == 0:
                    cluster.redis_command("DEL", sess_key(token))   # the Authenticate path
                r = s.get(api_url + "/me", headers=bearer(token), timeout=20)
                if r.status_code != 200 or r.json()["email"] != email:
                    return "%s got %s %s" % (email, r.status_code, r.text[:200])
        return None
    with ThreadPoolExecutor(32) as ex:
        errors = [e for e in ex.map(worker, range(32)) if e]
    assert not errors, errors[:5]


def test_hung_redis_is_a_miss_not_a_hang(cluster, identity, admin_token):
    """A Redis that accepts connections but never answers (paused, overloaded): session
    lookups time out quickly, fall back to identity.Authenticate, and answer correctly."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    held = []
    stop = threading.Event()

    def accept_and_ignore():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(lsock.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept_and_ignore, daemon=True)
    t.start()
    try:
        env = {"EXTRANET_REDIS": "127.0.0.1:%d" % lsock.getsockname()[1]}
        with rate_gateway(cluster, **env) as gw:
            t0 = time.monotonic()
            for _ in range(10):
                r = requests.get(gw.url + "/api/v1/me", headers=bearer(admin_token), timeout=15)
                assert r.status_code == 200, r.text
                assert_error(requests.get(gw.url + "/api/v1/me", headers=bearer("B" * 43),
                                          timeout=15), 401, "unauthenticated")
            assert time.monotonic() - t0 < 4, time.monotonic() - t0   # not 1 s per request
    finally:
        stop.set()
        t.join()
        for s in held:
            s.close()
        lsock.close()
