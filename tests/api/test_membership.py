"""Black-box tests of the membership service over HTTP through the real gateway (real
PostgreSQL, Redis, broker, identity, membership): groups, roles, R1 (hidden = missing, same
body), R2, R3, R4 (contacts, profiles), R9 (removal on the very next request, also racing and
with Redis stopped), R13 (invitations: mail, lookup, accept, races, revocation, expiry), and a
randomized isolation matrix compared with a reference model written here.

Runs its own cluster with the login rate limits raised (it signs in many users) and the 2FA
policy for extranet users switched off (R10 is identity's test; here externals must act)."""

import concurrent.futures
import hashlib
import os
import random
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402

ADMIN_EMAIL = "root@membership.test"
ADMIN_PASSWORD = "Membership-Admin-Passw0rd"
PASSWORD = "User-Passw0rd-123"
SEEDS = [int(s) for s in os.environ.get("MEMBERSHIP_SEEDS", "1,2,3").split(",")]


@pytest.fixture(scope="module")
def mc():
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_LOGIN_RATE_IP": "100000",
                                       "EXTRANET_LOGIN_RATE_ACCOUNT": "100000"})
    bins = c.service_bins()
    if not c.gateway_bin() or not c.broker_bin() or "identity" not in bins or \
            "membership" not in bins:
        pytest.skip("gateway, broker, identity or membership not built in %s" % c.build)
    c.start()
    yield c
    c.stop(remove=not os.environ.get("EXTRANET_KEEP_CLUSTER"))


class Api:
    def __init__(self, base):
        self.base = base + "/api/v1"
        self.local = threading.local()

    @property
    def s(self):
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        return self.local.s

    def call(self, method, path, token=None, body=None, params=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return self.s.request(method, self.base + path, json=body, params=params,
                              headers=headers, timeout=30)

    def token(self, email, password=PASSWORD):
        r = self.call("POST", "/auth/login", body={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return r.json()["token"]


class User:
    def __init__(self, id_, email, kind, token):
        self.id, self.email, self.kind, self.token = id_, email, kind, token

    def __repr__(self):
        return "%s(%s)" % (self.kind, self.email)


@pytest.fixture(scope="module")
def api(mc):
    return Api(mc.base_url)


@pytest.fixture(scope="module")
def admin(api):
    t = api.token(ADMIN_EMAIL, ADMIN_PASSWORD)
    r = api.call("PUT", "/admin/policy", t, {"extranet_mfa_required": False})
    assert r.status_code == 200, r.text
    me = api.call("GET", "/me", t).json()
    return User(me["id"], ADMIN_EMAIL, "admin", t)


@pytest.fixture(scope="module")
def mk(api, admin):
    """mk("extranet") -> a new signed-in User of that kind."""
    def make(kind, name=None):
        email = "%s-%s@membership.test" % (name or kind, uuid.uuid4().hex[:10])
        r = api.call("POST", "/admin/users", admin.token,
                     {"email": email, "display_name": name or kind, "kind": kind,
                      "password": PASSWORD})
        assert r.status_code == 201, r.text
        return User(r.json()["id"], email, kind, api.token(email))
    return make


def group(api, owner, kind="extranet", name="G"):
    r = api.call("POST", "/groups", owner.token, {"name": name, "kind": kind})
    assert r.status_code == 201, r.text
    g = r.json()
    assert g["my_role"] == "owner" and g["owner_id"] == owner.id
    return g["id"]


def add(api, actor, gid, user, role="member", expect=201):
    r = api.call("POST", "/groups/%s/members" % gid, actor.token,
                 {"user_id": user.id, "role": role})
    assert r.status_code == expect, r.text
    return r


def err(r):
    """The error body without its request id: what must be identical for hidden and missing."""
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    return (r.status_code, body["error"]["code"], body["error"]["message"])


NOT_FOUND = (404, "not_found", "not found")


def members(api, actor, gid):
    r = api.call("GET", "/groups/%s/members" % gid, actor.token)
    assert r.status_code == 200, r.text
    return {m["user_id"]: m["role"] for m in r.json()["members"]}


# ------------------------------------------------------------------------------------- R1

def group_routes(gid, uid):
    return [("GET", "/groups/%s" % gid, None),
            ("PATCH", "/groups/%s" % gid, {"name": "x"}),
            ("DELETE", "/groups/%s" % gid, None),
            ("GET", "/groups/%s/members" % gid, None),
            ("POST", "/groups/%s/members" % gid, {"user_id": uid}),
            ("PATCH", "/groups/%s/members/%s" % (gid, uid), {"role": "moderator"}),
            ("DELETE", "/groups/%s/members/%s" % (gid, uid), None),
            ("POST", "/groups/%s/invitations" % gid, {"email": "x@y.test"}),
            ("GET", "/groups/%s/invitations" % gid, None),
            ("DELETE", "/groups/%s/invitations/%s" % (gid, uuid.uuid4()), None)]


def response_shape(r):
    """What may not tell a hidden group from a missing one: status, error body without its
    request id, header names, and the values of the content and cache headers."""
    names = sorted(h.lower() for h in r.headers if h.lower() not in ("date",))
    return (r.status_code, err(r), names, len(r.content),
            tuple(r.headers.get(h) for h in ("Content-Type", "Content-Length", "Cache-Control",
                                             "Vary")))


def cold_call(api, mc, method, path, who, body=None):
    """The call with the caller's mem:{user} entry deleted just before it, so the gateway has
    no cached deny and membership's own check answers (the gateway only denies from a warm
    entry, see services/membership/README.md)."""
    assert mc.redis_command("DEL", "mem:%s" % who.id) in (0, 1)
    return api.call(method, path, who.token, body)


def test_r1_the_service_itself_answers_foreign_groups_like_missing_ones(api, mk, admin, mc):
    """The gateway denies from a warm mem:{user} entry before the service is asked: with the
    caller's entry deleted before each probe, membership's own check must answer, exactly like
    a missing group (status, body, header names, length)."""
    owner, ext, emp = mk("employee"), mk("extranet"), mk("employee")
    mine, foreign = group(api, owner), group(api, owner, name="secret")
    add(api, admin, mine, ext)
    add(api, owner, mine, emp)

    def cold(method, path, who, body=None):
        return cold_call(api, mc, method, path, who, body)

    shape = response_shape
    for who in (ext, emp):
        for method, path, body in group_routes(foreign, owner.id):
            missing_path = path.replace(foreign, str(uuid.uuid4()))
            hidden, missing = cold(method, path, who, body), cold(method, missing_path, who, body)
            assert shape(hidden) == shape(missing), (who, method, path, hidden.text)
            assert err(hidden) == NOT_FOUND and "secret" not in hidden.text
    # the cold probes reached the service: it refilled the entry each time
    assert mc.redis_command("EXISTS", "mem:%s" % emp.id) == 1
    assert cold("GET", "/groups/%s" % mine, ext).status_code == 200


def test_r1_foreign_group_answers_like_a_missing_one(api, mk, admin, mc):
    owner, ext, emp = mk("employee"), mk("extranet"), mk("employee")
    mine, foreign = group(api, owner), group(api, owner, name="secret")
    add(api, admin, mine, ext)
    add(api, owner, mine, emp)
    for who in (ext, emp):
        for gid in (foreign, str(uuid.uuid4()), "not-a-uuid", foreign.upper()[:-1] + "Z"):
            for method, path, body in group_routes(gid, owner.id):
                # warm: the gateway may deny from mem:{user}; cold: membership must answer
                for call in (lambda: api.call(method, path, who.token, body),
                             lambda: cold_call(api, mc, method, path, who, body)):
                    r = call()
                    assert err(r) == NOT_FOUND, (who, method, path, r.text)
                    assert "secret" not in r.text and foreign not in r.text
    # No oracle in the headers either: the same header names, values and body length, from
    # the gateway's cached deny and from the service alike.
    for call in (api.call, lambda *a: cold_call(api, mc, a[0], a[1], ext)):
        hidden = call("GET", "/groups/%s/members" % foreign, ext.token)
        missing = call("GET", "/groups/%s/members" % uuid.uuid4(), ext.token)
        assert response_shape(hidden) == response_shape(missing)
        assert "no-store" in (hidden.headers.get("Cache-Control") or "")
    # The same calls on the group they are in do not answer 404 for GET.
    assert api.call("GET", "/groups/%s" % mine, ext.token).status_code == 200


def test_r1_lists_only_my_groups(api, mk, admin):
    owner, ext = mk("employee"), mk("extranet")
    mine = [group(api, owner, name="mine-%d" % i) for i in range(3)]
    others = [group(api, owner, name="other-%d" % i) for i in range(3)]
    for g in mine:
        add(api, admin, g, ext)
    api.call("DELETE", "/groups/%s" % others[0], owner.token)
    seen, cursor = [], ""
    while True:
        r = api.call("GET", "/groups", ext.token,
                     params={"limit": 1, "cursor": cursor, "include_archived": "true"})
        assert r.status_code == 200, r.text
        seen += [g["id"] for g in r.json()["groups"]]
        cursor = r.json().get("next_cursor", "")
        if not cursor:
            break
    assert sorted(seen) == sorted(mine)
    # An admin sees every group.
    ids = set()
    cursor = ""
    while True:
        r = api.call("GET", "/groups", admin.token,
                     params={"limit": 200, "cursor": cursor, "include_archived": "true"})
        ids |= {g["id"] for g in r.json()["groups"]}
        cursor = r.json().get("next_cursor", "")
        if not cursor:
            break
    assert set(mine + others) <= ids


def test_r1_query_parameters_cannot_widen_the_list(api, mk):
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    for params in ({"user_id": owner.id}, {"ids": g}, {"all": "true"}):
        r = api.call("GET", "/groups", ext.token, params=params)
        assert r.status_code == 400, r.text
    assert api.call("GET", "/groups", ext.token).json().get("groups", []) == []


# ------------------------------------------------------------------------------ R2 and R3

def test_r2_no_extranet_user_in_an_internal_group(api, mk, admin):
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner, kind="internal")
    shared = group(api, owner)          # so that the owner may see ext (R4)
    add(api, admin, shared, ext)
    for actor in (owner, admin):
        r = add(api, actor, g, ext, expect=400)
        assert "internal" in r.json()["error"]["message"]
    r = api.call("POST", "/groups/%s/invitations" % g, owner.token, {"email": "new@x.test"})
    assert r.status_code == 400 and "extranet groups only" in r.json()["error"]["message"]
    assert ext.id not in members(api, owner, g)


def test_r3_extranet_users_are_only_members(api, mk, admin):
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    for role in ("moderator", "owner"):
        assert add(api, admin, g, ext, role=role, expect=400).status_code == 400
    add(api, admin, g, ext)
    for actor in (owner, admin):
        for role in ("moderator", "owner"):
            r = api.call("PATCH", "/groups/%s/members/%s" % (g, ext.id), actor.token,
                         {"role": role})
            assert r.status_code == 400, r.text
    # The extranet member making itself moderator or owner: forbidden (it sees the group).
    for role in ("moderator", "owner"):
        r = api.call("PATCH", "/groups/%s/members/%s" % (g, ext.id), ext.token, {"role": role})
        assert r.status_code == 403, r.text
    assert members(api, owner, g) == {owner.id: "owner", ext.id: "member"}


def test_r3_moderator_cannot_escalate(api, mk):
    owner, mod, emp, emp2 = mk("employee"), mk("employee"), mk("employee"), mk("employee")
    g = group(api, owner)
    add(api, owner, g, mod, role="moderator")
    add(api, owner, g, emp)
    for role in ("owner", "moderator"):
        for target in (mod, emp):
            r = api.call("PATCH", "/groups/%s/members/%s" % (g, target.id), mod.token,
                         {"role": role})
            assert r.status_code == 403, r.text
    add(api, mod, g, emp2, role="moderator", expect=403)
    add(api, mod, g, emp2, role="owner", expect=400)
    add(api, mod, g, emp2)   # moderators do add members
    # Moderators remove members, not the owner or other moderators.
    r = api.call("DELETE", "/groups/%s/members/%s" % (g, owner.id), mod.token)
    assert r.status_code == 409
    assert members(api, owner, g) == {owner.id: "owner", mod.id: "moderator",
                                      emp.id: "member", emp2.id: "member"}
    r = api.call("DELETE", "/groups/%s/members/%s" % (g, emp2.id), mod.token)
    assert r.status_code == 204
    # Settings and archiving: the owner only.
    assert api.call("PATCH", "/groups/%s" % g, mod.token, {"name": "x"}).status_code == 403
    assert api.call("DELETE", "/groups/%s" % g, mod.token).status_code == 403
    assert api.call("GET", "/groups/%s/invitations" % g, emp.token).status_code == 403


def test_r3_exactly_one_owner_and_transfer(api, mk, admin):
    owner, emp, ext = mk("employee"), mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, owner, g, emp)
    add(api, admin, g, ext)
    r = api.call("PATCH", "/groups/%s/members/%s" % (g, owner.id), owner.token,
                 {"role": "member"})
    assert r.status_code == 409
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, owner.id),
                    owner.token).status_code == 409
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, owner.id),
                    admin.token).status_code == 409
    r = api.call("PATCH", "/groups/%s/members/%s" % (g, emp.id), owner.token, {"role": "owner"})
    assert r.status_code == 200, r.text
    m = members(api, emp, g)
    assert m == {owner.id: "moderator", emp.id: "owner", ext.id: "member"}
    assert list(m.values()).count("owner") == 1
    assert api.call("GET", "/groups/%s" % g, emp.token).json()["owner_id"] == emp.id
    # The former owner is a moderator now: no more settings.
    assert api.call("PATCH", "/groups/%s" % g, owner.token, {"name": "y"}).status_code == 403
    # Leaving works for everyone but the owner.
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), ext.token).status_code == 204
    assert err(api.call("GET", "/groups/%s" % g, ext.token)) == NOT_FOUND


