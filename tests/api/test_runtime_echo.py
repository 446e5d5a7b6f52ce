"""Black-box tests of the service runtime (services/runtime: svc, mdp_client) through the echo
service: a real broker and a real echo process on free ports, driven by a plain python3-zmq
Majordomo client with envelopes built from proto/envelope.proto by protoc at test time.
Self-contained: starts its own broker and echo from $EXTRANET_BUILD_DIR (default build/)."""

import importlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("EXTRANET_BUILD_DIR", str(ROOT / "build")))
BROKER_BIN = BUILD / "services" / "broker" / "broker"
ECHO_BIN = BUILD / "services" / "echo" / "echo"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error", "ERROR: LeakSanitizer")

# The runtime's heartbeat contract (services/runtime/include/extranet/mdp.h).
HEARTBEAT_S = 1.0
LIVENESS = 5


def _load_pb():
    """envelope_pb2 generated into a temp dir (no generated Python is committed)."""
    out = tempfile.mkdtemp(prefix="rt-echo-pb-")
    subprocess.run(["protoc", "--proto_path", str(ROOT / "proto"), "--python_out", out,
                    str(ROOT / "proto" / "envelope.proto")], check=True)
    sys.path.insert(0, out)
    return importlib.import_module("envelope_pb2")


pytestmark = pytest.mark.skipif(not (BROKER_BIN.exists() and ECHO_BIN.exists()),
                                reason="broker/echo not built in %s" % BUILD)
pb = _load_pb() if (BROKER_BIN.exists() and ECHO_BIN.exists()) else None


def _now_ms():
    return int(time.time() * 1000)


def _wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class Proc:
    """A child process with stderr in a file we can read while it runs."""

    def __init__(self, argv, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env)
        self.p = subprocess.Popen(argv, env=full_env, stdout=self.log, stderr=self.log)

    def text(self):
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode

    def assert_clean(self):
        t = self.text()
        for mark in SANITIZER_MARKS:
            assert mark not in t, "%s in %s:\n%s" % (mark, self.log_path, t[-4000:])


class Broker(Proc):
    """A broker on free ports; `like` restarts one on the endpoints another had."""

    def __init__(self, tmp, name="broker.log", like=None):
        env = {"EXTRANET_BROKER_BIND": like.mdp if like else "tcp://127.0.0.1:*",
               "EXTRANET_EVENTS_BIND": like.events if like else "tcp://127.0.0.1:*",
               "EXTRANET_EVENTS_PUB_BIND": like.events_pub if like else "tcp://127.0.0.1:*",
               "EXTRANET_LOG": "info"}
        super().__init__([str(BROKER_BIN)], env, os.path.join(tmp, name))

        def bound():
            m = dict(re.findall(r'"bound (mdp|events-pub|events) (tcp://[0-9.:]+)"', self.text()))
            return m if len(m) == 3 else None

        ports = _wait_for(bound, 10, "broker endpoints")
        self.mdp = ports["mdp"]
        self.events_pub = ports["events-pub"]
        self.events = ports["events"]


class Echo(Proc):
    def __init__(self, tmp, broker, threads=4, drain_ms=10000, name="echo.log", brokers=None,
                 extra_env=None):
        brokers = brokers or [broker]
        env = {"EXTRANET_BROKER": ",".join(b.mdp for b in brokers),
               "EXTRANET_EVENTS_PUB": ",".join(b.events_pub for b in brokers),
               "EXTRANET_THREADS": str(threads), "EXTRANET_DRAIN_MS": str(drain_ms),
               "EXTRANET_LOG": "info"}
        env.update(extra_env or {})
        super().__init__([str(ECHO_BIN)], env, os.path.join(tmp, name))


