"""Black-box tests of access expiry over HTTP against the real cluster (gateway -> identity ->
expiry and back): an admin sets a user's expires_at, expiry deactivates the user at due time
(R9), the guard holds with expiry stopped, two expiry copies fire each timer once, Schedule is
idempotent and Cancel works, and a timer is retried while identity is down. expiry.timers is
read with psql (cluster.psql). Every wait polls with a deadline."""

import time
import uuid

import pytest
import requests

PASSWORD = "Expiry-Test-Passw0rd-1"


def wait_for(pred, timeout, what, step=0.1):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(step)


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Api:
    """A small JSON client; retries a request answered 429 after its Retry-After (login is
    rate-limited per address and these tests log several users in)."""

    def __init__(self, url):
        self.url = url
        self.http = requests.Session()

    def call(self, method, path, token=None, body=None, timeout=10):
        headers = {"Authorization": "Bearer " + token} if token else {}
        end = time.monotonic() + 60
        while True:
            r = self.http.request(method, self.url + path, json=body, headers=headers,
                                  timeout=timeout)
            if r.status_code != 429 or time.monotonic() > end:
                return r
            time.sleep(min(float(r.headers.get("Retry-After", "1")), 5))

    def login(self, email, password):
        return self.call("POST", "/auth/login", body={"email": email, "password": password})


@pytest.fixture(scope="module")
def api(api_url, require_service):
    require_service("identity")
    require_service("expiry")
    return Api(api_url)


@pytest.fixture(scope="module")
def admin(api, admin_credentials):
    r = api.login(admin_credentials["email"], admin_credentials["password"])
    assert r.status_code == 200, r.text
    return r.json()["token"]


def create_user(api, admin):
    email = "expiry-%s@extranet.test" % uuid.uuid4().hex[:12]
    r = api.call("POST", "/admin/users", admin,
                 {"email": email, "display_name": "Expiry Test", "kind": "employee",
                  "password": PASSWORD})
    assert r.status_code == 201, r.text
    return r.json()["id"], email


def login_token(api, email):
    r = api.login(email, PASSWORD)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def set_expires(api, admin, uid, when):
    r = api.call("PATCH", "/admin/users/%s" % uid, admin, {"expires_at": when})
    assert r.status_code == 200, r.text
    return r.json()


def user_status(api, admin, uid):
    r = api.call("GET", "/admin/users/%s" % uid, admin)
    assert r.status_code == 200, r.text
    return r.json().get("status")


def timers(cluster, uid):
    """[(id, state, attempts, last_error, due_at)] of the user's expiry timers, oldest first."""
    return [(r[0], r[1], int(r[2]), r[3], r[4]) for r in cluster.psql(
        "SELECT id, state, attempts, coalesce(last_error, ''), "
        "to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        "FROM expiry.timers WHERE kind = 'user.expire' AND subject = :'s' ORDER BY created_at",
        s=uid)]


def states(cluster, uid):
    return [t[1] for t in timers(cluster, uid)]


def test_expiry_deactivates_user_at_due_time(api, admin, cluster):
    uid, email = create_user(api, admin)
    token = login_token(api, email)
    due = int(time.time()) + 4
    set_expires(api, admin, uid, iso(due))
    # identity registered the timer; the session still works before due time
    assert [(t[1], t[4]) for t in timers(cluster, uid)] == [("pending", iso(due))]
    assert api.call("GET", "/me", token).status_code == 200
    wait_for(lambda: user_status(api, admin, uid) == "deactivated", 30,
             "expiry to deactivate the user")
    assert time.time() >= due - 1   # not before its time (clocks agree to a second)
    r = api.call("GET", "/me", token)
    assert r.status_code == 401, r.text
    assert api.login(email, PASSWORD).status_code == 401
    [(_, state, attempts, _, _)] = timers(cluster, uid)
    assert (state, attempts) == ("done", 1)


def test_r9_expired_user_refused_with_expiry_stopped(api, admin, cluster):
    uid, email = create_user(api, admin)
    token = login_token(api, email)
    due = int(time.time()) + 3
    set_expires(api, admin, uid, iso(due))
    cluster.stop_service("expiry")
    try:
        # R9: identity and the gateway compare expires_at themselves, expiry or not
        wait_for(lambda: api.call("GET", "/me", token).status_code == 401, 20,
                 "the expired user's session to be refused")
        assert time.time() >= due - 1
        assert api.login(email, PASSWORD).status_code == 401
        # nobody deactivated the user: the refusal came from expires_at alone
        assert user_status(api, admin, uid) == "active"
        assert states(cluster, uid) == ["pending"]
    finally:
        cluster.start_service("expiry")
    # the clean-up catches up once expiry is back
    wait_for(lambda: states(cluster, uid) == ["done"], 30, "the overdue timer to fire")
    assert user_status(api, admin, uid) == "deactivated"


