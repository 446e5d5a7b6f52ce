"""Audit (services/audit/README.md), black-box against the real cluster: every identity action
leaves exactly one record with the right fields (a walk of the documented list), nothing is lost
while audit is down or when identity is killed, the chain verifies, and tampering in PostgreSQL
is found at the first bad record. Admin-only access to the audit routes."""

import datetime
import time
import uuid

import pytest
import requests

pyotp = pytest.importorskip("pyotp", reason="python3-pyotp (Debian) not installed")

PASSWORD = "Audit-Test-Passw0rd-1"


@pytest.fixture(scope="module")
def api(api_url, require_service, admin_credentials):
    for s in ("identity", "audit"):
        require_service(s)
    return Api(api_url, admin_credentials)


class Api:
    def __init__(self, url, admin):
        self.url = url
        self.http = requests.Session()
        r = self.http.post(url + "/auth/login", json=admin, timeout=20)
        assert r.status_code == 200, r.text
        self.admin_token = r.json()["token"]
        self.admin_id = r.json()["user"]["id"]

    def call(self, method, path, token=None, body=None, params=None, expect=None):
        h = {"Authorization": "Bearer " + token} if token else {}
        r = self.http.request(method, self.url + path, headers=h, json=body, params=params,
                              timeout=30)
        if expect is not None:
            assert r.status_code == expect, "%s %s -> %d %s" % (method, path, r.status_code,
                                                                  r.text)
        return r

    def admin(self, method, path, body=None, params=None, expect=None):
        return self.call(method, path, self.admin_token, body, params, expect)

    def new_user(self, kind="employee"):
        email = "audit-%s@extranet.test" % uuid.uuid4().hex[:12]
        r = self.admin("POST", "/admin/users", {"email": email, "display_name": "Audit T",
                                                "password": PASSWORD, "kind": kind}, expect=201)
        return email, r.json()["id"], r

    def records(self, **filters):
        """Every record matching filters (all pages)."""
        out, cursor = [], ""
        while True:
            params = dict(filters, limit=1000)
            if cursor:
                params["cursor"] = cursor
            r = self.admin("GET", "/admin/audit", params=params, expect=200)
            body = r.json()
            out += body["records"]
            cursor = body["next_cursor"]
            if not cursor:
                return out

    def wait_records(self, count, timeout=20.0, **filters):
        """The records matching filters once at least count arrived (then a short settle so
        a duplicate would show)."""
        end = time.monotonic() + timeout
        while True:
            recs = self.records(**filters)
            if len(recs) >= count:
                time.sleep(0.3)
                return self.records(**filters)
            if time.monotonic() > end:
                pytest.fail("only %d of %d audit records for %r within %.0f s"
                            % (len(recs), count, filters, timeout))
            time.sleep(0.1)

    def one_record(self, resp, **want):
        """Asserts exactly one record carries the response's X-Request-Id and has the
        wanted fields; returns it."""
        rid = resp.headers["X-Request-Id"]
        recs = self.wait_records(1, request_id=rid)
        assert len(recs) == 1, recs
        rec = recs[0]
        for k, v in want.items():
            assert rec[k] == v, "%s: %s=%r, want %r (%r)" % (want.get("action"), k, rec[k], v,
                                                             rec)
        assert rec["request_id"] == rid
        return rec

    def verify(self):
        return self.admin("GET", "/admin/audit/verify", expect=200).json()