class Client:
    """An asynchronous MDP client (DEALER): many requests in flight, replies by request_id."""

    def __init__(self, ctx, endpoint):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def close(self):
        self.sock.close()

    def send_raw(self, service, body):
        self.sock.send_multipart([b"", b"MDPC01", service, body])

    def send(self, method="echo.Echo", data=b"", sleep_ms=0, deadline_ms=None, payload=None,
             rid=None):
        rid = rid or str(uuid.uuid4())
        req = pb.Request(request_id=rid, method=method,
                         deadline_ms=deadline_ms if deadline_ms is not None else _now_ms() + 20000)
        req.actor.kind = pb.SYSTEM
        if payload is None:
            payload = pb.EchoRequest(data=data, sleep_ms=sleep_ms).SerializeToString()
        req.payload = payload
        self.send_raw(method.split(".")[0].encode(), req.SerializeToString())
        return rid

    def recv(self, timeout):
        """One Reply, or None after timeout seconds. Checks the MDP client framing."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) == 4 and frames[0] == b"" and frames[1] == b"MDPC01", frames
        rep = pb.Reply()
        rep.ParseFromString(frames[3])
        return rep

    def call(self, timeout=10, **kw):
        rid = self.send(**kw)
        end = time.monotonic() + timeout
        while True:
            rep = self.recv(max(0.0, end - time.monotonic()))
            assert rep is not None, "no reply to " + rid
            if rep.request_id == rid:
                return rep


def _echo_reply(rep):
    assert rep.status == pb.OK, (rep.status, rep.message)
    out = pb.EchoReply()
    out.ParseFromString(rep.payload)
    return out


def _wait_all_threads(client, threads):
    """Readiness: every handler thread has registered (each is one MDP worker)."""
    def all_seen():
        rids = [client.send(sleep_ms=150) for _ in range(threads * 2)]
        seen = set()
        end = time.monotonic() + 5
        pending = set(rids)
        while pending and time.monotonic() < end:
            rep = client.recv(end - time.monotonic())
            if rep is None:
                break
            if rep.request_id in pending:
                pending.discard(rep.request_id)
                seen.add(_echo_reply(rep).worker_thread)
        return len(seen) == threads and not pending
    _wait_for(all_seen, 20, "all %d echo threads" % threads)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    """A broker and an echo with 4 threads, shared by the tests that leave both running."""
    tmp = str(tmp_path_factory.mktemp("rt-echo"))
    broker = Broker(tmp)
    echo = Echo(tmp, broker)
    ctx = zmq.Context()
    client = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(client, 4)
        yield {"broker": broker, "echo": echo, "ctx": ctx, "client": client, "tmp": tmp}
    finally:
        client.close()
        rc = echo.stop()
        broker.stop()
        ctx.term()
        echo.assert_clean()
        broker.assert_clean()
        assert rc == 0, echo.text()[-4000:]


def _fresh_client(rt):
    return Client(rt["ctx"], rt["broker"].mdp)


def test_runtime_echo_roundtrip(rt):
    c = _fresh_client(rt)
    try:
        rep = c.call(data=b"hello \x00 world")
        assert rep.message == ""
        out = _echo_reply(rep)
        assert out.data == b"hello \x00 world"
        assert out.worker_pid == rt["echo"].p.pid
        assert 0 <= out.worker_thread < 4
    finally:
        c.close()


def test_runtime_many_in_flight_matched_by_request_id(rt):
    c = _fresh_client(rt)
    try:
        sent = {}
        for i in range(200):
            data = ("payload-%d" % i).encode() * (i % 7 + 1)
            sent[c.send(data=data, sleep_ms=i % 3)] = data
        got = {}
        end = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < end:
            rep = c.recv(end - time.monotonic())
            assert rep is not None
            got[rep.request_id] = _echo_reply(rep).data
        assert got == sent
    finally:
        c.close()


def test_runtime_threads_serve_concurrently(rt):
    c = _fresh_client(rt)
    try:
        t0 = time.monotonic()
        rids = {c.send(sleep_ms=300) for _ in range(4)}
        threads = set()
        while rids:
            rep = c.recv(5)
            assert rep is not None
            rids.discard(rep.request_id)
            threads.add(_echo_reply(rep).worker_thread)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed
        assert threads == {0, 1, 2, 3}
    finally:
        c.close()


def test_runtime_large_body_roundtrip(rt):
    c = _fresh_client(rt)
    try:
        data = os.urandom(3 * 1024 * 1024)
        assert _echo_reply(c.call(data=data)).data == data
    finally:
        c.close()


def test_runtime_unknown_method_is_invalid(rt):
    c = _fresh_client(rt)
    try:
        rep = c.call(method="echo.NoSuchMethod")
        assert rep.status == pb.INVALID
        assert rep.message == "unknown method"
    finally:
        c.close()


def test_runtime_bad_payload_is_invalid(rt):
    c = _fresh_client(rt)
    try:
        rep = c.call(payload=b"\xff\xff\xff\xff\xff")
        assert rep.status == pb.INVALID
        assert rep.message == "malformed payload"
    finally:
        c.close()


def test_runtime_negative_sleep_is_invalid(rt):
    c = _fresh_client(rt)
    try:
        assert c.call(sleep_ms=-5).status == pb.INVALID
    finally:
        c.close()


def test_runtime_missing_deadline_is_invalid(rt):
    c = _fresh_client(rt)
    try:
        rep = c.call(deadline_ms=0)
        assert rep.status == pb.INVALID
    finally:
        c.close()


def test_runtime_overlong_request_id_is_invalid(rt):
    c = _fresh_client(rt)
    try:
        c.send(rid="r" * 65)
        rep = c.recv(5)
        assert rep is not None
        assert rep.status == pb.INVALID and rep.request_id == ""
    finally:
        c.close()


def test_runtime_garbage_envelope_is_invalid_or_dropped(rt):
    c = _fresh_client(rt)
    try:
        c.send_raw(b"echo", b"\xff\x01garbage that is no protobuf\xff")
        # Answered, not dropped: a silent worker would stay busy at the broker for good.
        rep = c.recv(5)
        assert rep is not None
        assert rep.status == pb.INVALID and rep.request_id == ""
        # The worker that got it is still serving.
        for _ in range(8):
            assert _echo_reply(c.call(data=b"after")).data == b"after"
    finally:
        c.close()


def test_runtime_expired_deadline_is_dropped(rt):
    c = _fresh_client(rt)
    try:
        rid = c.send(data=b"late", deadline_ms=_now_ms() - 1000)
        rep = c.recv(5)
        # Never served: no OK reply. The runtime answers DEADLINE_EXCEEDED so the broker gets
        # its worker back (a caller past its deadline discards it as stale).
        assert rep is not None
        assert rep.request_id == rid
        assert rep.status == pb.DEADLINE_EXCEEDED
        assert rep.payload == b""
        for _ in range(8):
            assert _echo_reply(c.call(data=b"on time")).data == b"on time"
    finally:
        c.close()


def test_runtime_busy_handler_keeps_heartbeating(rt):
    """A handler busy past the liveness window (5 beats) keeps its worker registered: the I/O
    thread beats for it, the broker does not expire it, the other threads go on serving."""
    c = _fresh_client(rt)
    c2 = _fresh_client(rt)
    try:
        busy_window = HEARTBEAT_S * LIVENESS + 3  # 8 s
        t0 = time.monotonic()
        slow = c.send(data=b"slow", sleep_ms=int(busy_window * 1000))
        quick_threads = set()
        # Keep the other threads busy-ish through the whole window.
        while time.monotonic() - t0 < busy_window - 1:
            out = _echo_reply(c2.call(data=b"quick", timeout=3))
            quick_threads.add(out.worker_thread)
            time.sleep(0.25)
        rep = c.recv(busy_window + 5)
        assert rep is not None and rep.request_id == slow
        slow_thread = _echo_reply(rep).worker_thread
        assert time.monotonic() - t0 >= busy_window - 0.5
        assert slow_thread not in quick_threads
        # The slow worker is still registered: four parallel sleeps finish together.
        t1 = time.monotonic()
        rids = {c.send(sleep_ms=300) for _ in range(4)}
        seen = set()
        while rids:
            r = c.recv(5)
            assert r is not None
            rids.discard(r.request_id)
            seen.add(_echo_reply(r).worker_thread)
        assert time.monotonic() - t1 < 1.0
        assert seen == {0, 1, 2, 3}
        assert "expired" not in rt["broker"].text()
        assert "reconnecting" not in rt["echo"].text()
    finally:
        c.close()
        c2.close()


def test_runtime_sigterm_drains_in_flight(tmp_path):
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=2, drain_ms=10000, name="echo-drain.log")
    ctx = zmq.Context()
    c = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(c, 2)
        rid = c.send(data=b"in flight", sleep_ms=1500)
        # The request must have reached a handler before the signal: give the broker a beat.
        time.sleep(0.3)
        t0 = time.monotonic()
        echo.p.send_signal(signal.SIGTERM)
        rep = c.recv(10)
        assert rep is not None and rep.request_id == rid
        assert _echo_reply(rep).data == b"in flight"
        rc = echo.p.wait(10)
        assert rc == 0, echo.text()[-4000:]
        assert time.monotonic() - t0 < 5
        # Every worker said goodbye: the broker knows no echo worker any more.
        _wait_for(lambda: broker.text().count("of 'echo' disconnected") >= 2, 5,
                  "DISCONNECT of both workers at the broker")
        assert "expired" not in broker.text()
        c.send_raw(b"mmi.service", b"echo")
        frames = c.sock.recv_multipart() if c.sock.poll(3000) else None
        assert frames is not None and frames[3] == b"404", frames
    finally:
        c.close()
        echo.stop()
        broker.stop()
        ctx.term()
    echo.assert_clean()
    broker.assert_clean()


def test_runtime_sigterm_idle_exits_fast(tmp_path):
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=3, name="echo-idle.log")
    ctx = zmq.Context()
    c = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(c, 3)
        t0 = time.monotonic()
        echo.p.send_signal(signal.SIGINT)
        assert echo.p.wait(5) == 0
        assert time.monotonic() - t0 < 2
    finally:
        c.close()
        echo.stop()
        broker.stop()
        ctx.term()
    echo.assert_clean()


def test_runtime_help_and_version():
    out = subprocess.run([str(ECHO_BIN), "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "EXTRANET_THREADS" in out.stdout + out.stderr
    out = subprocess.run([str(ECHO_BIN), "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    out = subprocess.run([str(ECHO_BIN), "--bogus"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2


def test_runtime_bad_threads_env_fails():
    env = dict(os.environ, EXTRANET_THREADS="0", EXTRANET_BROKER="tcp://127.0.0.1:1")
    out = subprocess.run([str(ECHO_BIN)], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert "EXTRANET_THREADS" in out.stderr


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_runtime_survives_broker_restart(tmp_path, how):
    """SIGTERM: the broker says DISCONNECT and the workers register again at once. SIGKILL: the
    broker just goes silent and the workers reconnect after MDP_LIVENESS missed beats. Either
    way the same echo process serves again once a broker is back on the endpoint."""
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=2, name="echo-restart.log")
    ctx = zmq.Context()
    c = Client(ctx, broker.mdp)
    broker2 = None
    try:
        _wait_all_threads(c, 2)
        broker.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        c.close()
        if how == "sigkill":
            # Let the workers notice the silence (5 beats) before the new broker appears, so
            # the test exercises the liveness path rather than ZeroMQ's transparent reconnect.
            _wait_for(lambda: "reconnecting" in echo.text(), HEARTBEAT_S * (LIVENESS + 3),
                      "echo to notice the dead broker")
        broker2 = Broker(tmp, name="broker2.log", like=broker)
        c = Client(ctx, broker2.mdp)
        _wait_all_threads(c, 2)
        assert echo.p.poll() is None
    finally:
        c.close()
        rc = echo.stop()
        if broker2:
            broker2.stop()
        broker.stop()
        ctx.term()
    assert rc == 0, echo.text()[-4000:]
    echo.assert_clean()


def test_runtime_two_brokers(tmp_path):
    """One echo registers with both brokers (one DEALER per broker per thread); clients of
    either broker are served by all threads."""
    tmp = str(tmp_path)
    b1 = Broker(tmp, name="b1.log")
    b2 = Broker(tmp, name="b2.log")
    echo = Echo(tmp, b1, threads=2, name="echo-two.log", brokers=[b1, b2])
    ctx = zmq.Context()
    c1 = Client(ctx, b1.mdp)
    c2 = Client(ctx, b2.mdp)
    try:
        _wait_all_threads(c1, 2)
        _wait_all_threads(c2, 2)
        assert b1.text().count("ready for 'echo'") == 2
        assert b2.text().count("ready for 'echo'") == 2
        for i in range(20):
            cl = c1 if i % 2 else c2
            assert _echo_reply(cl.call(data=b"x%d" % i)).data == b"x%d" % i
    finally:
        c1.close()
        c2.close()
        rc = echo.stop()
        b1.stop()
        b2.stop()
        ctx.term()
    assert rc == 0, echo.text()[-4000:]
    echo.assert_clean()


class _BlackholeDns:
    """A name server on 127.x.y.z:53 that reads queries and never answers, so every lookup of
    a name not in /etc/hosts hangs until the resolver's timeout (as in a Swarm whose embedded
    DNS cannot reach its upstream)."""

    def __init__(self):
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(50):
            self.addr = "127.%d.%d.%d" % (random.randint(1, 254), random.randint(1, 254),
                                          random.randint(2, 254))
            try:
                self.sock.bind((self.addr, 53))
                break
            except OSError:
                continue
        else:
            raise AssertionError("no free 127.x.y.z:53 for the blackhole name server")
        self.sock.settimeout(0.2)
        self.stopping = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            try:
                self.sock.recvfrom(4096)
                self.queries += 1
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        self.stopping = True
        self.t.join(2)
        self.sock.close()


def _can_fake_resolv_conf():
    """Root and mount namespaces (unshare -m): the echo alone gets our resolv.conf."""
    if os.geteuid() != 0 or not os.path.exists("/etc/resolv.conf"):
        return False
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount --bind /etc/hosts /etc/resolv.conf"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_runtime_hanging_broker_lookup_keeps_live_link(tmp_path):
    """EXTRANET_BROKER = one live broker + one name whose DNS lookup hangs. libzmq resolves
    names in the I/O thread of the socket's context; the live link must not share it, so it
    never goes silent: over ~12 s requests keep being answered promptly, the live link is never
    reconnected (no "silent" for it, no second READY at the broker), and only the dead name's
    link is reported silent."""
    if not _can_fake_resolv_conf():
        pytest.skip("needs root and unshare -m to give the echo a hanging name server")
    tmp = str(tmp_path)
    dns = _BlackholeDns()
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver %s\noptions timeout:2 attempts:2\n" % dns.addr)
    dead = "tcp://no-such-broker.invalid:5555"
    broker = Broker(tmp, name="b-live.log")
    env = {"EXTRANET_BROKER": broker.mdp + "," + dead,
           "EXTRANET_EVENTS_PUB": broker.events_pub,
           "EXTRANET_THREADS": "2", "EXTRANET_DRAIN_MS": "2000", "EXTRANET_LOG": "info"}
    echo = Proc(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /etc/resolv.conf && exec "$2"',
                 "sh", resolv, str(ECHO_BIN)], env, os.path.join(tmp, "echo-dns.log"))
    ctx = zmq.Context()
    client = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(client, 2)
        slow = []
        end = time.monotonic() + 12
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            rep = client.call(timeout=10, data=b"d%d" % i)
            took = time.monotonic() - t0
            assert _echo_reply(rep).data == b"d%d" % i
            if took > 1.0:
                slow.append((i, round(took, 2)))
            i += 1
            time.sleep(0.2)
        assert not slow, "slow answers through the live broker: %s" % slow
        assert dns.queries > 0, "the echo never asked the blackhole name server"
        text = echo.text()
        live_silent = [ln for ln in text.splitlines()
                       if broker.mdp in ln and ("silent" in ln or "reconnecting" in ln)]
        assert not live_silent, "live link reconnected:\n" + "\n".join(live_silent)
        assert dead + " silent" in text, text[-4000:]
        assert broker.text().count("ready for 'echo'") == 2, broker.text()[-4000:]
    finally:
        client.close()
        rc = echo.stop(timeout=60)
        broker.stop()
        ctx.term()
        dns.close()
    assert rc == 0, echo.text()[-4000:]
    echo.assert_clean()


def test_runtime_drain_timeout_gives_up(tmp_path):
    """A handler still busy when EXTRANET_DRAIN_MS runs out does not hold the process: it
    exits (non-zero: not everything was joined) soon after the drain time."""
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=1, drain_ms=500, name="echo-drain-timeout.log")
    ctx = zmq.Context()
    c = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(c, 1)
        c.send(sleep_ms=6000)
        time.sleep(0.3)
        t0 = time.monotonic()
        echo.p.send_signal(signal.SIGTERM)
        rc = echo.p.wait(10)
        took = time.monotonic() - t0
        assert rc == 1
        assert 0.4 < took < 3.5, took
        assert "still busy after the drain" in echo.text()
    finally:
        c.close()
        echo.stop()
        broker.stop()
        ctx.term()
    echo.assert_clean()


def test_runtime_tick_thread_publishes_events(tmp_path):
    """The tick thread runs def->tick every tick_ms with its own svc_thread_t (index -1); its
    ev_publish goes through the broker's XSUB -> XPUB forwarder as topic | extranet.Event."""
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=1, name="echo-tick.log",
                extra_env={"EXTRANET_ECHO_TICK_MS": "100"})
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"echo.tick")
    sub.connect(broker.events)
    try:
        events = []
        end = time.monotonic() + 10
        while len(events) < 5 and time.monotonic() < end:
            if not sub.poll(200):
                continue
            topic, body = sub.recv_multipart()
            assert topic == b"echo.tick"
            ev = pb.Event()
            ev.ParseFromString(body)
            events.append(ev)
        assert len(events) == 5
        assert len({e.event_id for e in events}) == 5
        for e in events:
            assert str(uuid.UUID(e.event_id)) == e.event_id
            assert e.topic == "echo.tick"
            assert abs(e.time_ms - _now_ms()) < 10000
            p = pb.EchoReply()
            p.ParseFromString(e.payload)
            assert p.worker_pid == echo.p.pid and p.worker_thread == -1
        gaps = [b.time_ms - a.time_ms for a, b in zip(events, events[1:])]
        assert all(80 <= g < 1000 for g in gaps), gaps
        t0 = time.monotonic()
        echo.p.send_signal(signal.SIGTERM)
        assert echo.p.wait(5) == 0
        assert time.monotonic() - t0 < 2
    finally:
        sub.close()
        echo.stop()
        broker.stop()
        ctx.term()
    echo.assert_clean()