def test_expiry_two_copies_fire_each_timer_once(api, admin, cluster):
    """Two copies claiming small batches on a fast tick race for the same due timers: each
    timer is called once (attempts = 1, one "fired" line across both logs) and takes effect."""
    race = {"EXTRANET_EXPIRY_BATCH": "2", "EXTRANET_EXPIRY_TICK_MS": "20"}
    cluster.stop_service("expiry")
    copies = []
    try:
        copies = [cluster.add_copy("expiry", env=race) for _ in range(2)]
        users = [create_user(api, admin)[0] for _ in range(16)]
        due = int(time.time()) + 4
        for uid in users:
            set_expires(api, admin, uid, iso(due))
        wait_for(lambda: all(states(cluster, u) == ["done"] for u in users), 60,
                 "every timer to fire")
        ids = {}
        for uid in users:
            [(tid, _, attempts, last_error, _)] = timers(cluster, uid)
            assert attempts == 1, (uid, attempts, last_error)
            ids[tid] = uid
            assert user_status(api, admin, uid) == "deactivated"
        fired = {tid: [] for tid in ids}
        for c in copies:
            text = (cluster.log_dir / ("%s.log" % c)).read_text("utf-8", "replace")
            for line in text.splitlines():
                for tid in ids:
                    if ("timer %s (" % tid) in line and " fired: " in line:
                        fired[tid].append(c)
        assert all(len(v) == 1 for v in fired.values()), fired
        by_copy = {c: sum(v == [c] for v in fired.values()) for c in copies}
        print("timers fired per copy: %s" % by_copy)
    finally:
        for c in copies:
            cluster.stop_service(c)
        cluster.start_service("expiry")


def test_expiry_schedule_idempotent_and_cancel(api, admin, cluster):
    cancelled, _ = create_user(api, admin)
    control, _ = create_user(api, admin)
    moved, _ = create_user(api, admin)
    due = int(time.time()) + 5
    # the same expires_at twice: one pending timer
    set_expires(api, admin, cancelled, iso(due))
    set_expires(api, admin, cancelled, iso(due))
    assert states(cluster, cancelled) == ["pending"]
    # moved from far away to the common due time: the same timer, moved
    set_expires(api, admin, moved, iso(due + 3600))
    set_expires(api, admin, moved, iso(due))
    assert [(t[1], t[4]) for t in timers(cluster, moved)] == [("pending", iso(due))]
    set_expires(api, admin, control, iso(due))
    # clearing expires_at before due time cancels the timer
    r = api.call("PATCH", "/admin/users/%s" % cancelled, admin, {"clear_expires_at": True})
    assert r.status_code == 200, r.text
    assert not r.json().get("expires_at")
    assert states(cluster, cancelled) == ["cancelled"]
    # once the control user (same due time) is deactivated, the tick has passed that time
    wait_for(lambda: user_status(api, admin, control) == "deactivated", 30,
             "the control user to be deactivated")
    wait_for(lambda: user_status(api, admin, moved) == "deactivated", 10,
             "the moved timer to fire")
    assert states(cluster, moved) == ["done"]
    assert user_status(api, admin, cancelled) == "active"
    assert states(cluster, cancelled) == ["cancelled"]


def test_expiry_retries_while_identity_is_down(api, admin, cluster):
    uid, email = create_user(api, admin)
    token = login_token(api, email)
    due = int(time.time()) + 2
    set_expires(api, admin, uid, iso(due))
    cluster.stop_service("identity")
    try:
        rows = wait_for(lambda: [t for t in timers(cluster, uid) if t[2] >= 1 and t[3]], 30,
                        "a failed attempt to be recorded")
        assert rows[0][1] == "pending", rows
    finally:
        cluster.start_service("identity")
    wait_for(lambda: states(cluster, uid) == ["done"], 90,
             "the timer to fire once identity is back")
    [(_, _, attempts, _, _)] = timers(cluster, uid)
    assert attempts >= 2
    assert user_status(api, admin, uid) == "deactivated"
    assert api.call("GET", "/me", token).status_code == 401