def test_identity_actions_each_leave_one_record(api):
    """Walks the documented identity actions over HTTP (services/audit/README.md)."""
    A = dict(actor_id=api.admin_id, actor_kind="admin", actor_ip="127.0.0.1", service="identity")
    done = set()

    def check(resp, **want):
        rec = api.one_record(resp, **want)
        done.add(want["action"])
        return rec

    email, uid, r = api.new_user()
    check(r, action="user.created", target_type="user", target_id=uid, outcome="ok", **A)

    r = api.call("POST", "/auth/login", body={"email": email, "password": PASSWORD}, expect=200)
    sess1 = check(r, action="auth.login", actor_id=uid, actor_kind="employee",
                  actor_ip="127.0.0.1", target_id=uid, outcome="ok")["actor_session"]
    assert uuid.UUID(sess1)
    tok = r.json()["token"]
    assert tok not in str(api.records(request_id=r.headers["X-Request-Id"]))
    assert email not in str(api.records(request_id=r.headers["X-Request-Id"]))

    r = api.call("POST", "/auth/login", body={"email": email, "password": "wrong-" + PASSWORD},
                 expect=401)
    check(r, action="auth.login_failed", actor_kind="anonymous", actor_id="", target_id=uid,
          outcome="fail")
    r = api.call("POST", "/auth/login", body={"email": "nobody-%s@extranet.test" % uuid.uuid4().hex,
                                              "password": PASSWORD}, expect=401)
    check(r, action="auth.login_failed", actor_kind="anonymous", target_id="", outcome="fail")

    r = api.call("POST", "/me/mfa/enroll", tok, expect=200)
    check(r, action="auth.mfa_enrolled", actor_id=uid, actor_session=sess1, target_id=uid,
          outcome="ok")
    totp = pyotp.TOTP(r.json()["secret"])
    wrong = "%06d" % ((int(totp.now()) + 500000) % 1000000)
    r = api.call("POST", "/me/mfa/confirm", tok, {"code": wrong}, expect=400)
    check(r, action="auth.mfa_failed", actor_id=uid, target_id=uid, outcome="fail")
    r = api.call("POST", "/me/mfa/confirm", tok, {"code": totp.now()}, expect=200)
    check(r, action="auth.mfa_confirmed", actor_id=uid, target_id=uid, outcome="ok")
    codes = r.json()["recovery_codes"]

    def mfa_login(code, status=200):
        r1 = api.call("POST", "/auth/login", body={"email": email, "password": PASSWORD},
                      expect=200)
        check(r1, action="auth.login", actor_id=uid, target_id=uid, outcome="mfa_required")
        return api.call("POST", "/auth/mfa", body={"mfa_token": r1.json()["mfa_token"],
                                                   "code": code}, expect=status)

    # the confirmation used this step; the next one is inside identity's +-1 step window
    r = mfa_login(totp.at(time.time() + 30))
    check(r, action="auth.login", actor_id=uid, target_id=uid, outcome="ok",
          details='{"mfa":"totp"}')
    r = mfa_login("0000-0000-0000-0000", 401)
    check(r, action="auth.mfa_failed", actor_kind="anonymous", target_id=uid, outcome="fail")
    r = mfa_login(codes[0])
    rec = check(r, action="auth.mfa_recovery_used", actor_id=uid, target_id=uid, outcome="ok")
    tok2, sess2 = r.json()["token"], rec["actor_session"]
    r = mfa_login(codes[1])
    sess3 = api.one_record(r, action="auth.mfa_recovery_used")["actor_session"]

    r = api.call("DELETE", "/me/sessions/" + sess3, tok2, expect=204)
    check(r, action="session.revoked", actor_id=uid, actor_session=sess2, target_type="session",
          target_id=sess3, outcome="ok")
    r = api.call("DELETE", "/me/sessions", tok2, expect=200)
    check(r, action="session.revoked", target_type="user", target_id=uid, outcome="ok")
    r = api.call("POST", "/me/password", tok2,
                 {"old_password": PASSWORD, "new_password": PASSWORD + "x"}, expect=204)
    check(r, action="user.password_changed", actor_id=uid, target_id=uid, outcome="ok")
    r = api.call("POST", "/auth/logout", tok2, expect=204)
    check(r, action="auth.logout", actor_id=uid, target_type="session", target_id=sess2,
          outcome="ok")

    r = api.admin("PATCH", "/admin/users/" + uid, {"display_name": "Audit Renamed"}, expect=200)
    check(r, action="user.updated", target_id=uid, outcome="ok", **A)
    r = api.admin("PATCH", "/admin/users/" + uid, {"status": "deactivated"}, expect=200)
    check(r, action="user.deactivated", target_id=uid, outcome="ok", **A)
    r = api.admin("PATCH", "/admin/users/" + uid, {"status": "active"}, expect=200)
    check(r, action="user.reactivated", target_id=uid, outcome="ok", **A)
    r = api.admin("POST", "/admin/users/%s/reset-mfa" % uid, expect=200)
    check(r, action="user.mfa_reset", target_id=uid, outcome="ok", **A)

    _, xid, _ = api.new_user(kind="extranet")
    r = api.admin("POST", "/admin/users/%s/transfer-to-intranet" % xid, expect=200)
    check(r, action="user.transferred", target_id=xid, outcome="ok", **A)

    policy = api.admin("GET", "/admin/policy", expect=200).json()
    r = api.admin("PUT", "/admin/policy", policy, expect=200)
    check(r, action="policy.changed", target_type="policy", outcome="ok", **A)

    # user.expired: written by identity when expiry fires the user.expire timer (SYSTEM).
    _, eid, _ = api.new_user()
    due = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2))
    api.admin("PATCH", "/admin/users/" + eid,
              {"expires_at": due.strftime("%Y-%m-%dT%H:%M:%SZ")}, expect=200)
    recs = api.wait_records(1, timeout=30, action="user.expired", target_id=eid)
    assert len(recs) == 1 and recs[0]["actor_kind"] == "system" and recs[0]["outcome"] == "ok"
    done.add("user.expired")
    # expiry's own record of that firing, with the request id of its call to identity
    fired = [r for r in api.wait_records(1, timeout=15, action="timer.fired",
                                         request_id=recs[0]["request_id"])]
    assert len(fired) == 1 and fired[0]["service"] == "expiry", fired
    assert fired[0]["actor_kind"] == "system" and fired[0]["outcome"] == "ok"
    assert eid in fired[0]["details"] and fired[0]["target_type"] == "timer"

    documented = {"auth.login", "auth.login_failed", "auth.logout", "auth.mfa_enrolled",
                  "auth.mfa_confirmed", "auth.mfa_failed", "auth.mfa_recovery_used",
                  "user.created", "user.updated", "user.deactivated", "user.reactivated",
                  "user.expired", "user.transferred", "user.mfa_reset", "user.password_changed",
                  "session.revoked", "policy.changed"}
    assert done == documented
    assert api.verify()["ok"]