def _recv_for(client, rids, timeout):
    """Replies to the given request ids (others are skipped) until all came or timeout."""
    got = {}
    end = time.monotonic() + timeout
    while len(got) < len(rids) and time.monotonic() < end:
        rep = client.recv(end - time.monotonic())
        if rep is None:
            break
        if rep.request_id in rids:
            got[rep.request_id] = rep
    return got


def test_runtime_multi_frame_request_answered_not_wedged(tmp_path):
    """RFC 7 lets a client send a multi-frame body and the broker forwards up to 32 frames. The
    echo contract is one body frame, so such a request is answered INVALID; before, the worker
    dropped it without a REPLY and the broker kept that worker busy for ever (one wedged
    handler per request)."""
    tmp = str(tmp_path)
    broker = Broker(tmp)
    echo = Echo(tmp, broker, threads=2, name="echo-frames.log")
    ctx = zmq.Context()
    c = Client(ctx, broker.mdp)
    try:
        _wait_all_threads(c, 2)
        env = pb.Request(request_id="multi", method="echo.Echo",
                         deadline_ms=_now_ms() + 10000).SerializeToString()
        # 4 body frames, then the most the broker forwards (32 frames with identity, empty,
        # header and service): one per handler thread, so both would be wedged.
        for nbody in (4, 28):
            c.sock.send_multipart([b"", b"MDPC01", b"echo", env] + [b"x"] * (nbody - 1))
        for _ in range(2):
            rep = c.recv(5)
            assert rep is not None, "no REPLY to a multi-frame request"
            assert rep.status == pb.INVALID, rep
        rids = [c.send(data=b"after %d" % i) for i in range(4)]
        got = _recv_for(c, set(rids), 5)
        assert len(got) == 4, "echo wedged after multi-frame requests"
        assert echo.stop() == 0, echo.text()[-4000:]
    finally:
        c.close()
        echo.stop()
        broker.stop()
        ctx.term()
    echo.assert_clean()
    broker.assert_clean()


