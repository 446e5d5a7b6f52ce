"""R9 for sessions: a session cache fill (identity.Authenticate after a sess:{h} miss) that read
PostgreSQL before a deactivation or logout committed must never write the revoked session back
into Redis. Its own cluster with EXTRANET_IDENTITY_FILL_DELAY_MS=400 (a test-only knob: a
sleep between the fill's PostgreSQL read and its Redis write), so the revocation lands inside
that window every time; the fill's lease (fill:sess:{h}, deleted with sess:{h}) must make its
write a no-op."""

import hashlib
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402

ADMIN_EMAIL = "root@fillrace.test"
ADMIN_PASSWORD = "FillRace-Admin-Passw0rd"
PASSWORD = "FillRace-User-Passw0rd-1"


@pytest.fixture(scope="module")
def fc():
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_IDENTITY_FILL_DELAY_MS": "400"})
    if "identity" not in c.service_bins() or not c.gateway_bin():
        pytest.skip("identity or gateway not built")
    c.start()
    yield c
    c.stop(remove=True)


def call(c, method, path, token=None, body=None):
    h = {"Authorization": "Bearer " + token} if token else {}
    return requests.request(method, c.base_url + "/api/v1" + path, json=body, headers=h,
                            timeout=30)


def login(c, email, password=PASSWORD):
    r = call(c, "POST", "/auth/login", body={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def sess_key(token):
    return "sess:" + hashlib.sha256(token.encode()).hexdigest()


def racing_fill(c, token):
    """Starts GET /me after dropping sess:{h}, so identity fills it; returns the thread and its
    result once the fill holds its lease (it has read PostgreSQL or is about to)."""
    key = sess_key(token)
    c.redis_command("DEL", key)
    result = {}

    def me():
        result["status"] = call(c, "GET", "/me", token).status_code

    th = threading.Thread(target=me)
    th.start()
    deadline = time.monotonic() + 5
    while c.redis_command("EXISTS", "fill:" + key) != 1:
        assert time.monotonic() < deadline, "the session fill never took its lease"
        time.sleep(0.005)
    return th, result


@pytest.fixture(scope="module")
def admin_token(fc):
    return login(fc, ADMIN_EMAIL, ADMIN_PASSWORD)


def new_user(fc, admin_token):
    email = "u-%s@fillrace.test" % uuid.uuid4().hex[:10]
    r = call(fc, "POST", "/admin/users", admin_token,
             {"email": email, "kind": "employee", "password": PASSWORD})
    assert r.status_code == 201, r.text
    return r.json()["id"], email, login(fc, email)


@pytest.mark.parametrize("revoke", ["deactivate", "revoke_other_sessions"])
def test_a_fill_racing_a_revocation_never_writes_the_session_back(fc, admin_token, revoke):
    uid, email, token = new_user(fc, admin_token)
    other = login(fc, email)   # the user's second session, which revokes the first
    # Warm both revokers' session entries: their own fills would otherwise take the 400 ms too
    # and the revocation would land after the racing fill instead of inside it.
    for t in (other, admin_token):
        assert call(fc, "GET", "/me", t).status_code == 200
        assert fc.redis_command("EXISTS", sess_key(t)) == 1
    th, result = racing_fill(fc, token)
    if revoke == "deactivate":
        r = call(fc, "PATCH", "/admin/users/" + uid, admin_token, {"status": "deactivated"})
        assert r.status_code == 200, r.text
    else:
        r = call(fc, "DELETE", "/me/sessions", other)
        assert r.status_code == 200 and r.json()["revoked"] >= 1, r.text
    assert th.is_alive(), "the revocation did not land inside the fill's window"
    th.join()
    # The racing request read PostgreSQL before the revocation: it may have been answered.
    assert result["status"] in (200, 401), result
    time.sleep(0.1)
    assert fc.redis_command("EXISTS", sess_key(token)) == 0, \
        "the fill wrote the revoked session back"
    assert call(fc, "GET", "/me", token).status_code == 401