def test_settings_archive_and_validation(api, mk, admin):
    owner, emp = mk("employee"), mk("employee")
    g = group(api, owner)
    r = api.call("PATCH", "/groups/%s" % g, owner.token,
                 {"name": "Renamed", "task_visibility": "involved",
                  "external_file_access": "none", "description": "d"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["task_visibility"], body["external_file_access"]) == \
        ("Renamed", "involved", "none")
    for bad in ({"task_visibility": "some"}, {"external_file_access": "write"},
                {"name": "x" * 201}):
        assert api.call("PATCH", "/groups/%s" % g, owner.token, bad).status_code == 400
    for bad in ({"name": "", "kind": "extranet"}, {"name": "a", "kind": "public"}):
        assert api.call("POST", "/groups", owner.token, bad).status_code == 400
    assert api.call("PATCH", "/groups/%s" % g, admin.token, {"name": "A"}).status_code == 200
    assert api.call("DELETE", "/groups/%s" % g, owner.token).status_code == 204
    assert api.call("GET", "/groups/%s" % g, owner.token).json()["archived"] is True
    add(api, owner, g, emp, expect=409)
    assert api.call("PATCH", "/groups/%s" % g, owner.token, {"name": "B"}).status_code == 409
    assert g not in [x["id"] for x in api.call("GET", "/groups", owner.token).json()["groups"]]


def test_extranet_users_cannot_create_groups(api, mk):
    ext = mk("extranet")
    r = api.call("POST", "/groups", ext.token, {"name": "mine", "kind": "extranet"})
    assert r.status_code == 403
    assert api.call("POST", "/groups", None, {"name": "x", "kind": "extranet"}).status_code == 401


# ------------------------------------------------------------------------------------- R4

def test_r4_contacts_only_shared_groups(api, mk, admin):
    emp, other_emp = mk("employee"), mk("employee")
    e1, e2, e3 = mk("extranet"), mk("extranet"), mk("extranet")
    a = group(api, emp, name="A")
    b = group(api, other_emp, name="B")
    add(api, admin, a, e1)
    add(api, admin, a, e2)
    add(api, admin, b, e3)
    r = api.call("GET", "/contacts", e1.token)
    assert r.status_code == 200, r.text
    people = r.json()["people"]
    assert {p["id"] for p in people} == {emp.id, e2.id}
    for p in people:   # an allowlist of fields, never identity's whole record
        assert set(p) <= {"id", "display_name", "kind", "email"}
    missing = err(api.call("GET", "/users/%s" % uuid.uuid4(), e1.token))
    assert missing == NOT_FOUND
    for hidden in (e3, other_emp, admin):
        assert err(api.call("GET", "/users/%s" % hidden.id, e1.token)) == missing
    for seen in (emp, e2, e1):
        r = api.call("GET", "/users/%s" % seen.id, e1.token)
        assert r.status_code == 200 and r.json()["id"] == seen.id
        assert set(r.json()) <= {"id", "display_name", "kind", "email"}
    # Employees: every employee, extranet users only where they share a group.
    assert api.call("GET", "/users/%s" % other_emp.id, emp.token).status_code == 200
    assert err(api.call("GET", "/users/%s" % e3.id, emp.token)) == NOT_FOUND
    assert api.call("GET", "/users/%s" % e1.id, emp.token).status_code == 200
    # Adding a hidden extranet user by id: it does not exist for this employee.
    assert err(add(api, emp, a, e3, expect=404)) == NOT_FOUND
    # Admins see everyone.
    for u in (e1, e3, emp, other_emp):
        assert api.call("GET", "/users/%s" % u.id, admin.token).status_code == 200
    assert err(api.call("GET", "/users/not-a-uuid", e1.token)) == NOT_FOUND
    # A deactivated co-member is no contact any more (the profile stays visible).
    e4 = mk("extranet")
    add(api, admin, a, e4)
    assert e4.id in {p["id"] for p in api.call("GET", "/contacts", e1.token).json()["people"]}
    assert api.call("PATCH", "/admin/users/%s" % e4.id, admin.token,
                    {"status": "deactivated"}).status_code == 200
    assert e4.id not in {p["id"] for p in api.call("GET", "/contacts", e1.token).json()["people"]}
    # Removal ends the contact at once.
    assert api.call("DELETE", "/groups/%s/members/%s" % (a, e2.id), emp.token).status_code == 204
    assert {p["id"] for p in api.call("GET", "/contacts", e1.token).json()["people"]} == {emp.id}
    assert err(api.call("GET", "/users/%s" % e2.id, e1.token)) == NOT_FOUND


# ------------------------------------------------------------------------------------- R9

def test_r9_removal_takes_effect_on_the_next_request(api, mk, admin, mc):
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, admin, g, ext)
    for _ in range(3):   # fills and then hits the mem:{user} cache
        assert api.call("GET", "/groups/%s" % g, ext.token).status_code == 200
    assert mc.redis_command("HGET", "mem:" + ext.id, g) == "member"
    r = api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), owner.token)
    assert r.status_code == 204, r.text
    assert err(api.call("GET", "/groups/%s" % g, ext.token)) == NOT_FOUND
    assert err(api.call("GET", "/groups/%s/members" % g, ext.token)) == NOT_FOUND
    assert api.call("GET", "/groups", ext.token).json().get("groups", []) == []
    assert mc.redis_command("HGET", "mem:" + ext.id, g) is None