def test_runtime_big_reply_survives_sigterm(tmp_path):
    """SIGTERM while handlers work on requests with ~4 MiB replies: every reply still reaches
    the client (the link sockets linger for the last REPLY/DISCONNECT instead of discarding
    them at close). Several rounds, four replies each, since the loss was a race."""
    size = 4 * 1024 * 1024 - 16 * 1024
    for rnd in range(4):
        tmp = str(tmp_path / ("r%d" % rnd))
        os.makedirs(tmp)
        broker = Broker(tmp)
        echo = Echo(tmp, broker, threads=4, name="echo-big.log")
        ctx = zmq.Context()
        c = Client(ctx, broker.mdp)
        try:
            _wait_all_threads(c, 4)
            rids = [c.send(data=bytes([65 + i]) * size, sleep_ms=500) for i in range(4)]
            time.sleep(0.3)
            echo.p.send_signal(signal.SIGTERM)
            got = _recv_for(c, set(rids), 10)
            assert echo.p.wait(10) == 0, echo.text()[-4000:]
            assert len(got) == 4, "round %d: %d of 4 big replies lost in the drain" % (
                rnd, 4 - len(got))
            for i, rid in enumerate(rids):
                assert _echo_reply(got[rid]).data == bytes([65 + i]) * size
        finally:
            c.close()
            echo.stop()
            broker.stop()
            ctx.term()
        echo.assert_clean()


