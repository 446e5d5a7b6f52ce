"""audit.Verify (services/audit/README.md "Verify"), black-box against the real cluster: the head
and every chunk of the chain are read in one snapshot, so a row stored beyond the head is not an
append running meanwhile but tampering and is named as the first bad record; and verify stays ok
while relays and direct Appends move the head during several verifications."""

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import zmq

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Audit-Verify-Passw0rd-1"


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

    def call(self, method, path, token=None, body=None, params=None, expect=None, http=None):
        h = {"Authorization": "Bearer " + token} if token else {}
        r = (http or self.http).request(method, self.url + path, headers=h, json=body,
                                        params=params, timeout=60)
        if expect is not None:
            assert r.status_code == expect, "%s %s -> %d %s" % (method, path, r.status_code,
                                                                  r.text)
        return r

    def admin(self, method, path, body=None, params=None, expect=None, http=None):
        return self.call(method, path, self.admin_token, body, params, expect, http)

    def new_user(self):
        email = "verify-%s@extranet.test" % uuid.uuid4().hex[:12]
        r = self.admin("POST", "/admin/users", {"email": email, "display_name": "Verify T",
                                                "password": PASSWORD, "kind": "employee"},
                       expect=201)
        return email, r.json()["id"]

    def verify(self):
        return self.admin("GET", "/admin/audit/verify", expect=200).json()


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit_verify_pb")
    subprocess.run(["protoc", "--proto_path", str(REPO / "proto"), "--python_out", str(out),
                    "envelope.proto", "audit.proto"], check=True)
    sys.path.insert(0, str(out))
    import audit_pb2
    import envelope_pb2

    class PB:
        envelope, audit = envelope_pb2, audit_pb2
    return PB


class Rpc:
    """A minimal MDP client (RFC 7) as a relay is one: audit.Append as SYSTEM."""

    def __init__(self, pb, endpoint):
        self.pb = pb
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def append(self, records, timeout=30.0):
        env = self.pb.envelope
        msg = self.pb.audit.AppendRequest()
        msg.records.extend(records)
        req = env.Request(request_id=str(uuid.uuid4()), method="audit.Append",
                          deadline_ms=int(time.time() * 1000 + timeout * 1000),
                          payload=msg.SerializeToString())
        req.actor.kind = env.ActorKind.Value("SYSTEM")
        self.sock.send_multipart([b"", b"MDPC01", b"audit", req.SerializeToString()])
        end = time.monotonic() + timeout + 1
        while True:
            assert self.sock.poll(int(max(end - time.monotonic(), 0.01) * 1000)), "Append"
            frames = self.sock.recv_multipart()
            rep = env.Reply()
            rep.ParseFromString(frames[3])
            if rep.request_id == req.request_id:
                break
        assert env.Status.Name(rep.status) == "OK", rep.message
        body = self.pb.audit.AppendReply()
        body.ParseFromString(rep.payload)
        assert body.appended == len(records)

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def record(pb, tag):
    now = time.time()
    return pb.audit.Record(event_id=str(uuid.uuid4()),
                           time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                           + ".%06dZ" % int((now % 1) * 1e6),
                           actor_kind="system", action="test.verify", target_type="test",
                           target_id=tag, outcome="ok", details="{}", service="pytest")


def _untriggered(cluster, sql, **params):
    """Runs sql as the table owner with the append-only trigger disabled (tampering)."""
    cluster.psql("BEGIN; ALTER TABLE audit.records DISABLE TRIGGER records_immutable; " + sql +
                 "; ALTER TABLE audit.records ENABLE TRIGGER records_immutable; COMMIT;",
                 **params)


def _forge_beyond_head(cluster, offset):
    """Inserts one forged record at head.seq + offset straight into PostgreSQL (as an attacker
    with database access would: INSERT is what the append-only trigger allows), chained onto
    the head's hash, without moving the head. Locks the head row like an append does, so the
    seq cannot collide with one in flight. Returns (seq, event_id)."""
    eid = str(uuid.uuid4())
    rows = cluster.psql(
        "INSERT INTO audit.records (seq, event_id, time, actor_id, actor_kind, actor_ip, "
        "actor_session, action, target_type, target_id, group_id, outcome, request_id, details, "
        "service, prev_hash, hash) "
        "SELECT h.seq + %d, :'eid'::uuid, now(), :'actor', 'admin', '10.6.6.6', '', "
        "'user.created', 'user', :'target', '', 'ok', '', '{}', 'identity', h.hash, sha256(h.hash) "
        "FROM (SELECT seq, hash FROM audit.head FOR UPDATE) h RETURNING seq" % offset,
        eid=eid, actor=str(uuid.uuid4()), target=str(uuid.uuid4()))
    return int(rows[0][0]), eid