def test_r9_race_no_request_succeeds_after_removal_returned(api, mk, admin, mc):
    """Eight clients hammer GET /groups/{gid} as a member while a flusher keeps deleting the
    member's mem:{user} entry (so fills race the removal) and the owner removes the member;
    once the removal returned, not one request started after it may succeed. The flusher
    stops when the removal returns, so a fill that wrote the removed membership back would
    survive and be seen. Several rounds."""
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    lock = threading.Lock()
    counts = {"ok": 0, "404": 0, "other": 0}
    late = []
    for round_ in range(6):
        add(api, admin, g, ext)
        stop, removed = threading.Event(), threading.Event()
        removed_at = [None]

        def hammer():
            s = Api(mc.base_url)
            while not stop.is_set():
                started = time.monotonic()
                r = s.call("GET", "/groups/%s" % g, ext.token)
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                        if removed_at[0] is not None and started > removed_at[0]:
                            late.append((round_, started - removed_at[0]))
                    elif r.status_code == 404:
                        counts["404"] += 1
                    else:
                        counts["other"] += 1

        def flusher():
            while not removed.is_set():
                mc.redis_command("DEL", "mem:" + ext.id)
                time.sleep(0.002)

        threads = [threading.Thread(target=hammer) for _ in range(8)] + \
            [threading.Thread(target=flusher)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.4)
            r = api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), owner.token)
            assert r.status_code == 204, r.text
            removed_at[0] = time.monotonic()
            removed.set()
            time.sleep(0.6)
        finally:
            removed.set()
            stop.set()
            for t in threads:
                t.join()
    assert counts["ok"] > 0 and counts["404"] > 0, counts
    assert counts["other"] == 0, counts
    assert not late, late[:5]


@pytest.fixture(scope="module")
def slowfill():
    """A second cluster whose membership fills sleep 400 ms between reading PostgreSQL and
    writing Redis (EXTRANET_MEMBERSHIP_FILL_DELAY_MS, a test-only knob): the window in which
    a removal can race a fill, made wide enough to hit every time."""
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_MEMBERSHIP_FILL_DELAY_MS": "400"})
    if "membership" not in c.service_bins() or not c.gateway_bin():
        pytest.skip("membership or gateway not built")
    c.start()
    yield c
    c.stop(remove=not os.environ.get("EXTRANET_KEEP_CLUSTER"))


def test_r9_a_fill_racing_a_removal_never_writes_it_back(slowfill):
    api = Api(slowfill.base_url)
    t_admin = api.token(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert api.call("PUT", "/admin/policy", t_admin,
                    {"extranet_mfa_required": False}).status_code == 200
    users = {}
    for kind in ("employee", "extranet"):
        email = "%s-%s@slowfill.test" % (kind, uuid.uuid4().hex[:8])
        r = api.call("POST", "/admin/users", t_admin, {"email": email, "kind": kind,
                                                        "password": PASSWORD})
        assert r.status_code == 201, r.text
        users[kind] = (r.json()["id"], api.token(email))
    (owner_id, owner), (ext_id, ext) = users["employee"], users["extranet"]
    g = api.call("POST", "/groups", owner, {"name": "slow", "kind": "extranet"}).json()["id"]
    r = api.call("POST", "/groups/%s/members" % g, t_admin, {"user_id": ext_id})
    assert r.status_code == 201, r.text
    assert api.call("GET", "/groups/%s" % g, owner).status_code == 200   # owner's entry warm
    slowfill.redis_command("DEL", "mem:" + ext_id)
    result = {}

    def member_read():
        result["status"] = Api(slowfill.base_url).call("GET", "/groups/%s" % g, ext).status_code

    reader = threading.Thread(target=member_read)
    reader.start()
    deadline = time.monotonic() + 5
    while slowfill.redis_command("EXISTS", "fill:mem:" + ext_id) != 1:   # the fill holds its lease
        assert time.monotonic() < deadline, "the member's fill never took its lease"
        time.sleep(0.005)
    r = api.call("DELETE", "/groups/%s/members/%s" % (g, ext_id), owner)
    assert r.status_code == 204, r.text
    reader.join()
    assert result["status"] == 200           # it started (and read PostgreSQL) before the removal
    assert slowfill.redis_command("EXISTS", "mem:" + ext_id) == 0, \
        "the fill wrote the removed membership back"
    assert err(api.call("GET", "/groups/%s" % g, ext)) == NOT_FOUND


def test_r9_redis_stopped_answers_stay_correct(api, mk, admin, mc):
    owner, ext, emp = mk("employee"), mk("extranet"), mk("employee")
    g = group(api, owner)
    add(api, admin, g, ext)
    assert api.call("GET", "/groups/%s" % g, ext.token).status_code == 200
    mc.stop_service("redis")
    try:
        # Reads fall back to PostgreSQL: the member still sees it, a stranger does not.
        assert api.call("GET", "/groups/%s" % g, ext.token).status_code == 200
        assert err(api.call("GET", "/groups/%s" % g, emp.token)) == NOT_FOUND
        # A removal commits but cannot be confirmed in force everywhere: 503, never 204.
        r = api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), owner.token)
        assert r.status_code == 503, r.text
        assert err(api.call("GET", "/groups/%s" % g, ext.token)) == NOT_FOUND
        assert ext.id not in members(api, owner, g)
        # Adding still works (and loosening needs no Redis to be safe).
        add(api, owner, g, emp)
        assert api.call("GET", "/groups/%s" % g, emp.token).status_code == 200
    finally:
        mc.start_service("redis")
    assert err(api.call("GET", "/groups/%s" % g, ext.token)) == NOT_FOUND
    assert api.call("GET", "/groups/%s" % g, emp.token).status_code == 200
    # The outbox drains once Redis is back.
    deadline = time.monotonic() + 10
    while mc.psql("SELECT count(*) FROM membership.pending_invalidations")[0][0] != "0":
        assert time.monotonic() < deadline, "pending invalidations never drained"
        time.sleep(0.2)


def test_r9_paused_redis_never_keeps_a_removed_member(api, mk, admin, mc):
    """Redis frozen (SIGSTOP) with the member's cache entry in it: the removal answers 503 and
    the tick clears the entry once Redis answers again."""
    import signal
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, admin, g, ext)
    assert api.call("GET", "/groups/%s" % g, ext.token).status_code == 200
    assert mc.redis_command("HGET", "mem:" + ext.id, g) == "member"
    mc.kill_service("redis", signal.SIGSTOP)
    try:
        r = api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), owner.token)
        assert r.status_code == 503, r.text
    finally:
        mc.kill_service("redis", signal.SIGCONT)
    deadline = time.monotonic() + 5
    while mc.redis_command("HGET", "mem:" + ext.id, g) is not None:
        assert time.monotonic() < deadline, "stale membership survived in Redis"
        time.sleep(0.1)
    assert err(api.call("GET", "/groups/%s" % g, ext.token)) == NOT_FOUND


