"""Black-box tests of identity's timer outbox (services/identity/README.md, "Expiry timers"):
an expires_at set or cleared while expiry is down still reaches expiry once it is back, so the
user is deactivated at due time, and a cleared expires_at leaves no pending timer. Real
cluster over HTTP; identity.timer_outbox and expiry.timers read with psql. Every wait polls
with a deadline."""

import time

import pytest

from test_expiry import create_user, iso, login_token, set_expires, timers, user_status, \
    wait_for, Api, PASSWORD


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


def outbox(cluster, uid):
    """[(op, due_at)] of the user's row in identity.timer_outbox (at most one)."""
    return [tuple(r) for r in cluster.psql(
        "SELECT op, coalesce(to_char(due_at AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') FROM identity.timer_outbox "
        "WHERE user_id = :'u'::uuid", u=uid)]


def attempts(cluster, uid):
    rows = cluster.psql("SELECT attempts FROM identity.timer_outbox WHERE user_id = :'u'::uuid",
                        u=uid)
    return int(rows[0][0]) if rows else 0


def clear_expires(api, admin, uid):
    r = api.call("PATCH", "/admin/users/%s" % uid, admin, {"clear_expires_at": True})
    assert r.status_code == 200, r.text
    assert not r.json().get("expires_at")


def test_expires_at_set_while_expiry_down_deactivates_later(api, admin, cluster):
    uid, email = create_user(api, admin)
    token = login_token(api, email)
    cluster.stop_service("expiry")
    try:
        due = int(time.time()) + 6
        # expiry is down: identity answers OK and keeps the schedule in its outbox
        set_expires(api, admin, uid, iso(due))
        assert outbox(cluster, uid) == [("schedule", iso(due))]
        assert timers(cluster, uid) == []
        assert api.call("GET", "/me", token).status_code == 200
        # the tick tries too, fails while expiry is down and backs off; the row stays (a
        # second claim means the first attempt ended: one identity, one tick thread)
        wait_for(lambda: attempts(cluster, uid) >= 2, 30, "a failed attempt of the tick")
        assert outbox(cluster, uid) == [("schedule", iso(due))]
    finally:
        cluster.start_service("expiry")
    # the tick ships the schedule once expiry is back; the timer fires at due time
    wait_for(lambda: outbox(cluster, uid) == [], 60, "identity to ship the queued schedule")
    wait_for(lambda: user_status(api, admin, uid) == "deactivated", 60,
             "expiry to deactivate the user")
    assert time.time() >= due - 1
    r = api.call("GET", "/me", token)
    assert r.status_code == 401, r.text
    assert api.login(email, PASSWORD).status_code == 401
    assert [(t[1], t[4]) for t in timers(cluster, uid)] == [("done", iso(due))]


def test_expires_at_cleared_while_expiry_down_leaves_no_pending_timer(api, admin, cluster):
    far = iso(int(time.time()) + 30 * 86400)
    # scheduled while expiry was up, cleared while it is down
    registered, _ = create_user(api, admin)
    set_expires(api, admin, registered, far)
    assert [t[1] for t in timers(cluster, registered)] == ["pending"]
    assert outbox(cluster, registered) == []            # the fast path shipped it at once
    # set and cleared while expiry is down: the cancel replaces the queued schedule
    queued, _ = create_user(api, admin)
    cluster.stop_service("expiry")
    try:
        set_expires(api, admin, queued, far)
        assert outbox(cluster, queued) == [("schedule", far)]
        clear_expires(api, admin, queued)
        assert outbox(cluster, queued) == [("cancel", "")]
        clear_expires(api, admin, registered)
        assert outbox(cluster, registered) == [("cancel", "")]
        assert [t[1] for t in timers(cluster, registered)] == ["pending"]
    finally:
        cluster.start_service("expiry")
    wait_for(lambda: outbox(cluster, registered) == [] and outbox(cluster, queued) == [], 60,
             "identity to ship the queued cancels")
    assert [t[1] for t in timers(cluster, registered)] == ["cancelled"]
    assert [t for t in timers(cluster, queued) if t[1] == "pending"] == []
    assert user_status(api, admin, registered) == "active"
    assert user_status(api, admin, queued) == "active"
