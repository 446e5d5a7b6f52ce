"""The first admin, created by identity at start from EXTRANET_ADMIN_EMAIL/PASSWORD, leaves one
`user.created` record (actor system) like every other account (R11; services/audit/README.md);
a restart or another copy, which find an admin, write none. Black-box on the session cluster,
whose admin is that bootstrap admin (conftest.py)."""

import time

import pytest
import requests


@pytest.fixture(scope="module")
def admin(api_url, require_service, admin_credentials):
    for s in ("identity", "audit"):
        require_service(s)
    http = requests.Session()
    r = http.post(api_url + "/auth/login", json=admin_credentials, timeout=20)
    assert r.status_code == 200, r.text
    return dict(http=http, url=api_url, token=r.json()["token"], id=r.json()["user"]["id"],
                email=admin_credentials["email"], password=admin_credentials["password"])


def _records(admin, **filters):
    r = admin["http"].get(admin["url"] + "/admin/audit", timeout=20, params=filters,
                          headers={"Authorization": "Bearer " + admin["token"]})
    assert r.status_code == 200, r.text
    return r.json()["records"]


def created_records(admin, timeout=20.0, want=1):
    """The user.created records of the admin once `want` arrived (then a settle)."""
    def get():
        return _records(admin, action="user.created", target_id=admin["id"])
    end = time.monotonic() + timeout
    while True:
        recs = get()
        if len(recs) >= want:
            time.sleep(0.5)
            return get()
        if time.monotonic() > end:
            pytest.fail("no user.created record of the first admin within %.0f s" % timeout)
        time.sleep(0.1)


def test_first_admin_leaves_one_user_created_record(admin, cluster):
    recs = created_records(admin)
    assert len(recs) == 1, recs
    rec = recs[0]
    want = dict(action="user.created", actor_kind="system", actor_id="", actor_session="",
                target_type="user", target_id=admin["id"], group_id="", outcome="ok",
                service="identity", details='{"kind":"admin"}')
    assert {k: rec[k] for k in want} == want, rec
    assert admin["email"] not in str(rec)  # people by id, never by email
    # A restart and a second copy find the admin: no second record.
    cluster.restart_service("identity")
    copy = cluster.add_copy("identity")
    try:
        # Records identity writes after both started (logins, served by either copy): once
        # they arrived, the shared outbox has shipped what the starts could have written.
        rids = []
        for _ in range(4):
            r = admin["http"].post(admin["url"] + "/auth/login", timeout=20,
                                   json={"email": admin["email"],
                                         "password": admin["password"]})
            assert r.status_code == 200, r.text
            rids.append(r.headers["X-Request-Id"])
        end = time.monotonic() + 20
        for rid in rids:
            while not _records(admin, request_id=rid):
                assert time.monotonic() < end, "login record %s not shipped" % rid
                time.sleep(0.1)
        assert [x["event_id"] for x in created_records(admin)] == [rec["event_id"]]
    finally:
        cluster.stop_service(copy)