def err_or_none(r):
    """err(r) for a well-formed error body, else None (for load threads, which must record
    a malformed answer rather than die on an assertion)."""
    try:
        return err(r)
    except (AssertionError, ValueError, AttributeError, TypeError):
        return None


def test_r9_race_no_request_succeeds_after_deactivation_returned(api, mk, admin, mc):
    """Eight clients hammer GET /groups/{gid} and GET /groups/{gid}/members as an extranet
    member while a flusher keeps deleting the member's mem:{user} and sess:{sha256(token)}
    entries (so the gateway keeps asking identity.Authenticate, which refills sess:{h} under
    its lease, and membership refills mem:{user}) and an admin deactivates the member
    (PATCH /admin/users/{id} status=deactivated). Once the deactivation returned, not one
    request started after it may succeed: its sessions are revoked in PostgreSQL and sess:{h}
    deleted before it answers, and a refill that read PostgreSQL before the commit must not
    write the session back. The flusher stops when the deactivation returns, so a stale
    entry written back would survive and be seen. A fresh user every round (a deactivated
    user stays deactivated)."""
    owner = mk("employee")
    g = group(api, owner)
    lock = threading.Lock()
    counts = {"ok": 0, "401": 0, "404": 0, "other": 0}
    others, late = [], []
    for round_ in range(6):
        ext = mk("extranet")
        add(api, admin, g, ext)
        sess_key = "sess:" + hashlib.sha256(ext.token.encode()).hexdigest()
        assert api.call("GET", "/groups/%s" % g, ext.token).status_code == 200
        assert mc.redis_command("EXISTS", sess_key) == 1   # the key the flusher deletes
        stop, deactivated = threading.Event(), threading.Event()
        deactivated_at = [None]
        ok_before = counts["ok"]

        def hammer(i):
            s = Api(mc.base_url)
            n = i
            while not stop.is_set():
                path = "/groups/%s" % g if n % 2 == 0 else "/groups/%s/members" % g
                n += 1
                started = time.monotonic()
                try:
                    r = s.call("GET", path, ext.token)
                except requests.RequestException as e:
                    with lock:
                        counts["other"] += 1
                        others.append((round_, path, "no answer", repr(e)[:200]))
                    continue
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                        if deactivated_at[0] is not None and started > deactivated_at[0]:
                            late.append((round_, path, round(started - deactivated_at[0], 4)))
                    elif r.status_code in (401, 404):
                        counts[str(r.status_code)] += 1
                    else:
                        counts["other"] += 1
                        others.append((round_, path, r.status_code, r.text[:200]))

        def flusher():
            # mem:{user} every time, sess:{h} every third time: refills of both race the
            # deactivation, and sess:{h} is still cached most of the time, so the cache-hit
            # path must be revoked too (by identity's delete, not by this flusher).
            n = 0
            while not deactivated.is_set():
                if n % 3 == 0:
                    mc.redis_command("DEL", "mem:" + ext.id, sess_key)
                else:
                    mc.redis_command("DEL", "mem:" + ext.id)
                n += 1
                time.sleep(0.002)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)] + \
            [threading.Thread(target=flusher)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.4)
            r = api.call("PATCH", "/admin/users/" + ext.id, admin.token,
                         {"status": "deactivated"})
            assert r.status_code == 200 and r.json()["status"] == "deactivated", r.text
            deactivated_at[0] = time.monotonic()
            deactivated.set()
            time.sleep(0.6)
        finally:
            deactivated.set()
            stop.set()
            for t in threads:
                t.join()
        assert not late, (counts, late[:10])
        assert counts["ok"] > ok_before, (round_, "no 200 at all before the deactivation", counts)
        # nothing brought the revoked session back into the cache
        assert mc.redis_command("EXISTS", sess_key) == 0, (round_, "sess:{h} written back")
        r = api.call("GET", "/groups/%s" % g, ext.token)
        assert r.status_code == 401, (round_, r.status_code, r.text)
    assert counts["ok"] > 0 and counts["401"] + counts["404"] > 0, counts
    assert counts["other"] == 0, (counts, others[:5])
    assert not late, (counts, late[:10])


def test_r9_redis_stopped_mid_run_under_load_answers_stay_correct(api, mk, admin, mc):
    """Threads keep asking GET /groups/{G} as (a) a member, who must always get 200, (b) an
    extranet user outside G (in a group of their own, so they have a mem:{user} entry), who
    must always get 404 with exactly the body of a missing id (and does get it for one), and
    (c) a member removed partway through. Redis is stopped mid-run, the removal happens while
    it is down (204 or 503: both mean committed), and Redis is started again; the load goes on
    throughout. Reads with Redis down fall back to PostgreSQL (membership and gateway
    READMEs), so no 503 is allowed for anyone's read, never a 200 for the outsider, and never
    a 200 for the removed member on a request started after the removal returned."""
    owner, member, outsider, leaver = mk("employee"), mk("extranet"), mk("extranet"), \
        mk("extranet")
    g, other = group(api, owner), group(api, owner, name="other")
    add(api, admin, g, member)
    add(api, admin, g, leaver)
    add(api, admin, other, outsider)
    for who in (member, leaver):
        assert api.call("GET", "/groups/%s" % g, who.token).status_code == 200
    missing = err(api.call("GET", "/groups/%s" % uuid.uuid4(), outsider.token))
    assert missing == NOT_FOUND
    lock = threading.Lock()
    counts = {}
    bad = []
    stop = threading.Event()
    removing_at, removed_at = [None], [None]
    phase = ["redis up"]

    def note(who, what, r, started, path):
        key = (who, phase[0], r.status_code)
        with lock:
            counts[key] = counts.get(key, 0) + 1
            if what:
                bad.append((who, phase[0], what, path, r.status_code, r.text[:160],
                            None if removed_at[0] is None
                            else round(started - removed_at[0], 4)))

    def get(s, who, gid, token, path):
        """The answer, or None (recorded as bad) when there was none at all."""
        started = time.monotonic()
        try:
            return s.call("GET", "/groups/%s" % gid, token), started
        except requests.RequestException as e:
            with lock:
                counts[(who, phase[0], "no answer")] = \
                    counts.get((who, phase[0], "no answer"), 0) + 1
                bad.append((who, phase[0], "no answer", path, repr(e)[:160]))
            return None, started

    def as_member():
        s = Api(mc.base_url)
        while not stop.is_set():
            r, started = get(s, "member", g, member.token, "G")
            if r is not None:
                note("member", None if r.status_code == 200 else "member not 200", r, started,
                     "G")

    def as_outsider():
        s = Api(mc.base_url)
        n = 0
        while not stop.is_set():
            # alternately G and a missing id: both must be the same NOT_FOUND
            gid = g if n % 2 == 0 else str(uuid.uuid4())
            n += 1
            path = "G" if gid == g else "missing"
            r, started = get(s, "outsider", gid, outsider.token, path)
            if r is not None:
                ok = r.status_code == 404 and err_or_none(r) == missing
                note("outsider", None if ok else "outsider not the missing-id 404", r, started,
                     path)

    def as_leaver():
        s = Api(mc.base_url)
        while not stop.is_set():
            r, started = get(s, "leaver", g, leaver.token, "G")
            if r is None:
                continue
            after = removed_at[0] is not None and started > removed_at[0]
            # answered before the removal was even sent: still a member
            before = removing_at[0] is None or time.monotonic() < removing_at[0]
            if r.status_code == 200:
                what = "200 after the removal returned" if after else None
            elif r.status_code == 404:
                what = "404 before the removal" if before else \
                    None if err_or_none(r) == NOT_FOUND else "404 with another body"
            else:
                what = "neither 200 nor 404"
            note("leaver", what, r, started, "G")

    threads = [threading.Thread(target=f) for f in (as_member, as_outsider, as_leaver)
               for _ in range(3)]
    for t in threads:
        t.start()
    redis_stopped = False
    removal = None
    try:
        time.sleep(0.7)
        phase[0] = "redis stopping"
        mc.stop_service("redis")
        redis_stopped = True
        phase[0] = "redis down"
        time.sleep(1.0)
        removing_at[0] = time.monotonic()
        r = api.call("DELETE", "/groups/%s/members/%s" % (g, leaver.id), owner.token)
        removal = r.status_code
        assert r.status_code in (204, 503), r.text
        removed_at[0] = time.monotonic()
        phase[0] = "redis down, removed"
        time.sleep(1.5)
        phase[0] = "redis starting"
        mc.start_service("redis")
        redis_stopped = False
        phase[0] = "redis up again"
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        if redis_stopped:
            mc.start_service("redis")
    summary = sorted(counts.items())
    seen = {(who, st) for (who, _, st) in counts}
    assert not bad, (removal, summary, bad[:10])
    assert ("member", 200) in seen and ("outsider", 404) in seen, summary
    assert ("leaver", 200) in seen and ("leaver", 404) in seen, summary
    # Each kind of caller was really served while Redis was down, not only around it.
    for who in ("member", "outsider", "leaver"):
        assert any(k[0] == who and k[1].startswith("redis down") for k in counts), summary
    assert err(api.call("GET", "/groups/%s" % g, leaver.token)) == NOT_FOUND
    assert leaver.id not in members(api, owner, g)
    assert api.call("GET", "/groups/%s" % g, member.token).status_code == 200
    deadline = time.monotonic() + 10
    while mc.psql("SELECT count(*) FROM membership.pending_invalidations")[0][0] != "0":
        assert time.monotonic() < deadline, "pending invalidations never drained"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ R13

