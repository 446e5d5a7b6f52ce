"""Black-box tests of the expiry service straight through the broker, with no gateway: a small
Majordomo client (7/MDP, MDPC01 on a DEALER) sends extranet.Request envelopes built from proto/*.proto with
protoc --python_out into a temp dir; expiry.timers is inspected with psql. Covers who may call,
validation, Schedule as an idempotent upsert, Cancel, and firing (owner identity.Deactivate)."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The generated Python protobuf modules: pb.envelope, pb.expiry, pb.identity."""
    out = tmp_path_factory.mktemp("expiry_pb")
    subprocess.run(["protoc", "--proto_path", str(REPO / "proto"), "--python_out", str(out),
                    "envelope.proto", "expiry.proto", "identity.proto"], check=True)
    sys.path.insert(0, str(out))
    import envelope_pb2
    import expiry_pb2
    import identity_pb2

    class PB:
        envelope, expiry, identity = envelope_pb2, expiry_pb2, identity_pb2
    return PB


class Client:
    """A Majordomo 7/MDP client on a DEALER, so it writes the empty delimiter frame itself:
    sends "" | MDPC01 | service | body, receives "" | MDPC01 | service | body."""

    def __init__(self, ctx, endpoint):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, service, body):
        self.sock.send_multipart([b"", b"MDPC01", service.encode(), body])

    def recv(self, timeout):
        """(service, [body frames]) or None when nothing came within timeout seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) >= 4 and frames[0] == b"" and frames[1] == b"MDPC01", frames
        return frames[2], frames[3:]

    def close(self):
        self.sock.close()


class Rpc:
    """Envelope-level calls to the cluster's broker as a given actor."""

    def __init__(self, pb, endpoint):
        self.pb = pb
        self.ctx = zmq.Context()
        self.client = Client(self.ctx, endpoint)

    def call(self, method, msg, actor_kind="SYSTEM", reply_type=None, timeout=5.0):
        """Returns (status name, message, decoded reply or None)."""
        env = self.pb.envelope
        req = env.Request(request_id=str(uuid.uuid4()), method=method,
                          deadline_ms=int(time.time() * 1000 + timeout * 1000),
                          payload=msg.SerializeToString())
        req.actor.kind = env.ActorKind.Value(actor_kind)
        if actor_kind not in ("SYSTEM", "ANONYMOUS"):
            req.actor.user_id = str(uuid.uuid4())
        service = method.split(".")[0]
        self.client.send(service, req.SerializeToString())
        end = time.monotonic() + timeout + 1
        while True:   # replies to earlier, timed-out requests are skipped by request_id
            got = self.client.recv(max(end - time.monotonic(), 0.01))
            assert got is not None, "no reply to %s within %.0f s" % (method, timeout)
            rep = env.Reply()
            rep.ParseFromString(got[1][0])
            if rep.request_id == req.request_id:
                break
        status = env.Status.Name(rep.status)
        body = None
        if status == "OK" and reply_type is not None:
            body = reply_type()
            body.ParseFromString(rep.payload)
        return status, rep.message, body

    def close(self):
        self.client.close()
        self.ctx.term()


@pytest.fixture(scope="module")
def rpc(cluster, pb, require_service):
    require_service("expiry")
    r = Rpc(pb, cluster.urls["broker"])
    yield r
    r.close()


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def schedule(rpc, subject, due, kind="user.expire", actor="SYSTEM"):
    m = rpc.pb.expiry.ScheduleRequest()
    m.timer.kind, m.timer.subject, m.timer.due_at = kind, subject, due
    return rpc.call("expiry.Schedule", m, actor)


def cancel(rpc, subject, kind="user.expire", actor="SYSTEM"):
    return rpc.call("expiry.Cancel", rpc.pb.expiry.CancelRequest(kind=kind, subject=subject),
                    actor)


def list_timers(rpc, subject="", state="", kind="", actor="ADMIN"):
    st, msg, rep = rpc.call("expiry.List",
                            rpc.pb.expiry.ListRequest(kind=kind, subject=subject, state=state),
                            actor, reply_type=rpc.pb.expiry.ListReply)
    assert st == "OK", (st, msg)
    return list(rep.timers)