def test_audit_routes_are_for_admins_only(api):
    email, uid, _ = api.new_user()
    tok = api.call("POST", "/auth/login", body={"email": email, "password": PASSWORD},
                   expect=200).json()["token"]
    for path in ("/admin/audit", "/admin/audit/verify", "/admin/audit/export"):
        r = api.call("GET", path, tok)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
        assert api.call("GET", path).status_code == 401


def test_audit_routes_refuse_extranet_users(api):
    email, _, _ = api.new_user(kind="extranet")
    tok = api.call("POST", "/auth/login", body={"email": email, "password": PASSWORD},
                   expect=200).json()["token"]
    for path in ("/admin/audit", "/admin/audit/verify", "/admin/audit/export"):
        r = api.call("GET", path, tok)
        assert r.status_code == 403, (path, r.text)
        assert "records" not in r.text and "hash" not in r.text


def test_two_identity_copies_relay_each_record_once(api, cluster):
    """Both copies' relays ship from the one outbox while actions commit (FOR UPDATE SKIP
    LOCKED): disjoint rows, so audit never even sees a duplicate."""
    _, uid, _ = api.new_user()
    copy = cluster.add_copy("identity")

    def dup_lines():
        logs = list(cluster.log_dir.glob("audit*.log"))
        return sum(p.read_text(errors="replace").count("duplicates dropped") for p in logs)
    dups_before = dup_lines()
    try:
        # audit stays up: a stopped audit could still get a timed-out Append the broker had
        # queued, and the re-ship of those rows would be a legitimate duplicate
        rids = [api.admin("PATCH", "/admin/users/" + uid, {"display_name": "C%d" % i},
                          expect=200).headers["X-Request-Id"] for i in range(300)]
        recs = api.wait_records(300, timeout=60, action="user.updated", target_id=uid)
        assert sorted(r["request_id"] for r in recs) == sorted(rids)
        # and neither copy shipped a row the other was shipping (audit saw no duplicates)
        assert dup_lines() == dups_before
    finally:
        cluster.stop_service(copy)
    assert api.verify()["ok"]