TOKEN_RE = re.compile(r"/invitations/([A-Za-z0-9_-]{43})\b")


@pytest.fixture(scope="module")
def mailbox(mc):
    from conftest import Mailbox
    return Mailbox(mc.mail_dir)


def invite(api, actor, gid, email, mailbox, expect=201):
    r = api.call("POST", "/groups/%s/invitations" % gid, actor.token, {"email": email})
    assert r.status_code == expect, r.text
    if r.json().get("state") != "pending":
        return r.json(), None
    m = mailbox.wait(to=email, subject="Invitation")
    tokens = TOKEN_RE.findall(mailbox.text(m))
    assert len(tokens) == 1, mailbox.text(m)
    return r.json(), tokens[0]


def test_r13_invitation_creates_an_extranet_account(api, mk, mailbox):
    owner = mk("employee")
    g = group(api, owner, name="Project Falcon")
    email = "guest-%s@outside.test" % uuid.uuid4().hex[:8]
    inv, token = invite(api, owner, g, email, mailbox)
    assert inv["state"] == "pending" and inv["email"] == email
    r = api.call("GET", "/invitations/%s" % token)
    assert r.status_code == 200, r.text
    assert r.json() == {"email": email, "group_name": "Project Falcon",
                        "expires_at": inv["expires_at"]}
    r = api.call("POST", "/invitations/%s/accept" % token, None,
                 {"display_name": "Guest", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json() == {"email": email, "group_id": g}
    t = api.token(email)
    me = api.call("GET", "/me", t).json()
    assert me["kind"] == "extranet"
    assert [x["id"] for x in api.call("GET", "/groups", t).json()["groups"]] == [g]
    assert members(api, owner, g)[me["id"]] == "member"
    # Redeemed at most once.
    assert err(api.call("GET", "/invitations/%s" % token)) == NOT_FOUND
    r = api.call("POST", "/invitations/%s/accept" % token, None,
                 {"display_name": "Again", "password": PASSWORD})
    assert err(r) == NOT_FOUND
    states = {i["id"]: i["state"] for i in
              api.call("GET", "/groups/%s/invitations" % g, owner.token).json()["invitations"]}
    assert states[inv["id"]] == "accepted"


def test_r13_unknown_and_malformed_tokens_look_the_same(api):
    missing = err(api.call("GET", "/invitations/%s" % ("A" * 43)))
    assert missing == NOT_FOUND
    for tok in ("short", "A" * 44, "A" * 42 + "=", "%2e%2e"):
        assert err(api.call("GET", "/invitations/%s" % tok)) == missing
        r = api.call("POST", "/invitations/%s/accept" % tok, None,
                     {"display_name": "x", "password": PASSWORD})
        assert err(r) == missing


def test_r13_existing_account_redeems_only_when_signed_in(api, mk, mailbox):
    owner, ext, stranger = mk("employee"), mk("extranet"), mk("extranet")
    g = group(api, owner)
    fresh = "nobody-%s@outside.test" % uuid.uuid4().hex[:8]
    inv_a, tok_a = invite(api, owner, g, ext.email, mailbox)
    inv_b, tok_b = invite(api, owner, g, fresh, mailbox)
    assert inv_a["state"] == inv_b["state"] == "pending"
    look_a, look_b = api.call("GET", "/invitations/" + tok_a), api.call("GET", "/invitations/" + tok_b)
    assert look_a.status_code == look_b.status_code == 200
    assert set(look_a.json()) == set(look_b.json())
    # Anonymous redeem of an existing account's invitation: the same answer, no membership.
    r = api.call("POST", "/invitations/%s/accept" % tok_a, None,
                 {"display_name": "Imposter", "password": "Other-Passw0rd-9"})
    assert r.status_code == 200 and set(r.json()) == {"email", "group_id"}
    assert ext.id not in members(api, owner, g)
    with pytest.raises(AssertionError):
        api.token(ext.email, "Other-Passw0rd-9")   # no password was changed
    # Signed in as someone else: like an unknown token.
    assert err(api.call("POST", "/invitations/%s/join" % tok_a, stranger.token)) == NOT_FOUND
    # Signed in as the invited address: joins.
    r = api.call("POST", "/invitations/%s/join" % tok_a, ext.token)
    assert r.status_code == 200, r.text
    assert members(api, owner, g)[ext.id] == "member"
    assert err(api.call("POST", "/invitations/%s/join" % tok_a, ext.token)) == NOT_FOUND


def test_r13_employee_email_is_added_at_once(api, mk, mailbox):
    owner, emp = mk("employee"), mk("employee")
    g = group(api, owner)
    inv, token = invite(api, owner, g, emp.email.upper(), mailbox)
    assert inv["state"] == "added" and token is None
    assert members(api, owner, g)[emp.id] == "member"


def test_r13_revoked_or_expired_cannot_be_redeemed(api, mk, admin, mailbox, mc):
    owner, mod, ext = mk("employee"), mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, owner, g, mod, role="moderator")
    add(api, admin, g, ext)
    inv, token = invite(api, mod, g, "r-%s@outside.test" % uuid.uuid4().hex[:6], mailbox)
    # Members cannot list or revoke; strangers do not see it at all.
    assert api.call("DELETE", "/groups/%s/invitations/%s" % (g, inv["id"]), ext.token).status_code == 403
    stranger = mk("employee")
    assert err(api.call("DELETE", "/groups/%s/invitations/%s" % (g, inv["id"]), stranger.token)) == NOT_FOUND
    assert api.call("DELETE", "/groups/%s/invitations/%s" % (g, inv["id"]), owner.token).status_code == 204
    assert api.call("DELETE", "/groups/%s/invitations/%s" % (g, inv["id"]), owner.token).status_code == 409
    assert err(api.call("GET", "/invitations/" + token)) == NOT_FOUND
    r = api.call("POST", "/invitations/%s/accept" % token, None,
                 {"display_name": "x", "password": PASSWORD})
    assert err(r) == NOT_FOUND
    inv2, token2 = invite(api, owner, g, "e-%s@outside.test" % uuid.uuid4().hex[:6], mailbox)
    mc.psql("UPDATE membership.invitations SET expires_at = now() - interval '1 second' "
            "WHERE id = :'id'", id=inv2["id"])
    assert err(api.call("GET", "/invitations/" + token2)) == NOT_FOUND
    r = api.call("POST", "/invitations/%s/accept" % token2, None,
                 {"display_name": "x", "password": PASSWORD})
    assert err(r) == NOT_FOUND
    states = {i["id"]: i["state"] for i in
              api.call("GET", "/groups/%s/invitations" % g, owner.token).json()["invitations"]}
    assert states == {inv["id"]: "revoked", inv2["id"]: "expired"}


def test_r1_r13_another_groups_invitation_cannot_be_revoked(api, mk, mailbox, mc):
    """Revoking group B's invitation through my own group A's route, or through B's route
    while not in B, answers exactly like a missing invitation (warm and cold cache), and B's
    invitation stays pending."""
    a_owner, b_owner = mk("employee"), mk("employee")
    ga, gb = group(api, a_owner), group(api, b_owner, name="secret")
    inv_a, _ = invite(api, a_owner, ga, "ra-%s@outside.test" % uuid.uuid4().hex[:6], mailbox)
    inv_b, _ = invite(api, b_owner, gb, "rb-%s@outside.test" % uuid.uuid4().hex[:6], mailbox)

    def revoke(gid, iid, cold):
        path = "/groups/%s/invitations/%s" % (gid, iid)
        if cold:
            return cold_call(api, mc, "DELETE", path, a_owner)
        return api.call("DELETE", path, a_owner.token)

    for cold in (False, True):
        for gid in (ga, gb):
            missing = revoke(gid, uuid.uuid4(), cold)
            assert err(missing) == NOT_FOUND, missing.text
            for iid in (inv_b["id"], inv_b["id"].upper()):
                r = revoke(gid, iid, cold)
                assert response_shape(r) == response_shape(missing), (gid == ga, cold, r.text)
                assert "secret" not in r.text and inv_b["id"] not in r.text.lower()
    # No route revokes by invitation id alone.
    r = api.call("DELETE", "/invitations/%s" % inv_b["id"], a_owner.token)
    assert r.status_code in (404, 405), r.text
    states = {i["id"]: i["state"] for i in
              api.call("GET", "/groups/%s/invitations" % gb, b_owner.token).json()["invitations"]}
    assert states == {inv_b["id"]: "pending"}
    # The owner's own revoke still works.
    assert revoke(ga, inv_a["id"], False).status_code == 204


def test_r9_deactivated_or_expired_accounts_are_never_added(api, mk, admin, mailbox, mc):
    """A deactivated or expired account does not come back through a new membership: by id it
    looks like a missing user to owners (R4), an admin is told why (409); invited by email, a
    deactivated employee is refused (409), and a deactivated extranet account gets an ordinary
    invitation, like any address it cannot be told apart from."""
    owner = mk("employee")
    g, shared = group(api, owner), group(api, owner)
    gone_emp, gone_ext, expired_emp, fine = (mk("employee"), mk("extranet"), mk("employee"),
                                             mk("employee"))
    add(api, admin, shared, gone_ext)      # the owner sees gone_ext (a co-member)
    for u in (gone_emp, gone_ext):
        assert api.call("PATCH", "/admin/users/%s" % u.id, admin.token,
                        {"status": "deactivated"}).status_code == 200
    mc.psql("UPDATE identity.users SET expires_at = now() - interval '1 second' "
            "WHERE id = :'id'", id=expired_emp.id)
    ghost = User(str(uuid.uuid4()), "ghost@x.test", "employee", None)
    missing = add(api, owner, g, ghost, expect=404)
    for u in (gone_emp, gone_ext, expired_emp):
        r = add(api, owner, g, u, expect=404)
        assert response_shape(r) == response_shape(missing), (u, r.text)
        r = add(api, admin, g, u, expect=409)
        assert "deactivated" in r.json()["error"]["message"], r.text
    for u in (gone_emp, expired_emp):
        r = api.call("POST", "/groups/%s/invitations" % g, owner.token, {"email": u.email})
        assert r.status_code == 409 and "deactivated" in r.text, (u, r.text)
    inv, token = invite(api, owner, g, gone_ext.email, mailbox)
    assert inv["state"] == "pending" and token
    assert set(members(api, owner, g)) == {owner.id}
    add(api, owner, g, fine)               # a usable account is still added
    assert set(members(api, owner, g)) == {owner.id, fine.id}


def test_r13_twenty_racing_redeems_win_once(api, mk, mailbox, mc):
    owner = mk("employee")
    g = group(api, owner)
    email = "race-%s@outside.test" % uuid.uuid4().hex[:8]
    _, token = invite(api, owner, g, email, mailbox)
    barrier = threading.Barrier(20)

    def redeem(i):
        s = Api(mc.base_url)
        barrier.wait()
        return s.call("POST", "/invitations/%s/accept" % token, None,
                      {"display_name": "R%d" % i, "password": PASSWORD}).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        codes = list(ex.map(redeem, range(20)))
    assert sorted(codes) == [200] + [404] * 19, codes
    assert len(members(api, owner, g)) == 2


# ------------------------------------------------------------- randomized isolation matrix

class Model:
    """The reference model of R1-R4, written from DESIGN.md §4, independent of the service."""

    def __init__(self):
        self.users = {}      # id -> kind
        self.groups = {}     # gid -> kind
        self.roles = {}      # (gid, uid) -> role

    def sees_group(self, uid, gid):
        return self.users[uid] == "admin" or (gid, uid) in self.roles

    def shares(self, a, b):
        ga = {g for (g, u) in self.roles if u == a}
        return any((g, b) in self.roles for g in ga)

    def sees_person(self, viewer, target):
        if viewer == target or self.users[viewer] == "admin":
            return True
        if self.users[viewer] == "extranet" or self.users[target] == "extranet":
            return self.shares(viewer, target)
        return True

    def contacts(self, uid):
        return {u for u in self.users if u != uid and self.shares(uid, u)}

    def add_status(self, actor, gid, target, role):
        """Expected HTTP status of POST /groups/{gid}/members by actor."""
        if not self.sees_group(actor, gid):
            return 404
        mine = self.roles.get((gid, actor))
        if self.users[actor] != "admin" and mine not in ("owner", "moderator"):
            return 403
        if role == "owner":
            return 400
        if not self.sees_person(actor, target):
            return 404
        if self.users[target] == "extranet" and (self.groups[gid] == "internal" or
                                                 role != "member"):
            return 400
        if role == "moderator" and self.users[actor] != "admin" and mine != "owner":
            return 403
        if (gid, target) in self.roles:
            return 409
        return 201


@pytest.mark.parametrize("seed", SEEDS)
def test_r1_r4_randomized_isolation_matrix(api, mk, admin, mc, seed):
    rnd = random.Random(seed)
    where = "seed=%d (rerun with MEMBERSHIP_SEEDS=%d)" % (seed, seed)
    model = Model()
    people = [admin] + [mk(k) for k in ["employee"] * 3 + ["extranet"] * 4]
    for p in people:
        model.users[p.id] = p.kind
    by_id = {p.id: p for p in people}
    staff = [p for p in people if p.kind != "extranet"]
    gids = []
    for i in range(5):
        owner = rnd.choice(staff)
        kind = rnd.choice(["internal", "extranet"])
        gid = group(api, owner, kind=kind, name="m%d-%d" % (seed, i))
        model.groups[gid] = kind
        model.roles[(gid, owner.id)] = "owner"
        gids.append(gid)
        for p in people:
            if p is owner or rnd.random() < 0.5:
                continue
            if p.kind == "extranet" and kind == "internal":
                continue
            role = "member" if p.kind == "extranet" else rnd.choice(["member", "moderator"])
            add(api, admin, gid, p, role=role)
            model.roles[(gid, p.id)] = role
    ghost = str(uuid.uuid4())
    for actor in people:
        who = "%s %s" % (where, actor)
        listed = set()
        cursor = ""
        while True:
            r = api.call("GET", "/groups", actor.token,
                         params={"limit": 2, "cursor": cursor, "include_archived": "true"})
            assert r.status_code == 200, who
            listed |= {g["id"] for g in r.json().get("groups", [])}
            cursor = r.json().get("next_cursor", "")
            if not cursor:
                break
        expect_listed = {g for g in gids if model.sees_group(actor.id, g)}
        if actor.kind == "admin":   # the shared admin also sees other tests' groups
            assert listed & set(gids) == expect_listed, who
        else:                       # fresh users: exactly their groups, nothing else
            assert listed == expect_listed, who
        for gid in gids + [ghost]:
            sees = gid in model.groups and model.sees_group(actor.id, gid)
            r = api.call("GET", "/groups/%s" % gid, actor.token)
            assert r.status_code == (200 if sees else 404), (who, gid, r.text)
            if not sees:
                assert err(r) == NOT_FOUND, who
            r = api.call("GET", "/groups/%s/members" % gid, actor.token)
            assert r.status_code == (200 if sees else 404), (who, gid)
            if sees:
                got = {m["user_id"]: m["role"] for m in r.json()["members"]}
                want = {u: role for (g, u), role in model.roles.items() if g == gid}
                assert got == want, (who, gid)
            else:
                assert err(r) == NOT_FOUND, who
            if gid == ghost:
                continue
            if not sees:
                # Cold: with mem:{actor} deleted the gateway cannot deny, so membership's own
                # check answers every group route, exactly like for the missing ghost group.
                uid = rnd.choice(people).id
                for (method, path, body), (_, gpath, _) in zip(group_routes(gid, uid),
                                                              group_routes(ghost, uid)):
                    hidden = cold_call(api, mc, method, path, actor, body)
                    missing = cold_call(api, mc, method, gpath, actor, body)
                    assert err(hidden) == NOT_FOUND, (who, method, path, hidden.text)
                    assert response_shape(hidden) == response_shape(missing), (who, method, path)
            target = rnd.choice(people)
            role = rnd.choice(["member", "moderator", "owner"])
            want = model.add_status(actor.id, gid, target.id, role)
            r = api.call("POST", "/groups/%s/members" % gid, actor.token,
                         {"user_id": target.id, "role": role})
            assert r.status_code == want, (who, gid, target, role, r.text)
            if want == 201:
                model.roles[(gid, target.id)] = role
        got = {p["id"] for p in api.call("GET", "/contacts", actor.token).json().get("people", [])}
        if actor.kind == "admin":   # the shared admin has contacts from other tests too
            got &= set(by_id)
        assert got == model.contacts(actor.id), who
        for target in people:
            r = api.call("GET", "/users/%s" % target.id, actor.token)
            want = 200 if model.sees_person(actor.id, target.id) else 404
            assert r.status_code == want, (who, by_id[target.id])


# ------------------------------------------------------------------------------------ R11

def test_r11_membership_changes_are_audited(api, mk, admin, mc):
    if "audit" not in mc.service_bins():
        pytest.skip("audit service not built")
    owner, emp, ext = mk("employee"), mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, owner, g, emp)
    add(api, admin, g, ext)
    assert api.call("PATCH", "/groups/%s/members/%s" % (g, emp.id), owner.token,
                    {"role": "moderator"}).status_code == 200
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id), emp.token).status_code == 204
    assert api.call("PATCH", "/groups/%s" % g, owner.token, {"name": "n"}).status_code == 200
    want = [("group.created", owner.id, g), ("member.added", owner.id, emp.id),
            ("member.added", admin.id, ext.id), ("member.role_changed", owner.id, emp.id),
            ("member.removed", emp.id, ext.id), ("group.updated", owner.id, g)]
    deadline = time.monotonic() + 15
    while True:
        r = api.call("GET", "/admin/audit", admin.token, params={"group_id": g, "limit": 100})
        assert r.status_code == 200, r.text
        got = [(x["action"], x["actor_id"], x["target_id"]) for x in r.json().get("records", [])]
        if all(w in got for w in want):
            break
        assert time.monotonic() < deadline, "audit records missing: %s" % \
            [w for w in want if w not in got]
        time.sleep(0.2)
    for x in r.json()["records"]:
        assert x["service"] == "membership" and x["outcome"] == "ok"
        assert "@" not in x["details"]   # people by id, never by email