def timer_rows(cluster, subject):
    """[(state, attempts, last_error)] of every timer of subject, oldest first, from PG."""
    return [(r[0], int(r[1]), r[2]) for r in cluster.psql(
        "SELECT state, attempts, coalesce(last_error, '') FROM expiry.timers "
        "WHERE subject = :'s' ORDER BY created_at", s=subject)]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.1)


def test_expiry_schedule_refused_to_anonymous_and_extranet(rpc):
    s = str(uuid.uuid4())
    for actor in ("ANONYMOUS", "EXTRANET"):
        st, _, _ = schedule(rpc, s, iso(time.time() + 3600), actor=actor)
        assert st == "FORBIDDEN"
        st, _, _ = cancel(rpc, s, actor=actor)
        assert st == "FORBIDDEN"
    assert list_timers(rpc, subject=s) == []
    for actor in ("SYSTEM", "ADMIN", "EMPLOYEE"):
        st, msg, _ = schedule(rpc, s, iso(time.time() + 3600), actor=actor)
        assert st == "OK", (actor, msg)
    assert cancel(rpc, s)[0] == "OK"


def test_expiry_list_only_for_admin_and_system(rpc):
    req = rpc.pb.expiry.ListRequest()
    for actor in ("ANONYMOUS", "EXTRANET", "EMPLOYEE"):
        assert rpc.call("expiry.List", req, actor)[0] == "FORBIDDEN"
    for actor in ("ADMIN", "SYSTEM"):
        assert rpc.call("expiry.List", req, actor)[0] == "OK"
    bad = [rpc.pb.expiry.ListRequest(state="canceled"), rpc.pb.expiry.ListRequest(limit=-1),
           rpc.pb.expiry.ListRequest(limit=1001), rpc.pb.expiry.ListRequest(kind="k" * 65)]
    for m in bad:
        assert rpc.call("expiry.List", m, "ADMIN")[0] == "INVALID", m


def test_expiry_schedule_validates_its_input(rpc):
    good_s, good_t = str(uuid.uuid4()), iso(time.time() + 3600)
    cases = [
        ("user.expire", "", good_t),                         # empty subject
        ("user.expire", "not-a-uuid", good_t),
        ("user.expire", good_s + ":" + good_s, good_t),      # one uuid for this kind
        ("user.expire", good_s + " ", good_t),
        ("", good_s, good_t),                                # empty kind
        ("user.delete", good_s, good_t),                     # unknown kind
        ("user.expire", good_s, ""),
        ("user.expire", good_s, "tomorrow"),
        ("user.expire", good_s, "2026-02-30T10:00:00Z"),
        ("user.expire", good_s, "2026-11-25T10:00:00"),      # no offset
        ("user.expire", good_s, "2026-11-25 10:00:00Z"),
        ("user.expire", good_s, "1732528800"),
    ]
    for kind, subject, due in cases:
        st, msg, _ = schedule(rpc, subject, due, kind=kind)
        assert st == "INVALID", (kind, subject, due, st)
        assert msg
    # a request without a timer at all
    assert rpc.call("expiry.Schedule", rpc.pb.expiry.ScheduleRequest())[0] == "INVALID"
    assert cancel(rpc, "nope")[0] == "INVALID"
    assert cancel(rpc, good_s, kind="user.delete")[0] == "INVALID"
    assert list_timers(rpc, subject=good_s) == []
    # garbage payload: not a ScheduleRequest at all
    env = rpc.pb.envelope
    req = env.Request(request_id=str(uuid.uuid4()), method="expiry.Schedule",
                      deadline_ms=int(time.time() * 1000 + 5000), payload=b"\xff\xff\xff\xff")
    req.actor.kind = env.SYSTEM
    rpc.client.send("expiry", req.SerializeToString())
    got = rpc.client.recv(5)
    assert got is not None
    rep = env.Reply()
    rep.ParseFromString(got[1][0])
    assert env.Status.Name(rep.status) == "INVALID"


