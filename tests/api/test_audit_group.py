"""GET /api/v1/groups/{gid}/audit (audit.QueryGroup, services/audit/README.md), black-box on a
real cluster (gateway, broker, identity, membership, audit): the group's owner and admins read
that group's records and no other group's; moderators, members, extranet members and outsiders
get 404 not_found with exactly the body of a missing group (R1); group_id cannot be overridden.

Runs its own cluster with the 2FA policy for extranet users switched off (externals must act)."""

import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402

ADMIN_EMAIL = "root@auditgroup.test"
ADMIN_PASSWORD = "AuditGroup-Admin-Passw0rd"
PASSWORD = "User-Passw0rd-123"
NOT_FOUND = (404, "not_found", "not found")


@pytest.fixture(scope="module")
def gc():
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_LOGIN_RATE_IP": "100000",
                                       "EXTRANET_LOGIN_RATE_ACCOUNT": "100000"})
    bins = c.service_bins()
    if not c.gateway_bin() or not c.broker_bin() or \
            not {"identity", "membership", "audit"} <= set(bins):
        pytest.skip("gateway, broker, identity, membership or audit not built in %s" % c.build)
    c.start()
    yield c
    c.stop(remove=not os.environ.get("EXTRANET_KEEP_CLUSTER"))


class Api:
    def __init__(self, base):
        self.base = base + "/api/v1"
        self.s = requests.Session()

    def call(self, method, path, token=None, body=None, params=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return self.s.request(method, self.base + path, json=body, params=params,
                              headers=headers, timeout=30)

    def token(self, email, password=PASSWORD):
        r = self.call("POST", "/auth/login", body={"email": email, "password": password})
        assert r.status_code == 200, r.text
        assert not r.json().get("mfa_required"), r.text
        return r.json()["token"]


class User:
    def __init__(self, id_, kind, token):
        self.id, self.kind, self.token = id_, kind, token

    def __repr__(self):
        return "%s(%s)" % (self.kind, self.id)


@pytest.fixture(scope="module")
def api(gc):
    return Api(gc.base_url)


@pytest.fixture(scope="module")
def admin(api):
    t = api.token(ADMIN_EMAIL, ADMIN_PASSWORD)
    r = api.call("PUT", "/admin/policy", t, {"extranet_mfa_required": False})
    assert r.status_code == 200, r.text
    return User(api.call("GET", "/me", t).json()["id"], "admin", t)


@pytest.fixture(scope="module")
def mk(api, admin):
    def make(kind):
        email = "%s-%s@auditgroup.test" % (kind, uuid.uuid4().hex[:10])
        r = api.call("POST", "/admin/users", admin.token,
                     {"email": email, "display_name": kind, "kind": kind, "password": PASSWORD})
        assert r.status_code == 201, r.text
        return User(r.json()["id"], kind, api.token(email))
    return make


def err(r):
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    return (r.status_code, body["error"]["code"], body["error"]["message"])


def group(api, owner, name):
    r = api.call("POST", "/groups", owner.token, {"name": name, "kind": "extranet"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add(api, actor, gid, user, role="member"):
    r = api.call("POST", "/groups/%s/members" % gid, actor.token,
                 {"user_id": user.id, "role": role})
    assert r.status_code == 201, r.text


def group_records(api, who, gid, **filters):
    """Every record of gid the caller reads (all pages, small pages to exercise the cursor)."""
    out, cursor = [], ""
    while True:
        params = dict(filters, limit=2)
        if cursor:
            params["cursor"] = cursor
        r = api.call("GET", "/groups/%s/audit" % gid, who.token, params=params)
        assert r.status_code == 200, r.text
        out += r.json()["records"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


@pytest.fixture(scope="module")
def world(api, mk, admin):
    owner, mod, mem, ext, outsider = (mk("employee"), mk("employee"), mk("employee"),
                                      mk("extranet"), mk("employee"))
    gid = group(api, owner, "Audited")
    other = group(api, owner, "Other")
    add(api, owner, gid, mod, "moderator")
    add(api, owner, gid, mem)
    add(api, admin, gid, ext)  # an employee cannot name an extranet user it shares no group with
    add(api, owner, other, mem)
    r = api.call("PATCH", "/groups/%s" % gid, owner.token, {"name": "Audited 2"})
    assert r.status_code == 200, r.text
    # The relays ship within a tick or two: wait until the group's five records arrived.
    end = time.monotonic() + 20
    while True:
        recs = group_records(api, owner, gid)
        if len(recs) >= 5 or time.monotonic() > end:
            break
        time.sleep(0.2)
    return dict(owner=owner, mod=mod, mem=mem, ext=ext, outsider=outsider, gid=gid, other=other,
                admin=admin)


def test_owner_reads_the_groups_records_and_no_other_groups(api, world):
    w = world
    recs = group_records(api, w["owner"], w["gid"])
    actions = sorted(r["action"] for r in recs)
    assert actions == ["group.created", "group.updated", "member.added", "member.added",
                       "member.added"], recs
    assert all(r["group_id"] == w["gid"] for r in recs)
    assert {r["target_id"] for r in recs if r["action"] == "member.added"} == \
        {w["mod"].id, w["mem"].id, w["ext"].id}
    assert [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    # The other group's records exist (the admin sees them) but never show here.
    other = group_records(api, w["admin"], w["other"])
    assert sorted(r["action"] for r in other) == ["group.created", "member.added"], other
    assert not {r["event_id"] for r in other} & {r["event_id"] for r in recs}
    # Filters narrow within the group.
    only = group_records(api, w["owner"], w["gid"], action="member.added")
    assert len(only) == 3 and all(r["action"] == "member.added" for r in only)
    assert group_records(api, w["owner"], w["gid"], target_id=w["ext"].id)[0]["action"] == \
        "member.added"


def test_group_id_cannot_be_overridden(api, world):
    w = world
    for params in ({"group_id": w["other"]}, {"group_id": ""}):
        r = api.call("GET", "/groups/%s/audit" % w["gid"], w["owner"].token, params=params)
        assert r.status_code == 400, (params, r.text)
        assert w["other"] not in r.text
    # ?gid= is overwritten by the path (the gateway sets path parameters last).
    r = api.call("GET", "/groups/%s/audit" % w["gid"], w["owner"].token,
                 params={"gid": w["other"]})
    assert r.status_code == 200, r.text
    assert r.json()["records"] and all(x["group_id"] == w["gid"] for x in r.json()["records"])
    assert w["other"] not in r.text
    # Paging parameters are still validated.
    for params in ({"cursor": "x"}, {"limit": 100000}, {"since": "yesterday"}):
        r = api.call("GET", "/groups/%s/audit" % w["gid"], w["owner"].token, params=params)
        assert r.status_code == 400, (params, r.text)


def test_everyone_but_owner_and_admin_gets_404_like_a_missing_group(api, world):
    w = world

    def shape(r):
        names = sorted(h.lower() for h in r.headers if h.lower() != "date")
        return names, len(r.content)

    for who in (w["mod"], w["mem"], w["ext"], w["outsider"]):
        for _ in range(2):  # the second time the gateway may answer from membership's cache
            hidden = api.call("GET", "/groups/%s/audit" % w["gid"], who.token)
            missing = api.call("GET", "/groups/%s/audit" % uuid.uuid4(), who.token)
            assert err(hidden) == NOT_FOUND, (who, hidden.text)
            assert err(missing) == NOT_FOUND, (who, missing.text)
            assert shape(hidden) == shape(missing), who
            assert w["gid"] not in hidden.text and "Audited" not in hidden.text
            malformed = api.call("GET", "/groups/not-a-uuid/audit", who.token)
            assert err(malformed) == NOT_FOUND
    # The owner of the other group only: still nothing of this one.
    r = api.call("GET", "/groups/%s/audit" % uuid.uuid4(), w["owner"].token)
    assert err(r) == NOT_FOUND
    # Not signed in: 401, not a list.
    assert api.call("GET", "/groups/%s/audit" % w["gid"]).status_code == 401


def test_admin_reads_any_groups_records(api, world):
    w = world
    mine = group_records(api, w["owner"], w["gid"])
    seen = group_records(api, w["admin"], w["gid"])
    assert [r["event_id"] for r in seen] == [r["event_id"] for r in mine]
    assert len(seen) == 5


def test_role_changes_take_effect_on_the_next_request(api, world):
    """Ownership moves: the new owner reads, the former owner (now a moderator) gets 404."""
    w = world
    r = api.call("PATCH", "/groups/%s/members/%s" % (w["gid"], w["mod"].id), w["owner"].token,
                 {"role": "owner"})
    assert r.status_code == 200, r.text
    assert api.call("GET", "/groups/%s/audit" % w["gid"], w["mod"].token).status_code == 200
    assert err(api.call("GET", "/groups/%s/audit" % w["gid"], w["owner"].token)) == NOT_FOUND