MEMBERSHIP_ACTIONS = {  # services/audit/README.md, membership's documented list
    "group.created", "group.updated", "group.archived", "group.ownership_transferred",
    "member.added", "member.role_changed", "member.removed", "member.left",
    "invitation.created", "invitation.revoked", "invitation.withdrawn", "invitation.accepted",
    "invitation.expired"}


def test_r11_every_documented_membership_action_leaves_exactly_one_record(api, mk, admin, mc,
                                                                          mailbox):
    """Walks the documented list (all but invitation.withdrawn, which needs a mail that cannot
    be queued, and invitation.expired, walked by test_expiry_invitations.py): each action
    done once leaves exactly one record, with the right actor, target, group and fields."""
    if "audit" not in mc.service_bins():
        pytest.skip("audit service not built")
    readme = (Path(__file__).resolve().parents[2] / "services" / "audit" / "README.md").read_text()
    listed = set(re.findall(r"`((?:group|member|invitation)\.[a-z_]+)`", readme))
    assert listed == MEMBERSHIP_ACTIONS, "the README's list changed: %s" % (listed ^ MEMBERSHIP_ACTIONS)
    owner, emp, leaver, heir = mk("employee"), mk("employee"), mk("employee"), mk("employee")
    g = group(api, owner)                                              # group.created
    add(api, owner, g, emp)                                            # member.added
    add(api, owner, g, leaver)                                         # member.added
    add(api, owner, g, heir)                                           # member.added
    assert api.call("PATCH", "/groups/%s/members/%s" % (g, emp.id), owner.token,
                    {"role": "moderator"}).status_code == 200          # member.role_changed
    assert api.call("PATCH", "/groups/%s" % g, owner.token,
                    {"name": "walked"}).status_code == 200             # group.updated
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, leaver.id),
                    leaver.token).status_code == 204                   # member.left
    kept, token = invite(api, owner, g, "walk-%s@outside.test" % uuid.uuid4().hex[:8],
                         mailbox)                                      # invitation.created
    r = api.call("POST", "/invitations/%s/accept" % token, None,
                 {"display_name": "Guest", "password": PASSWORD})      # invitation.accepted
    assert r.status_code == 200, r.text                                #  + member.added
    gone, _ = invite(api, owner, g, "walk-%s@outside.test" % uuid.uuid4().hex[:8],
                     mailbox)                                          # invitation.created
    assert api.call("DELETE", "/groups/%s/invitations/%s" % (g, gone["id"]),
                    owner.token).status_code == 204                    # invitation.revoked
    guest = [u for u, role in members(api, owner, g).items() if role == "member" and
             u not in (leaver.id, heir.id)]
    assert len(guest) == 1
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, guest[0]),
                    emp.token).status_code == 204                      # member.removed
    assert api.call("PATCH", "/groups/%s/members/%s" % (g, heir.id), owner.token,
                    {"role": "owner"}).status_code == 200              # ownership_transferred
    assert api.call("DELETE", "/groups/%s" % g, heir.token).status_code == 204  # archived
    want = {  # (action, actor, target) -> how many
        ("group.created", owner.id, g): 1,
        ("member.added", owner.id, emp.id): 1, ("member.added", owner.id, leaver.id): 1,
        ("member.added", owner.id, heir.id): 1, ("member.added", None, guest[0]): 1,
        ("member.role_changed", owner.id, emp.id): 1, ("group.updated", owner.id, g): 1,
        ("member.left", leaver.id, leaver.id): 1,
        ("invitation.created", owner.id, kept["id"]): 1,
        ("invitation.created", owner.id, gone["id"]): 1,
        ("invitation.accepted", None, kept["id"]): 1,
        ("invitation.revoked", owner.id, gone["id"]): 1,
        ("member.removed", emp.id, guest[0]): 1,
        ("group.ownership_transferred", owner.id, heir.id): 1,
        ("group.archived", heir.id, g): 1}
    deadline = time.monotonic() + 20
    while True:
        r = api.call("GET", "/admin/audit", admin.token, params={"group_id": g, "limit": 200})
        assert r.status_code == 200, r.text
        recs = r.json().get("records", [])
        got = {}
        for x in recs:
            for key in ((x["action"], x["actor_id"], x["target_id"]),
                        (x["action"], None, x["target_id"])):
                if key in want:
                    got[key] = got.get(key, 0) + 1
        if all(got.get(k, 0) >= n for k, n in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert got == want, {k: (got.get(k, 0), n) for k, n in want.items() if got.get(k, 0) != n}
    assert len(recs) == sum(want.values()), [x["action"] for x in recs]
    walked = {a for a, _, _ in want}
    assert walked == MEMBERSHIP_ACTIONS - {"invitation.withdrawn", "invitation.expired"}
    for x in recs:
        assert x["service"] == "membership" and x["outcome"] == "ok" and x["group_id"] == g
        assert x["request_id"] and x["event_id"] and x["time"].endswith("Z")
        assert x["actor_kind"] in ("employee", "anonymous", "extranet", "admin"), x
        assert "@" not in x["details"]   # people by id, never by email


# ------------------------------------------- through the broker: events and the internal Check

@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """envelope_pb2 and membership_pb2 generated from proto/ with protoc --python_out."""
    import subprocess
    out = tmp_path_factory.mktemp("membership_pb")
    root = Path(__file__).resolve().parents[2] / "proto"
    subprocess.run(["protoc", "--proto_path", str(root), "--python_out", str(out),
                    "envelope.proto", "membership.proto"], check=True)
    sys.path.insert(0, str(out))
    import envelope_pb2
    import membership_pb2
    return envelope_pb2, membership_pb2


def mdp_call(mc, pb, method, msg, kind="SYSTEM", user_id="", session_id=""):
    """One request through the broker with a minimal MDP client (RFC 7/MDP): (status, reply)."""
    import zmq
    env, _ = pb
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(mc.urls["broker"])
    try:
        req = env.Request(request_id=str(uuid.uuid4()), method=method,
                          deadline_ms=int(time.time() * 1000) + 10000,
                          payload=msg.SerializeToString())
        req.actor.kind = env.ActorKind.Value(kind)
        req.actor.user_id, req.actor.session_id = user_id, session_id
        s.send_multipart([b"", b"MDPC01", method.split(".")[0].encode(), req.SerializeToString()])
        assert s.poll(12000), "no reply to %s" % method
        frames = s.recv_multipart()
        rep = env.Reply()
        rep.ParseFromString(frames[3])
        assert rep.request_id == req.request_id
        return env.Status.Name(rep.status), rep
    finally:
        s.close(0)


def test_r9_internal_check_follows_removal(api, mk, admin, mc, pb):
    _, mp = pb
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, admin, g, ext)
    st, rep = mdp_call(mc, pb, "membership.Check", mp.CheckRequest(user_id=ext.id, group_id=g))
    assert st == "OK"
    cr = mp.CheckReply()
    cr.ParseFromString(rep.payload)
    assert cr.role == "member"
    # Only services may ask; a signed-in user (even the member) may not.
    st, _ = mdp_call(mc, pb, "membership.Check", mp.CheckRequest(user_id=ext.id, group_id=g),
                     kind="EXTRANET", user_id=ext.id, session_id=str(uuid.uuid4()))
    assert st == "FORBIDDEN"
    assert api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id),
                    owner.token).status_code == 204
    for gid in (g, str(uuid.uuid4()), "nope"):
        st, _ = mdp_call(mc, pb, "membership.Check", mp.CheckRequest(user_id=ext.id, group_id=gid))
        assert st == "NOT_FOUND"


