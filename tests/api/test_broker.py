"""Black-box tests of the broker binary (services/broker) driven by the independent Python
Majordomo peer in mdp_peer.py: RFC 7/MDP and 8/MMI behaviour, queueing, heartbeats, DISCONNECT,
the event forwarder, bad input and clean shutdown. Run: /usr/bin/python3 -m pytest tests/api/test_broker.py
The binary comes from $EXTRANET_BUILD_DIR (default /work/main/build)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mdp_peer import (DISCONNECT, HEARTBEAT, HEARTBEAT_S, LIVENESS, MDPC, MDPW, REQUEST,  # noqa: E402
                      Client, EchoWorker, Worker)

BUILD_DIR = os.environ.get("EXTRANET_BUILD_DIR", "/work/main/build")
BROKER_BIN = os.path.join(BUILD_DIR, "services", "broker", "broker")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error", "ERROR: LeakSanitizer")


def wait_for(pred, timeout, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Broker:
    """One broker process on 127.0.0.1 with kernel-chosen ports, read back from its log."""

    def __init__(self, tmp_path, extra_env=None, mdp_binds=1):
        if not os.access(BROKER_BIN, os.X_OK):
            raise AssertionError(f"broker binary not found at {BROKER_BIN}: build target 'broker' "
                                 f"or set EXTRANET_BUILD_DIR")
        self.log_path = tmp_path / f"broker-{time.monotonic_ns()}.log"
        env = dict(os.environ)
        env.update({
            "EXTRANET_BROKER_BIND": ",".join(["tcp://127.0.0.1:*"] * mdp_binds),
            "EXTRANET_EVENTS_BIND": "tcp://127.0.0.1:*",
            "EXTRANET_EVENTS_PUB_BIND": "tcp://127.0.0.1:*",
            "EXTRANET_LOG": "info",
        })
        env.update(extra_env or {})
        self.mdp_binds = mdp_binds
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BROKER_BIN], env=env, stdout=self.log, stderr=self.log)
        self.endpoints = wait_for(self._endpoints, 10, what="broker endpoints in its log")
        self.mdp = self.endpoints["mdp"][0]
        self.events = self.endpoints["events"][0]
        self.events_pub = self.endpoints["events-pub"][0]

    def _endpoints(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"broker exited with {self.proc.returncode}: {self.text()}")
        found = {}
        for kind, ep in re.findall(r'"bound ([a-z-]+) (tcp://[0-9.]+:[0-9]+)"', self.text()):
            found.setdefault(kind, []).append(ep)
        if len(found.get("mdp", [])) == self.mdp_binds and "events" in found \
                and "events-pub" in found:
            return found
        return None

    def text(self):
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def assert_clean(self):
        text = self.text()
        for mark in SANITIZER_MARKS:
            assert mark not in text, f"sanitizer report in broker log:\n{text[-4000:]}"

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("broker did not exit within 10 s of SIGTERM")
        self.log.close()
        self.assert_clean()
        return rc


@pytest.fixture(scope="module")
def ctx():
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker"))
    yield b
    assert b.stop() == 0


@pytest.fixture
def peers(ctx, broker):
    """Creates clients and workers on the shared broker and closes whatever a test leaves."""
    made = []

    class Factory:
        def client(self):
            c = Client(ctx, broker.mdp)
            made.append(c)
            return c

        def worker(self, service=None):
            w = Worker(ctx, broker.mdp, service)
            made.append(w)
            return w

        def echo(self, service, handler=None):
            w = EchoWorker(ctx, broker.mdp, service, handler)
            w.start()
            w.ready_sent.wait(2)
            made.append(w)
            return w

    yield Factory()
    for p in made:
        if isinstance(p, EchoWorker):
            p.stop()
        else:
            p.close()


def wait_mmi(client, service, code, timeout=3.0):
    wait_for(lambda: client.mmi_service(service) == code, timeout, step=0.05,
             what=f"mmi.service {service} == {code}")


# --------------------------------------------------------------------------------------------


def test_help_and_version():
    out = subprocess.run([BROKER_BIN, "--version"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 0 and out.stdout.startswith("broker ")
    out = subprocess.run([BROKER_BIN, "--help"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 0 and "EXTRANET_BROKER_BIND" in out.stdout
    out = subprocess.run([BROKER_BIN, "--bogus"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 2


def test_request_reply(peers):
    peers.echo("echo.rr", handler=lambda body: [b"re:" + body[0]])
    c = peers.client()
    wait_mmi(c, "echo.rr", "200")
    service, body = c.request("echo.rr", b"hello")
    assert service == b"echo.rr" and body == [b"re:hello"]


def test_multi_frame_bodies_pass_through(peers):
    peers.echo("echo.frames")
    c = peers.client()
    wait_mmi(c, "echo.frames", "200")
    frames = [b"a", b"", os.urandom(3000), b"\x00\x01"]
    assert c.request("echo.frames", *frames) == (b"echo.frames", frames)


def test_many_requests_in_flight_one_client(peers):
    peers.echo("echo.window")
    peers.echo("echo.window")
    c = peers.client()
    wait_mmi(c, "echo.window", "200")
    for i in range(200):
        c.send("echo.window", str(i).encode())
    got = sorted(int(c.recv(5)[1][0]) for _ in range(200))
    assert got == list(range(200))


def wait_registered(workers, timeout=HEARTBEAT_S * 2.5):
    """A broker heartbeats only workers it registered: one HEARTBEAT each proves all are in."""
    poller = zmq.Poller()
    for w in workers:
        poller.register(w.sock, zmq.POLLIN)
    pending = set(range(len(workers)))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        ready = dict(poller.poll(50))
        for k in list(pending):
            if workers[k].sock in ready:
                got = workers[k].recv(0)
                assert got is not None and got[0] == HEARTBEAT, got
                pending.discard(k)
    assert not pending, f"workers {pending} never heard from the broker"


def test_fair_dispatch_round_robin(peers):
    # Hand-driven workers: each one answers when the test says so, so the order is exact.
    ws = [peers.worker("fair") for _ in range(3)]
    wait_registered(ws)
    c = peers.client()
    poller = zmq.Poller()
    for w in ws:
        poller.register(w.sock, zmq.POLLIN)
    order = []
    for i in range(12):
        c.send("fair", str(i).encode())
        served = None
        deadline = time.monotonic() + 2
        while served is None and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                k = [w.sock for w in ws].index(sock)
                got = ws[k].recv(0)
                if got and got[0] == REQUEST:
                    served = k
                    ws[k].reply(got[1][0], b"ok")
        assert served is not None, f"request {i} reached no worker"
        order.append(served)
        assert c.recv(2)[1] == [b"ok"]
    # Least recently used first: the broker cycles through the workers in a fixed order.
    first = order[:3]
    assert sorted(first) == [0, 1, 2]
    assert order == first * 4


def test_fair_dispatch_spreads_load(peers):
    ws = [peers.echo("spread") for _ in range(4)]
    wait_for(lambda: all("HEARTBEAT" in w.commands for w in ws), HEARTBEAT_S * 2.5,
             what="every worker registered")
    c = peers.client()
    for i in range(40):
        c.send("spread", b"x")
    for _ in range(40):
        assert c.recv(5) is not None
    counts = [len(w.served) for w in ws]
    assert sum(counts) == 40 and min(counts) >= 5, counts


def test_mmi(peers):
    c = peers.client()
    assert c.mmi_service("no.such.service") == "404"
    w = peers.worker("mmi_target")
    wait_mmi(c, "mmi_target", "200")
    # RFC 8: unimplemented services in the mmi. namespace answer 501, with the service echoed.
    assert c.request("mmi.nothing", b"x") == (b"mmi.nothing", [b"501"])
    assert c.request("mmi.", b"x") == (b"mmi.", [b"501"])
    w.disconnect()
    wait_mmi(c, "mmi_target", "404")


def test_mmi_namespace_is_reserved_for_the_broker(peers):
    w = peers.worker("mmi.service")
    got = w.recv(2)
    assert got is not None and got[0] == DISCONNECT
    c = peers.client()
    assert c.mmi_service("mmi.service") == "404"


def test_queued_request_served_when_worker_arrives(peers):
    c = peers.client()
    c.send("late", b"early bird")
    assert c.recv(0.3) is None
    peers.echo("late")
    assert c.recv(3) == (b"late", [b"early bird"])


def test_queue_expiry_drops_request(ctx, tmp_path):
    b = Broker(tmp_path, {"EXTRANET_QUEUE_MS": "600"})
    try:
        c = Client(ctx, b.mdp)
        c.send("slow.to.start", b"stale")
        time.sleep(1.2)  # past EXTRANET_QUEUE_MS: the broker must have dropped it
        c.send("slow.to.start", b"fresh")
        w = Worker(ctx, b.mdp, "slow.to.start")
        client, body = w.recv_request(2)
        assert body == [b"fresh"]
        w.reply(client, b"done")
        assert c.recv(2) == (b"slow.to.start", [b"done"])
        assert w.recv_request(0.8) is None, "the expired request was dispatched"
        w.close()
        c.close()
    finally:
        assert b.stop() == 0


def test_queue_bounded_in_count(ctx, tmp_path):
    b = Broker(tmp_path, {"EXTRANET_QUEUE_MAX": "3"})
    try:
        c = Client(ctx, b.mdp)
        for i in range(5):
            c.send("crowded", str(i).encode())
        wait_for(lambda: b.text().count("oldest request dropped") >= 2, 3, what="drop warnings")
        w = EchoWorker(ctx, b.mdp, "crowded")
        w.start()
        got = sorted(c.recv(2)[1][0] for _ in range(3))
        assert got == [b"2", b"3", b"4"]
        assert c.recv(0.3) is None
        w.stop()
        c.close()
    finally:
        assert b.stop() == 0


def test_queue_bounded_in_bytes(ctx, tmp_path):
    """EXTRANET_QUEUE_BYTES caps the body bytes queued in all services together: a service's
    own oldest requests make room first, else the new request is refused; a request that a
    waiting worker takes at once is never refused."""
    b = Broker(tmp_path, {"EXTRANET_QUEUE_BYTES": "1000000"})
    c = Client(ctx, b.mdp)
    workers = []
    try:
        big = 400_000
        for i in range(3):
            c.send("bulk.a", bytes([48 + i]) * big)   # the third pushes out the first
        wait_for(lambda: "oldest request of 'bulk.a' dropped" in b.text(), 3,
                 what="bytes-cap drop warning")
        c.send("bulk.b", b"B" * big)                  # bulk.b has nothing to give up: refused
        wait_for(lambda: "for 'bulk.b' refused" in b.text(), 3, what="bytes-cap refusal")
        c.send("bulk.b", b"small")                    # still fits under the cap
        workers.append(EchoWorker(ctx, b.mdp, "bulk.free"))
        workers[-1].start()
        wait_mmi(c, "bulk.free", "200")
        assert c.request("bulk.free", b"F" * big, timeout=3) == (b"bulk.free", [b"F" * big])
        for name in ("bulk.a", "bulk.b"):
            workers.append(EchoWorker(ctx, b.mdp, name))
            workers[-1].start()
        got = []
        for _ in range(3):
            rep = c.recv(3)
            assert rep is not None, "queued requests missing; got %r" % got
            got.append(rep[1][0][:1])
        assert sorted(got) == [b"1", b"2", b"s"], got
        assert c.recv(0.5) is None
    finally:
        for w in workers:
            w.stop()
        c.close()
        assert b.stop() == 0


def test_broker_heartbeats_waiting_and_busy_workers(peers):
    w = peers.worker("hb")
    got = w.recv(HEARTBEAT_S * 2.5)
    assert got is not None and got[0] == HEARTBEAT
    c = peers.client()
    c.send("hb", b"slow job")
    client, _ = w.recv_request(2)
    # Busy for longer than the liveness window, heartbeating meanwhile: must stay registered,
    # keep hearing the broker, and its late reply must still reach the client.
    heard = 0
    end = time.monotonic() + HEARTBEAT_S * (LIVENESS + 1.5)
    while time.monotonic() < end:
        w.heartbeat()
        got = w.recv(HEARTBEAT_S / 2)
        if got and got[0] == HEARTBEAT:
            heard += 1
    assert heard >= LIVENESS - 1, f"broker sent {heard} heartbeats to a busy worker"
    assert peers.client().mmi_service("hb") == "200"
    w.reply(client, b"finally")
    assert c.recv(2) == (b"hb", [b"finally"])


def test_dead_worker_is_removed_and_its_request_not_requeued(peers):
    c = peers.client()
    w = peers.worker("mortal")
    c.send("mortal", b"job")
    assert w.recv_request(2) is not None
    t0 = time.monotonic()
    # The worker now stays silent (no heartbeat, no reply).
    assert c.mmi_service("mortal") == "200"
    wait_mmi(c, "mortal", "404", timeout=HEARTBEAT_S * LIVENESS + 2)
    elapsed = time.monotonic() - t0
    assert HEARTBEAT_S * (LIVENESS - 1) <= elapsed <= HEARTBEAT_S * LIVENESS + 1.5, elapsed
    # The job may have run: it must not be handed to the next worker.
    w2 = peers.worker("mortal")
    assert w2.recv_request(1.0) is None
    assert c.recv(0.1) is None


def test_disconnect_forgets_worker(peers):
    c = peers.client()
    w = peers.worker("leaving")
    wait_mmi(c, "leaving", "200")
    w.disconnect()
    wait_mmi(c, "leaving", "404")
    while w.recv(0.1) is not None:  # a heartbeat may have crossed the DISCONNECT
        pass
    # RFC 7: after DISCONNECT the broker sends nothing more, not even heartbeats.
    assert w.recv(HEARTBEAT_S * 1.6) is None


def test_disconnect_after_reply_requeues_dispatched_request(peers):
    c = peers.client()
    c.send("handover", b"one")
    c.send("handover", b"two")
    assert c.mmi_service("handover") == "404"  # same connection: both requests are queued now
    w1 = peers.worker("handover")
    client, body = w1.recv_request(2)
    assert body == [b"one"]
    # Reply and leave at once: "two" is dispatched to w1 in between and must be requeued.
    w1.reply(client, b"1")
    w1.disconnect()
    assert c.recv(2) == (b"handover", [b"1"])
    crossed = w1.recv_request(2)
    assert crossed is not None and crossed[1] == [b"two"], "the requeue path was not exercised"
    w2 = peers.worker("handover")
    client, body = w2.recv_request(2)
    assert body == [b"two"]
    w2.reply(client, b"2")
    assert c.recv(2) == (b"handover", [b"2"])


def test_unknown_worker_commands_get_disconnect(peers):
    for frames in ([b"", MDPW, HEARTBEAT],
                   [b"", MDPW, b"\x03", b"someone", b"", b"forged reply"]):
        p = peers.worker()
        p.send_raw(frames)
        got = p.recv(2)
        assert got is not None and got[0] == DISCONNECT, frames


def test_events_forwarded(ctx, broker):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"session.")
    sub.connect(broker.events)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(broker.events_pub)
    try:
        # Subscriptions travel SUB -> XPUB -> XSUB -> PUB; publish until the path is up.
        got = None
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            pub.send_multipart([b"chat.message", b"not for us"])
            pub.send_multipart([b"session.revoked", b"\x0a\x01x"])
            if sub.poll(50):
                got = sub.recv_multipart()
        assert got == [b"session.revoked", b"\x0a\x01x"]
        # Topics nobody subscribed to never arrive.
        while sub.poll(200):
            assert sub.recv_multipart()[0].startswith(b"session.")
    finally:
        sub.close()
        pub.close()


def test_two_bind_endpoints(ctx, tmp_path):
    b = Broker(tmp_path, mdp_binds=2)
    try:
        eps = b.endpoints["mdp"]
        assert len(eps) == 2 and eps[0] != eps[1]
        w = EchoWorker(ctx, eps[0], "both")
        w.start()
        c = Client(ctx, eps[1])
        wait_mmi(c, "both", "200")
        assert c.request("both", b"across") == (b"both", [b"across"])
        c.close()
        w.stop()
    finally:
        assert b.stop() == 0


def test_bad_input_never_crashes_or_wedges(ctx, broker, peers):
    good = peers.echo("survivor")
    c = peers.client()
    wait_mmi(c, "survivor", "200")

    def raw(frames):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(broker.mdp)
        s.send_multipart(frames)
        return s

    bad = [
        [b"garbage"],                                   # no empty frame
        [b""],                                          # empty frame only
        [b"", b""],                                     # empty header
        [b"", b"MDPX01", b"svc", b"body"],              # wrong header
        [b"", b"MDPC01"],                               # truncated client request
        [b"", b"MDPC01", b"survivor"],                  # client request without a body
        [b"", b"MDPC01", b"", b"body"],                 # empty service name
        [b"", b"MDPC01", b"bad\x00name", b"body"],      # unprintable service name
        [b"", b"MDPC01", b"s" * 300, b"body"],          # service name too long
        [b"x", MDPC, b"survivor", b"body"],             # non-empty frame 0
        [b"", MDPW],                                    # worker message without a command
        [b"", MDPW, b""],                               # empty command frame
        [b"", MDPW, b"\x01\x01", b"svc"],               # two-byte command
        [b"", MDPW, b"\x09"],                           # unknown command byte
        [b"", MDPW, b"\x01"],                           # READY without service name
        [b"", MDPW, b"\x01", b""],                      # READY with empty service name
        [b"", MDPW, b"\x01", b"svc", b"extra"],         # READY with extra frames
        [b"", MDPW, b"\x03", b"nobody", b"", b"x"],     # REPLY from an unknown worker
        [b"", MDPW, b"\x03"],                           # truncated REPLY
        [b"", MDPW, b"\x02", b"c", b"", b"x"],          # REQUEST sent to the broker
        [b"", MDPW, b"\x05", b"extra"],                 # DISCONNECT with extra frames, unknown
        [b"", MDPC] + [b"f"] * 100,                     # too many frames
    ]
    socks = [raw(f) for f in bad]

    # A registered worker misbehaving in each way is disconnected (RFC 7).
    worker_bad = [
        [b"", MDPW, b"\x09"],                           # unknown command
        [b"", MDPW, b"\x01", b"again"],                 # second READY
        [b"", MDPW, b"\x03", b"nobody", b"", b"x"],     # REPLY without a request
        [b"", MDPW, b"\x03", b"c"],                     # truncated REPLY
        [b"", MDPW, b"\x04", b"extra"],                 # HEARTBEAT with extra frames
        [b"", MDPC, b"survivor", b"x"],                 # client request from a worker socket
        [b"", b"MDPW02", b"\x04"],                      # wrong protocol version
    ]
    for frames in worker_bad:
        w = peers.worker("victim")
        w.send_raw(frames)
        got = w.recv(2)
        while got is not None and got[0] == HEARTBEAT:
            got = w.recv(2)
        assert got is not None and got[0] == DISCONNECT, frames
    wait_mmi(c, "victim", "404")

    # A worker that replies to a client other than the one it was given is disconnected too.
    liar = peers.worker("liar")
    c.send("liar", b"q")
    client, _ = liar.recv_request(2)
    liar.reply(b"\x00other", b"spoof")
    got = liar.recv(2)
    assert got is not None and got[0] == DISCONNECT
    assert c.recv(0.3) is None

    # An oversized frame makes libzmq drop that peer (ZMQ_MAXMSGSIZE = MDP_MAX_FRAME).
    big = raw([b"", MDPC, b"survivor", b"\0" * (4 * 1024 * 1024 + 1)])
    socks.append(big)

    # Still serving, and said why it dropped things.
    for i in range(5):
        assert c.request("survivor", b"still here %d" % i) == (b"survivor", [b"still here %d" % i])
    assert broker.alive()
    assert '"level":"warn"' in broker.text()
    for s in socks:
        s.close()
    assert len(good.served) == 5


def test_sigterm_disconnects_workers_and_exits_zero(ctx, tmp_path):
    b = Broker(tmp_path)
    w = Worker(ctx, b.mdp, "bye")
    c = Client(ctx, b.mdp)
    wait_mmi(c, "bye", "200")
    assert b.stop() == 0
    got = w.recv(2)
    while got is not None and got[0] == HEARTBEAT:
        got = w.recv(2)
    assert got is not None and got[0] == DISCONNECT
    assert '"exit 0"' in b.text()
    w.close()
    c.close()