def test_expiry_schedule_is_an_idempotent_upsert(rpc, cluster):
    s = str(uuid.uuid4())
    t0 = int(time.time())
    far, farther = iso(t0 + 3600), iso(t0 + 7200)
    for _ in range(3):
        assert schedule(rpc, s, far)[0] == "OK"
    timers = list_timers(rpc, subject=s)
    assert [(t.state, t.due_at) for t in timers] == [("pending", far)]
    first_id = timers[0].id
    # moving it keeps one pending timer (the same row) with the new due time
    assert schedule(rpc, s, farther)[0] == "OK"
    timers = list_timers(rpc, subject=s)
    assert [(t.id, t.state, t.due_at) for t in timers] == [(first_id, "pending", farther)]
    # another offset, same instant: still one timer
    same = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(t0 + 7200 + 2 * 3600))
    assert schedule(rpc, s, same)[0] == "OK"
    assert [(t.id, t.due_at) for t in list_timers(rpc, subject=s)] == [(first_id, farther)]
    # an unchanged due_at leaves the row untouched (updated_at does not move)
    before = cluster.psql("SELECT updated_at FROM expiry.timers WHERE id = :'i'", i=first_id)
    assert schedule(rpc, s, farther)[0] == "OK"
    assert cluster.psql("SELECT updated_at FROM expiry.timers WHERE id = :'i'",
                        i=first_id) == before
    # cancel, twice: the timer is cancelled, nothing is pending, the second is a no-op
    assert cancel(rpc, s)[0] == "OK"
    assert cancel(rpc, s)[0] == "OK"
    assert [t.state for t in list_timers(rpc, subject=s)] == ["cancelled"]
    # scheduling again after a cancel makes a new pending timer; history stays
    assert schedule(rpc, s, far)[0] == "OK"
    states = sorted(t.state for t in list_timers(rpc, subject=s))
    assert states == ["cancelled", "pending"]
    assert cancel(rpc, s)[0] == "OK"
    assert [r[0] for r in timer_rows(cluster, s)] == ["cancelled", "cancelled"]


def test_expiry_subject_is_case_insensitive(rpc):
    s = str(uuid.uuid4())
    assert schedule(rpc, s.upper(), iso(time.time() + 3600))[0] == "OK"
    assert schedule(rpc, s, iso(time.time() + 3600))[0] == "OK"
    timers = list_timers(rpc, subject=s)
    assert [t.state for t in timers] == ["pending"]
    assert cancel(rpc, s.upper())[0] == "OK"
    assert [t.state for t in list_timers(rpc, subject=s)] == ["cancelled"]


def test_expiry_schedule_concurrent_upserts_keep_one_pending(rpc, pb, cluster):
    """Twenty Schedules of one (kind, subject) in flight at once through several clients."""
    s = str(uuid.uuid4())
    clients = [Rpc(pb, cluster.urls["broker"]) for _ in range(4)]
    try:
        sent = []
        for i in range(20):
            c = clients[i % len(clients)]
            m = pb.expiry.ScheduleRequest()
            m.timer.kind, m.timer.subject = "user.expire", s
            m.timer.due_at = iso(time.time() + 3600 + i)
            env = pb.envelope
            req = env.Request(request_id=str(uuid.uuid4()), method="expiry.Schedule",
                              deadline_ms=int(time.time() * 1000 + 10000),
                              payload=m.SerializeToString())
            req.actor.kind = env.SYSTEM
            c.client.send("expiry", req.SerializeToString())
            sent.append(c)
        for c in sent:
            got = c.client.recv(10)
            assert got is not None
            rep = pb.envelope.Reply()
            rep.ParseFromString(got[1][0])
            assert pb.envelope.Status.Name(rep.status) == "OK", rep.message
    finally:
        for c in clients:
            c.close()
    assert [t.state for t in list_timers(rpc, subject=s)] == ["pending"]
    assert cancel(rpc, s)[0] == "OK"