@pytest.mark.parametrize("offset", [1, 1000])
def test_forged_record_beyond_the_head_is_named(api, cluster, offset):
    """Right after the head (where the next append would go) and far beyond it: the head did
    not move with it, so it was not appended by audit. Before the fix, verify stopped at the
    head and answered ok."""
    assert api.verify()["ok"]
    seq, eid = _forge_beyond_head(cluster, offset)
    try:
        v = api.verify()
        assert not v["ok"], v
        assert v["first_bad_seq"] == seq, v
        assert v["head_seq"] == seq - offset or (offset > 1 and v["head_seq"] < seq), v
        assert "record %d is beyond the chain head" % seq in v["reason"], v
        # everything up to the head still checked
        assert v["checked"] == v["head_seq"], v
    finally:
        _untriggered(cluster, "DELETE FROM audit.records WHERE event_id = :'eid'::uuid", eid=eid)
    v = api.verify()
    assert v["ok"], v


def test_a_bad_record_below_the_head_is_named_before_one_beyond(api, cluster):
    """The first bad record in seq order wins: a changed byte at the head's record is named,
    not the forged row beyond it."""
    _, uid = api.new_user()
    api.admin("PATCH", "/admin/users/" + uid, {"display_name": "Below"}, expect=200)
    end = time.monotonic() + 20
    while True:
        rows = cluster.psql("SELECT seq, action FROM audit.records WHERE target_id = :'t' "
                            "AND action = 'user.updated'", t=uid)
        if rows or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert rows, "user.updated not shipped"
    low, action = int(rows[0][0]), rows[0][1]
    seq, eid = _forge_beyond_head(cluster, 1)
    _untriggered(cluster, "UPDATE audit.records SET action = 'X' || substr(action, 2) "
                          "WHERE seq = %d" % low)
    try:
        v = api.verify()
        assert not v["ok"] and v["first_bad_seq"] == low, v
        assert "hash" in v["reason"], v
    finally:
        _untriggered(cluster, "UPDATE audit.records SET action = :'a' WHERE seq = %d; "
                              "DELETE FROM audit.records WHERE event_id = :'eid'::uuid" % low,
                     a=action, eid=eid)
    assert api.verify()["ok"]


def test_verify_stays_ok_while_appends_run(api, cluster, pb):
    """Logins and admin actions (shipped by identity's relay) and direct Appends move the head
    during several verifications of a chain longer than one chunk (2000): every answer is ok
    and covers exactly the records up to the head it read."""
    rpc = Rpc(pb, cluster.urls["broker"])
    tag = str(uuid.uuid4())
    try:
        for _ in range(3):  # > one chunk whatever ran before
            rpc.append([record(pb, tag) for _ in range(1000)])
    finally:
        rpc.close()
    email, uid = api.new_user()
    stop = threading.Event()
    errors, done = [], {"http": 0, "append": 0}

    def actions():
        http = requests.Session()
        i = 0
        try:
            while not stop.is_set():
                i += 1
                r = api.admin("PATCH", "/admin/users/" + uid, {"display_name": "V%d" % i},
                              http=http)
                if r.status_code != 200:
                    errors.append(("patch", r.status_code, r.text))
                if i % 5 == 0:  # a login (maybe rate limited: still an audited action)
                    r = api.call("POST", "/auth/login", http=http,
                                 body={"email": email, "password": PASSWORD})
                    if r.status_code >= 500:
                        errors.append(("login", r.status_code, r.text))
                done["http"] += 1
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(("actions", repr(e)))

    def appends():
        r = Rpc(pb, cluster.urls["broker"])
        try:
            while not stop.is_set():
                r.append([record(pb, tag) for _ in range(20)])
                done["append"] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(("append", repr(e)))
        finally:
            r.close()

    threads = [threading.Thread(target=actions), threading.Thread(target=appends)]
    for t in threads:
        t.start()
    heads = []
    try:
        for _ in range(8):
            v = api.verify()
            assert v["ok"], v
            assert v["checked"] == v["head_seq"] and v["first_bad_seq"] == 0, v
            heads.append(v["head_seq"])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert heads == sorted(heads) and heads[-1] > heads[0], heads  # appends did run meanwhile
    assert done["http"] > 0 and done["append"] > 0, done
    v = api.verify()
    assert v["ok"], v
    # gap-free up to the head it read (relays may append after it)
    assert v["head_seq"] == int(cluster.psql("SELECT count(*) FROM audit.records WHERE seq <= "
                                             "%d" % v["head_seq"])[0][0])