def test_r4_groups_of_lists_the_users_groups_and_follows_removal(api, mk, admin, mc, pb):
    """membership.GroupsOf, the isolation library's "which groups may A see" (iso_groups):
    every group with the role, cold (mem:{user} dropped: read from PostgreSQL and filled) and
    warm (from the fill) alike; an archived group still listed; a removal gone on the next
    call; nobody's groups for unknown or malformed ids; only services may ask."""
    _, mp = pb
    emp, other = mk("employee"), mk("employee")
    g_own = group(api, emp, kind="internal")
    g_mem = group(api, other, kind="internal")
    g_arch = group(api, other, kind="internal")
    g_none = group(api, other, kind="internal")
    add(api, other, g_mem, emp)
    add(api, other, g_arch, emp, role="moderator")
    assert api.call("DELETE", "/groups/%s" % g_arch, other.token).status_code == 204

    def groups_of(uid, **actor):
        st, rep = mdp_call(mc, pb, "membership.GroupsOf", mp.GroupsOfRequest(user_id=uid),
                           **actor)
        if st != "OK":
            return st
        gr = mp.GroupsOfReply()
        gr.ParseFromString(rep.payload)
        return {x.group_id: x.role for x in gr.groups}

    want = {g_own: "owner", g_mem: "member", g_arch: "moderator"}
    mc.redis_command("DEL", "mem:" + emp.id)
    assert groups_of(emp.id) == want                      # cold: PostgreSQL
    assert mc.redis_command("HGET", "mem:" + emp.id, "_") == "1"   # and filled
    assert groups_of(emp.id) == want                      # warm: the fill
    assert groups_of(emp.id.upper()) == want              # the same (lower-case) cache key
    st, rep = mdp_call(mc, pb, "membership.Check",
                       mp.CheckRequest(user_id=emp.id.upper(), group_id=g_own.upper()))
    assert st == "OK"
    assert mc.redis_command("EXISTS", "mem:" + emp.id.upper()) == 0
    assert g_none not in groups_of(emp.id)
    assert api.call("DELETE", "/groups/%s/members/%s" % (g_mem, emp.id),
                    other.token).status_code == 204
    want.pop(g_mem)
    assert groups_of(emp.id) == want
    mc.redis_command("DEL", "mem:" + emp.id)
    assert groups_of(emp.id) == want
    for nobody in (str(uuid.uuid4()), "nope", ""):
        assert groups_of(nobody) == {}
    assert groups_of(emp.id, kind="EMPLOYEE", user_id=emp.id,
                     session_id=str(uuid.uuid4())) == "FORBIDDEN"