def test_expiry_fires_unknown_user_once_and_finishes(rpc, cluster, require_service):
    """Owner identity answers for a user that does not exist: the timer ends (done) after one
    call instead of retrying forever."""
    require_service("identity")
    s = str(uuid.uuid4())
    assert schedule(rpc, s, iso(time.time() - 1))[0] == "OK"   # already due
    rows = wait_for(lambda: [r for r in timer_rows(cluster, s) if r[0] == "done"], 20,
                    "the timer to fire")
    assert rows[0][1] == 1, rows
    timers = list_timers(rpc, subject=s)
    assert timers[0].fired_at


def test_expiry_leaves_unknown_kinds_alone(rpc, cluster, require_service):
    """A row of a kind this build does not know (a newer copy's, during a rolling upgrade) is
    never claimed; a known timer due at the same time fires."""
    require_service("identity")
    other, control = str(uuid.uuid4()), str(uuid.uuid4())
    cluster.psql("INSERT INTO expiry.timers (kind, subject, due_at) "
                 "VALUES ('future.kind', :'s', now() - interval '1 second')", s=other)
    assert schedule(rpc, control, iso(time.time() - 1))[0] == "OK"
    wait_for(lambda: [r for r in timer_rows(cluster, control) if r[0] == "done"], 20,
             "the control timer to fire")
    assert timer_rows(cluster, other) == [("pending", 0, "")]
    cluster.psql("DELETE FROM expiry.timers WHERE subject = :'s'", s=other)


def test_expiry_retries_while_owner_is_down(rpc, cluster, require_service):
    """With identity stopped the timer stays pending, counting attempts and keeping the error;
    once identity is back it fires."""
    require_service("identity")
    s = str(uuid.uuid4())
    cluster.stop_service("identity")
    try:
        assert schedule(rpc, s, iso(time.time() - 1))[0] == "OK"
        rows = wait_for(lambda: [r for r in timer_rows(cluster, s) if r[1] >= 1 and r[2]], 30,
                        "a failed attempt to be recorded")
        assert rows[0][0] == "pending"
        assert "unavailable" in rows[0][2] or "deadline" in rows[0][2], rows
    finally:
        cluster.start_service("identity")
    rows = wait_for(lambda: [r for r in timer_rows(cluster, s) if r[0] == "done"], 90,
                    "the timer to fire once identity is back")
    assert rows[0][1] >= 2, rows


def test_expiry_copy_killed_mid_call_is_taken_over(rpc, cluster, require_service):
    """A copy that dies while calling the owner leaves its claim behind; once the claim's lease
    has lapsed another copy fires the timer (the crashed call counts as an attempt)."""
    require_service("identity")
    quick = {"EXTRANET_EXPIRY_CALL_MS": "5000", "EXTRANET_EXPIRY_LEASE_MS": "6000"}
    s = str(uuid.uuid4())
    cluster.stop_service("expiry")
    cluster.stop_service("identity")   # so the call hangs until its deadline
    copies = []
    try:
        copies.append(cluster.add_copy("expiry", env=quick))
        assert schedule(rpc, s, iso(time.time() - 1))[0] == "OK"
        claimed = "SELECT count(*) FROM expiry.timers WHERE subject = :'s' AND claim IS NOT NULL"
        wait_for(lambda: cluster.psql(claimed, s=s) == [["1"]], 10, "the timer to be claimed")
        cluster.kill_service(copies[0])
        # the dead copy's call never finished: its claim is still there, nothing recorded
        assert cluster.psql(claimed, s=s) == [["1"]]
        assert timer_rows(cluster, s) == [("pending", 1, "")]
        cluster.start_service("identity")
        copies.append(cluster.add_copy("expiry", env=quick))
        rows = wait_for(lambda: [r for r in timer_rows(cluster, s) if r[0] == "done"], 30,
                        "another copy to take the timer over")
        assert rows[0][1] == 2, rows
    finally:
        for c in copies:
            if cluster.procs[c].running():
                cluster.stop_service(c)
        if not cluster.procs["identity"].running():
            cluster.start_service("identity")
        cluster.start_service("expiry")