def test_query_filters_paging_and_export(api):
    email, uid, _ = api.new_user()
    rids = []
    for i in range(5):
        r = api.admin("PATCH", "/admin/users/" + uid, {"display_name": "P%d" % i}, expect=200)
        rids.append(r.headers["X-Request-Id"])
    recs = api.wait_records(5, action="user.updated", target_id=uid)
    assert [r["request_id"] for r in recs] == rids
    seqs = [r["seq"] for r in recs]
    assert seqs == sorted(seqs)
    # cursor paging, two at a time
    got, cursor = [], ""
    while True:
        p = {"action": "user.updated", "target_id": uid, "limit": 2}
        if cursor:
            p["cursor"] = cursor
        body = api.admin("GET", "/admin/audit", params=p, expect=200).json()
        got += [r["seq"] for r in body["records"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert got == seqs
    # time range: since the first record's time, until after the last
    body = api.admin("GET", "/admin/audit", params={"target_id": uid, "action": "user.updated",
                                                   "since": recs[1]["time"]}, expect=200).json()
    assert [r["seq"] for r in body["records"]] == seqs[1:]
    # the export: one streamed CSV / JSON-lines body (tests/api/test_audit_export.py has more)
    r = api.admin("GET", "/admin/audit/export",
                  params={"target_id": uid, "action": "user.updated", "format": "csv"},
                  expect=200)
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"].startswith("attachment; filename=")
    lines = r.text.split("\r\n")
    assert lines[0].startswith("seq,event_id,time,actor_id")
    assert len([x for x in lines[1:] if x]) == 5
    r = api.admin("GET", "/admin/audit/export",
                  params={"target_id": uid, "action": "user.updated"}, expect=200)
    assert r.headers["Content-Type"] == "application/x-ndjson"
    import json
    assert [json.loads(x)["request_id"] for x in r.text.splitlines()] == rids
    assert api.admin("GET", "/admin/audit", params={"cursor": "x"}).status_code == 400
    assert api.admin("GET", "/admin/audit", params={"limit": 100000}).status_code == 400


def test_audit_down_1000_actions_arrive_once(api, cluster):
    email, uid, _ = api.new_user()
    cluster.stop_service("audit")
    rids = []
    try:
        for i in range(1000):
            r = api.admin("PATCH", "/admin/users/" + uid, {"display_name": "F%d" % i})
            assert r.status_code == 200, r.text
            rids.append(r.headers["X-Request-Id"])
        waiting = cluster.psql("SELECT count(*) FROM identity.audit_outbox")
        assert int(waiting[0][0]) >= 1000
    finally:
        cluster.start_service("audit")
    recs = api.wait_records(1000, timeout=60, action="user.updated", target_id=uid)
    assert len(recs) == 1000
    assert sorted(r["request_id"] for r in recs) == sorted(rids)
    assert len({r["event_id"] for r in recs}) == 1000
    v = api.verify()
    assert v["ok"], v


def test_kill9_identity_before_ship_record_arrives_once(api, cluster):
    email, uid, _ = api.new_user()
    cluster.stop_service("audit")
    try:
        r = api.admin("PATCH", "/admin/users/" + uid, {"display_name": "Killed"}, expect=200)
        rid = r.headers["X-Request-Id"]
        cluster.kill_service("identity")
    finally:
        cluster.start_service("identity")
        cluster.start_service("audit")
    recs = api.wait_records(1, timeout=30, request_id=rid)
    assert len(recs) == 1 and recs[0]["action"] == "user.updated"
    assert api.verify()["ok"]


def _fresh_records(api, n):
    """n new consecutive-ish records (user.updated); returns them in seq order."""
    _, uid, _ = api.new_user()
    for i in range(n):
        api.admin("PATCH", "/admin/users/" + uid, {"display_name": "T%d" % i}, expect=200)
    return api.wait_records(n, action="user.updated", target_id=uid)


def _untriggered(cluster, sql, **params):
    """Runs sql as the table owner with the append-only trigger disabled (tampering)."""
    cluster.psql("BEGIN; ALTER TABLE audit.records DISABLE TRIGGER records_immutable; " + sql +
                 "; ALTER TABLE audit.records ENABLE TRIGGER records_immutable; COMMIT;",
                 **params)


def test_append_only_trigger_refuses_update_and_delete(api, cluster):
    recs = _fresh_records(api, 1)
    with pytest.raises(Exception):
        cluster.psql("UPDATE audit.records SET outcome = 'x' WHERE seq = %d" % recs[0]["seq"])
    with pytest.raises(Exception):
        cluster.psql("DELETE FROM audit.records WHERE seq = %d" % recs[0]["seq"])


def test_tamper_change_one_byte_is_found(api, cluster):
    rec = _fresh_records(api, 1)[0]
    seq = rec["seq"]
    _untriggered(cluster, "UPDATE audit.records SET action = 'X' || substr(action, 2) "
                          "WHERE seq = %d" % seq)
    try:
        v = api.verify()
        assert not v["ok"] and v["first_bad_seq"] == seq, v
        assert "hash" in v["reason"]
    finally:
        _untriggered(cluster, "UPDATE audit.records SET action = :'a' WHERE seq = %d" % seq,
                     a=rec["action"])
    assert api.verify()["ok"]


def test_tamper_delete_one_is_found(api, cluster):
    recs = _fresh_records(api, 3)
    seq = recs[1]["seq"]
    table = "public.audit_tamper_%d" % seq
    _untriggered(cluster, "CREATE TABLE %s AS SELECT * FROM audit.records WHERE seq = %d; "
                          "DELETE FROM audit.records WHERE seq = %d" % (table, seq, seq))
    try:
        v = api.verify()
        assert not v["ok"] and v["first_bad_seq"] == seq, v
        assert "missing" in v["reason"]
    finally:
        cluster.psql("INSERT INTO audit.records SELECT * FROM %s; DROP TABLE %s" % (table, table))
    assert api.verify()["ok"]


def test_tamper_reorder_two_is_found(api, cluster):
    recs = _fresh_records(api, 3)
    a, b = recs[0]["seq"], recs[1]["seq"]
    swap = ("UPDATE audit.records SET seq = 900000000000000 WHERE seq = {a}; "
            "UPDATE audit.records SET seq = {a} WHERE seq = {b}; "
            "UPDATE audit.records SET seq = {b} WHERE seq = 900000000000000").format(a=a, b=b)
    _untriggered(cluster, swap)
    try:
        v = api.verify()
        assert not v["ok"] and v["first_bad_seq"] == min(a, b), v
    finally:
        _untriggered(cluster, swap)
    assert api.verify()["ok"]