def test_r9_removal_publishes_membership_changed(api, mk, admin, mc, pb):
    import zmq
    env, mp = pb
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"membership.changed")
    sub.connect(mc.urls["events"])
    try:
        # Until the subscription has reached the broker's XPUB (slow joiner), events are
        # dropped: create probe groups (their owner's "added" event) until one arrives.
        deadline = time.monotonic() + 10
        while True:
            probe = group(api, owner, name="probe")
            got = False
            while sub.poll(200):
                ev = env.Event()
                ev.ParseFromString(sub.recv_multipart()[1])
                ch = mp.MembershipChanged()
                ch.ParseFromString(ev.payload)
                got = got or ch.group_id == probe
            if got:
                break
            assert time.monotonic() < deadline, "no membership.changed event ever arrived"
        add(api, admin, g, ext)
        assert api.call("DELETE", "/groups/%s/members/%s" % (g, ext.id),
                        owner.token).status_code == 204
        seen = []
        deadline = time.monotonic() + 10
        while ("removed", "") not in [(r, role) for (u, r, role) in seen if u == ext.id]:
            assert time.monotonic() < deadline, seen
            if not sub.poll(200):
                continue
            topic, body = sub.recv_multipart()[:2]
            ev = env.Event()
            ev.ParseFromString(body)
            assert topic == b"membership.changed" and ev.topic == "membership.changed"
            ch = mp.MembershipChanged()
            ch.ParseFromString(ev.payload)
            if ch.group_id == g:
                seen.append((ch.user_id, ch.reason, ch.role))
        assert (ext.id, "added", "member") in seen
    finally:
        sub.close(0)


def test_r1_gateway_denies_a_cached_non_member_without_the_service(api, mk, admin, mc):
    """The gateway reads the session and the caller's mem:{user} entry in one Redis round trip
    on group routes: with membership stopped, a read of a group the cache says the caller is
    not in still answers 404 (same body), while the caller's own group, which needs the
    service, does not answer 200. A change is never refused from the cache: it goes to the
    service (which audits the refusal), so with membership stopped it gets no answer."""
    owner, ext = mk("employee"), mk("extranet")
    mine, foreign = group(api, owner), group(api, owner)
    add(api, admin, mine, ext)
    assert api.call("GET", "/groups/%s" % mine, ext.token).status_code == 200  # mem:{ext} warm
    assert mc.redis_command("HGET", "mem:" + ext.id, "_") == "1"
    mc.stop_service("membership")
    try:
        for path in ("/groups/%s" % foreign, "/groups/%s/members" % foreign):
            r = api.call("GET", path, ext.token)
            assert err(r) == NOT_FOUND, (path, r.text)
        r = api.call("DELETE", "/groups/%s/members/%s" % (foreign, owner.id), ext.token)
        assert r.status_code in (503, 504), r.text
        r = api.call("GET", "/groups/%s" % mine, ext.token)
        assert r.status_code in (503, 504), r.text
        # An admin is never denied from the cache: it goes to the (stopped) service.
        assert api.call("GET", "/groups/%s" % foreign, admin.token).status_code in (503, 504)
    finally:
        mc.start_service("membership")
    assert api.call("GET", "/groups/%s" % mine, ext.token).status_code == 200


def test_r13_refused_accept_leaves_the_invitation_usable(api, mk, mailbox):
    """A redeem identity refuses (a too short password, a bad name) does not burn the token: the
    claim goes back, and a correct redeem afterwards works once."""
    owner = mk("employee")
    g = group(api, owner)
    email = "retry-%s@outside.test" % uuid.uuid4().hex[:8]
    _, token = invite(api, owner, g, email, mailbox)
    for body in ({"display_name": "x", "password": "short"},
                 {"display_name": "x" * 300, "password": PASSWORD},
                 {"display_name": "x", "password": ""}):
        r = api.call("POST", "/invitations/%s/accept" % token, None, body)
        assert r.status_code == 400, r.text
    assert api.call("GET", "/invitations/%s" % token).status_code == 200
    r = api.call("POST", "/invitations/%s/accept" % token, None,
                 {"display_name": "Fine", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert err(api.call("GET", "/invitations/%s" % token)) == NOT_FOUND


def test_r13_hostile_invitation_inputs(api, mk, admin):
    owner, ext = mk("employee"), mk("extranet")
    g = group(api, owner)
    add(api, admin, g, ext)
    for email in ("a@b.c\r\nBcc: x@evil.test", "<x@y.test>", "no-at-sign", "a@b@c.test", ""):
        r = api.call("POST", "/groups/%s/invitations" % g, owner.token, {"email": email})
        assert r.status_code == 400, (email, r.text)
    # An extranet member cannot invite (members only; R1 for strangers is covered above).
    r = api.call("POST", "/groups/%s/invitations" % g, ext.token, {"email": "f@outside.test"})
    assert r.status_code == 403
    # An archived group takes no invitations.
    assert api.call("DELETE", "/groups/%s" % g, owner.token).status_code == 204
    r = api.call("POST", "/groups/%s/invitations" % g, owner.token, {"email": "f@outside.test"})
    assert r.status_code == 409
