"""Refused membership changes leave one audit record with outcome `denied` (R11;
services/membership/README.md "Refusals"), black-box on a real cluster (gateway, broker,
identity, membership, audit): a member without the right, a moderator making itself owner, an
extranet member changing its role, an extranet user creating a group, and an outsider acting on
a group hidden from it each leave exactly one record of the attempted action, visible to the
admin. The outsider's record carries no group_id, so the group's owner never sees it in
GET /groups/{gid}/audit (R1). Malformed input (400) and reads leave none.

Runs its own cluster with the 2FA policy for extranet users switched off (externals must act).
Records arrive through membership's relay: every check polls with a deadline."""

import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402

ADMIN_EMAIL = "root@auditdenied.test"
ADMIN_PASSWORD = "AuditDenied-Admin-Passw0rd"
PASSWORD = "User-Passw0rd-123"


@pytest.fixture(scope="module")
def dc():
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

    def call(self, method, path, token=None, body=None, params=None, data=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        return self.s.request(method, self.base + path, json=body, params=params, data=data,
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
def api(dc):
    return Api(dc.base_url)


@pytest.fixture(scope="module")
def admin(api):
    t = api.token(ADMIN_EMAIL, ADMIN_PASSWORD)
    r = api.call("PUT", "/admin/policy", t, {"extranet_mfa_required": False})
    assert r.status_code == 200, r.text
    return User(api.call("GET", "/me", t).json()["id"], "admin", t)


@pytest.fixture(scope="module")
def mk(api, admin):
    def make(kind):
        email = "%s-%s@auditdenied.test" % (kind, uuid.uuid4().hex[:10])
        r = api.call("POST", "/admin/users", admin.token,
                     {"email": email, "display_name": kind, "kind": kind, "password": PASSWORD})
        assert r.status_code == 201, r.text
        return User(r.json()["id"], kind, api.token(email))
    return make


def admin_records(api, admin, **filters):
    """Every record matching filters that the admin reads (all pages)."""
    out, cursor = [], ""
    while True:
        params = dict(filters, limit=1000)
        if cursor:
            params["cursor"] = cursor
        r = api.call("GET", "/admin/audit", admin.token, params=params)
        assert r.status_code == 200, r.text
        out += r.json()["records"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


def group_records(api, who, gid, **filters):
    """Every record of gid the caller reads through GET /groups/{gid}/audit."""
    out, cursor = [], ""
    while True:
        params = dict(filters, limit=1000)
        if cursor:
            params["cursor"] = cursor
        r = api.call("GET", "/groups/%s/audit" % gid, who.token, params=params)
        assert r.status_code == 200, r.text
        out += r.json()["records"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


def the_record(api, admin, resp, timeout=20.0):
    """The one record of the response's request (X-Request-Id), once it arrived; a short
    settle afterwards so that a second one would show."""
    rid = resp.headers["X-Request-Id"]
    end = time.monotonic() + timeout
    while True:
        recs = admin_records(api, admin, request_id=rid)
        if recs:
            time.sleep(0.5)
            recs = admin_records(api, admin, request_id=rid)
            assert len(recs) == 1, recs
            assert recs[0]["request_id"] == rid
            return recs[0]
        if time.monotonic() > end:
            pytest.fail("no audit record for request %s within %.0f s" % (rid, timeout))
        time.sleep(0.1)


def assert_denied(rec, actor, action, target_type, target_id, group_id):
    want = dict(actor_id=actor.id, actor_kind=actor.kind, action=action, outcome="denied",
                target_type=target_type, target_id=target_id, group_id=group_id,
                service="membership")
    got = {k: rec[k] for k in want}
    assert got == want, rec
    assert rec["details"].startswith('{"reason":"') and "@" not in rec["details"], rec


@pytest.fixture(scope="module")
def world(api, mk, admin):
    owner, mod, mem, ext, someone = (mk("employee"), mk("employee"), mk("employee"),
                                     mk("extranet"), mk("employee"))
    r = api.call("POST", "/groups", owner.token, {"name": "Denied", "kind": "extranet"})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    for actor, user, role in ((owner, mod, "moderator"), (owner, mem, "member"),
                              (admin, ext, "member")):
        r = api.call("POST", "/groups/%s/members" % gid, actor.token,
                     {"user_id": user.id, "role": role})
        assert r.status_code == 201, r.text
    r = api.call("POST", "/groups/%s/invitations" % gid, owner.token,
                 {"email": "guest-%s@outside.test" % uuid.uuid4().hex[:8]})
    assert r.status_code == 201, r.text
    return dict(owner=owner, mod=mod, mem=mem, ext=ext, someone=someone, gid=gid,
                invitation=r.json()["id"])


def test_refused_add_never_names_an_extranet_user_the_owner_cannot_see(api, admin, mk, world):
    """R4 for the reader of the record: a member E of G shares another group H with extranet
    user X (G's owner is not in H and cannot see X). E's refused attempt to add X to G is in
    G's audit, which G's owner reads: it must not carry X's id."""
    w = world
    e, x, h_owner = mk("employee"), mk("extranet"), mk("employee")
    r = api.call("POST", "/groups/%s/members" % w["gid"], w["owner"].token, {"user_id": e.id})
    assert r.status_code == 201, r.text
    r = api.call("POST", "/groups", h_owner.token, {"name": "H", "kind": "extranet"})
    assert r.status_code == 201, r.text
    h = r.json()["id"]
    for u in (e, x):
        r = api.call("POST", "/groups/%s/members" % h, admin.token, {"user_id": u.id})
        assert r.status_code == 201, r.text
    assert api.call("GET", "/users/%s" % x.id, w["owner"].token).status_code == 404
    r = api.call("POST", "/groups/%s/members" % w["gid"], e.token, {"user_id": x.id})
    assert r.status_code == 403, r.text
    rec = the_record(api, admin, r)
    assert_denied(rec, e, "member.added", "user", "", w["gid"])
    assert x.id not in str(group_records(api, w["owner"], w["gid"]))


def test_member_adding_someone_leaves_one_denied_record(api, admin, world):
    w = world
    r = api.call("POST", "/groups/%s/members" % w["gid"], w["mem"].token,
                 {"user_id": w["someone"].id})
    assert r.status_code == 403, r.text
    rec = the_record(api, admin, r)
    assert_denied(rec, w["mem"], "member.added", "user", w["someone"].id, w["gid"])
    # a member of the group: the owner sees it in the group's audit too
    mine = group_records(api, w["owner"], w["gid"], request_id=rec["request_id"])
    assert [x["event_id"] for x in mine] == [rec["event_id"]]
    # nothing was added
    members = api.call("GET", "/groups/%s/members" % w["gid"], w["owner"].token).json()
    assert w["someone"].id not in {m["user_id"] for m in members["members"]}


def test_moderator_making_itself_owner_leaves_one_denied_record(api, admin, world):
    w = world
    r = api.call("PATCH", "/groups/%s/members/%s" % (w["gid"], w["mod"].id), w["mod"].token,
                 {"role": "owner"})
    assert r.status_code == 403, r.text
    rec = the_record(api, admin, r)
    assert_denied(rec, w["mod"], "group.ownership_transferred", "user", w["mod"].id, w["gid"])
    g = api.call("GET", "/groups/%s" % w["gid"], w["owner"].token).json()
    assert g["owner_id"] == w["owner"].id


def test_extranet_member_changing_its_role_leaves_one_denied_record(api, admin, world):
    w = world
    r = api.call("PATCH", "/groups/%s/members/%s" % (w["gid"], w["ext"].id), w["ext"].token,
                 {"role": "moderator"})
    assert r.status_code == 403, r.text
    rec = the_record(api, admin, r)
    assert_denied(rec, w["ext"], "member.role_changed", "user", w["ext"].id, w["gid"])


@pytest.mark.parametrize("what", ["settings", "archive", "remove", "invite", "revoke"])
def test_member_without_the_right_leaves_one_denied_record(api, admin, world, what):
    w = world
    gid, mem = w["gid"], w["mem"]
    req, action, target = {
        "settings": (("PATCH", "/groups/%s" % gid, {"name": "taken"}), "group.updated",
                     ("group", gid)),
        "archive": (("DELETE", "/groups/%s" % gid, None), "group.archived", ("group", gid)),
        "remove": (("DELETE", "/groups/%s/members/%s" % (gid, w["mod"].id), None),
                   "member.removed", ("user", w["mod"].id)),
        "invite": (("POST", "/groups/%s/invitations" % gid,
                    {"email": "nope-%s@outside.test" % uuid.uuid4().hex[:8]}),
                   "invitation.created", ("group", gid)),
        "revoke": (("DELETE", "/groups/%s/invitations/%s" % (gid, w["invitation"]), None),
                   "invitation.revoked", ("group", gid)),
    }[what]
    r = api.call(req[0], req[1], mem.token, req[2])
    assert r.status_code == 403, r.text
    assert_denied(the_record(api, admin, r), mem, action, target[0], target[1], gid)


def test_extranet_user_creating_a_group_leaves_one_denied_record(api, admin, world):
    r = api.call("POST", "/groups", world["ext"].token, {"name": "Mine", "kind": "extranet"})
    assert r.status_code == 403, r.text
    assert_denied(the_record(api, admin, r), world["ext"], "group.created", "group", "", "")


OUTSIDER_ATTEMPTS = {  # what -> (method, path under the group, body, attempted action)
    "add_itself": ("POST", "/members", "self", "member.added"),
    "settings": ("PATCH", "", {"name": "mine now"}, "group.updated"),
    "archive": ("DELETE", "", None, "group.archived"),
    "make_itself_owner": ("PATCH", "/members/{me}", {"role": "owner"},
                          "group.ownership_transferred"),
    "remove_owner": ("DELETE", "/members/{owner}", None, "member.removed"),
    "leave": ("DELETE", "/members/{me}", None, "member.left"),
    "invite": ("POST", "/invitations", {"email": "x-%s@outside.test" % uuid.uuid4().hex[:8]},
               "invitation.created"),
    "revoke": ("DELETE", "/invitations/{inv}", None, "invitation.revoked"),
}


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("kind", ["extranet", "employee"])
@pytest.mark.parametrize("what", sorted(OUTSIDER_ATTEMPTS))
def test_outsider_attempt_on_a_hidden_group_is_denied_without_group_id(api, admin, mk, world, dc,
                                                                       what, kind, cache):
    """A fresh outsider each time, its memberships either not cached (the attempt reaches
    membership's own check) or cached by a read the gateway refused from the cache (R1 fast
    path): a change is never refused at the gateway, so both leave the record."""
    w = world
    outsider = mk(kind)
    if cache == "warm":
        r = api.call("GET", "/groups/%s" % w["gid"], outsider.token)
        assert r.status_code == 404, r.text
        assert dc.redis_command("HGET", "mem:" + outsider.id, "_") == "1"
    method, sub, body, action = OUTSIDER_ATTEMPTS[what]
    sub = sub.format(me=outsider.id, owner=w["owner"].id, inv=w["invitation"])
    if body == "self":
        body = {"user_id": outsider.id}
    r = api.call(method, "/groups/%s%s" % (w["gid"], sub), outsider.token, body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    rec = the_record(api, admin, r)
    assert_denied(rec, outsider, action, "group", w["gid"], "")
    # The group's owner never learns who probed the group (R1): not by group, not by actor.
    for recs in (group_records(api, w["owner"], w["gid"]),
                 group_records(api, w["owner"], w["gid"], actor_id=outsider.id)):
        assert outsider.id not in str(recs)
        assert rec["event_id"] not in {x["event_id"] for x in recs}
    assert len(admin_records(api, admin, actor_id=outsider.id, action=action)) == 1


def test_missing_group_attempt_is_denied_like_a_hidden_one(api, admin, mk):
    """A uuid that names no group answers exactly like a hidden one and is recorded the same
    way (the two cannot be told apart, R1); a gid that is not a uuid is malformed: none."""
    outsider = mk("extranet")
    gid = str(uuid.uuid4())
    r = api.call("POST", "/groups/%s/members" % gid, outsider.token, {"user_id": outsider.id})
    assert r.status_code == 404, r.text
    assert_denied(the_record(api, admin, r), outsider, "member.added", "group", gid, "")


def test_malformed_input_and_reads_leave_no_record(api, admin, world):
    w = world
    gid, mem, owner = w["gid"], w["mem"], w["owner"]
    quiet = [
        # the gateway refuses a body that is not JSON
        api.call("POST", "/groups/%s/members" % gid, mem.token, data="{not json"),
        # membership refuses malformed fields before any rule (400)
        api.call("POST", "/groups/%s/members" % gid, mem.token, {"user_id": "not-a-uuid"}),
        api.call("POST", "/groups/%s/members" % gid, owner.token,
                 {"user_id": w["someone"].id, "role": "bogus"}),
        api.call("POST", "/groups/%s/invitations" % gid, owner.token, {"email": "no-at-sign"}),
        api.call("PATCH", "/groups/%s" % gid, owner.token, {"name": "x" * 300}),
    ]
    for r in quiet:
        assert r.status_code == 400, r.text
    reads = [api.call("GET", "/groups/%s" % gid, mem.token),
             api.call("GET", "/groups/%s/members" % gid, mem.token),
             api.call("GET", "/groups/%s/invitations" % gid, mem.token)]  # 403: a read
    assert [r.status_code for r in reads] == [200, 200, 403], [r.text for r in reads]
    # A refused change afterwards: once its record arrived, membership's relay has shipped
    # everything written before it (oldest first), so an earlier record would be here too.
    marker = api.call("PATCH", "/groups/%s" % gid, mem.token, {"name": "marker"})
    assert marker.status_code == 403, marker.text
    assert_denied(the_record(api, admin, marker), mem, "group.updated", "group", gid, gid)
    for r in quiet + reads:
        assert admin_records(api, admin, request_id=r.headers["X-Request-Id"]) == [], r.request