class _ScriptedBroker:
    """A ROUTER the echo registers with as its broker, driven by hand (for frames a real broker
    never sends)."""

    def __init__(self, ctx):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.mdp = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        pub = ctx.socket(zmq.XSUB)  # somewhere for the echo's event PUB to connect
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind("tcp://127.0.0.1:*")
        self.pub = pub
        self.events_pub = pub.getsockopt(zmq.LAST_ENDPOINT).decode()

    def recv_cmd(self, timeout, skip=(b"\x04",)):
        """(worker id, command, rest) of the next command not in skip, or None."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.sock.poll(max(1, int((end - time.monotonic()) * 1000))):
                return None
            f = self.sock.recv_multipart()
            assert len(f) >= 4 and f[1] == b"" and f[2] == b"MDPW01", f
            if f[3] not in skip:
                return f[0], f[3], f[4:]
        return None

    def close(self):
        self.sock.close()
        self.pub.close()


def test_runtime_scripted_broker_bad_request_and_disconnect_in_drain(tmp_path):
    """A REQUEST with a non-empty delimiter still gets a REPLY (INVALID): the broker holds the
    worker busy until it answers. And once the broker said DISCONNECT during our drain, the
    worker sends nothing more on that session, not even the REPLY it was working on (RFC 7)."""
    tmp = str(tmp_path)
    ctx = zmq.Context()
    sb = _ScriptedBroker(ctx)
    echo = Echo(tmp, sb, threads=1, name="echo-scripted.log")
    try:
        got = sb.recv_cmd(10)
        assert got is not None and got[1] == b"\x01" and got[2] == [b"echo"], got
        wid = got[0]
        env = pb.Request(request_id="r1", method="echo.Echo", deadline_ms=_now_ms() + 10000,
                         payload=pb.EchoRequest(data=b"x").SerializeToString())
        sb.sock.send_multipart([wid, b"", b"MDPW01", b"\x02", b"client-1", b"oops",
                                env.SerializeToString()])
        got = sb.recv_cmd(5)
        assert got is not None and got[1] == b"\x03", got
        assert got[2][0] == b"client-1" and got[2][1] == b""
        rep = pb.Reply()
        rep.ParseFromString(got[2][2])
        assert rep.status == pb.INVALID

        env = pb.Request(request_id="r2", method="echo.Echo", deadline_ms=_now_ms() + 10000,
                         payload=pb.EchoRequest(data=b"y", sleep_ms=800).SerializeToString())
        sb.sock.send_multipart([wid, b"", b"MDPW01", b"\x02", b"client-2", b"",
                                env.SerializeToString()])
        time.sleep(0.3)
        echo.p.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        sb.sock.send_multipart([wid, b"", b"MDPW01", b"\x05"])
        got = sb.recv_cmd(2, skip=())
        assert got is None, "worker spoke after the broker's DISCONNECT: %r" % (got,)
        assert echo.p.wait(10) == 0, echo.text()[-4000:]
    finally:
        echo.stop()
        sb.close()
        ctx.term()
    echo.assert_clean()
