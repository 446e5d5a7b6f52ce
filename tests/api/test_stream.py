"""GET /api/v1/stream, the caller's Server-Sent Events (R14, R9) through the real gateway:
events reach only the user they are about, a revoked session's stream ends at once, a stream
whose session can no longer be confirmed ends within 15 s even without an event, hundreds of
open streams hold no thread (other requests still answer at once), and the cap answers 503."""

import hashlib
import json
import queue
import signal
import socket
import threading
import time
import uuid

import pytest
import requests

from conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from test_gateway_auth import extranet_user, identity, pb  # noqa: F401 (fixtures)

PASSWORD = "Stream-User-Passw0rd-1"


def call(api_url, method, path, token=None, body=None, timeout=30):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return requests.request(method, api_url + path, json=body, headers=headers, timeout=timeout)


def sess_key(token):
    return "sess:" + hashlib.sha256(token.encode()).hexdigest()


def login(api_url, email, password):
    r = call(api_url, "POST", "/auth/login", body={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def admin(api_url):
    return login(api_url, ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def employee(api_url, admin):
    def make():
        email = "stream-%s@stream.test" % uuid.uuid4().hex[:10]
        r = call(api_url, "POST", "/admin/users", admin,
                 {"email": email, "display_name": "S", "kind": "employee", "password": PASSWORD})
        assert r.status_code == 201, r.text
        return r.json()["id"], login(api_url, email, PASSWORD)
    return make


class Stream:
    """An open stream on a raw socket (so close() ends it at once, even while the reader
    thread waits in recv), read by a thread: events as (name, data) in a queue; None = ended.
    status, headers and text (the body of a non-200 answer) are set once the head is read."""

    def __init__(self, api_url, token):
        hostport = api_url.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.sendall(("GET /api/v1/stream HTTP/1.1\r\nHost: %s\r\n"
                           "Authorization: Bearer %s\r\n\r\n" % (hostport, token)).encode())
        self.q = queue.Queue()
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = requests.structures.CaseInsensitiveDict(
            l.split(": ", 1) for l in lines[1:] if ": " in l)
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            n = int(self.headers.get("Content-Length", "0"))
            while len(self.buf) < n:
                self._fill()
            self.text = self.buf[:n].decode()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def _until(self, sep):
        while sep not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(sep, 1)
        return out

    def _chunks(self):
        """The chunked body's data, chunk by chunk (RFC 9112 §7.1)."""
        while True:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                return
            while len(self.buf) < size + 2:
                self._fill()
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            yield data

    def _read(self):
        text = ""
        try:
            for data in self._chunks():
                text += data.decode()
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    name, payload = None, None
                    for line in block.split("\n"):
                        if line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: "):
                            payload = json.loads(line[6:])
                    if name:
                        self.q.put((name, payload))
        except (EOFError, OSError, ValueError):  # the connection ended one way or another
            pass
        self.q.put(None)

    def next(self, timeout=5.0):
        return self.q.get(timeout=timeout)

    def expect_event(self, name, timeout=5.0):
        ev = self.next(timeout)
        assert ev is not None and ev[0] == name, ev
        return ev[1]

    def expect_end(self, timeout):
        end = time.monotonic() + timeout
        while True:
            ev = self.q.get(timeout=max(0.1, end - time.monotonic()))
            if ev is None:
                return
            assert time.monotonic() < end, "stream still open"

    def quiet_for(self, seconds):
        try:
            ev = self.q.get(timeout=seconds)
        except queue.Empty:
            return
        pytest.fail("unexpected event %r" % (ev,))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def test_stream_needs_a_session(api_url):
    r = requests.get(api_url + "/stream", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    r = requests.get(api_url + "/stream", headers={"Authorization": "Bearer " + "x" * 43},
                     timeout=10)
    assert r.status_code == 401


def test_r10_mfa_pending_session_gets_no_stream(cluster, api_url, extranet_user):  # noqa: F811
    r = call(api_url, "POST", "/auth/login", body=extranet_user)
    assert r.status_code == 200, r.text
    assert r.json()["mfa_enrollment_required"] is True
    tok = r.json()["token"]
    for drop_cache in (False, True):  # the Redis hit and the identity.Authenticate path
        if drop_cache:
            cluster.redis_command("DEL", sess_key(tok))
        r = requests.get(api_url + "/stream", headers={"Authorization": "Bearer " + tok},
                         timeout=10)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "mfa_enrollment_required"


def test_r14_stream_opens_with_the_right_headers(api_url, employee):
    uid, tok = employee()
    s = Stream(api_url, tok)
    try:
        assert s.status == 200, s.text
        assert s.headers["Content-Type"].startswith("text/event-stream")
        assert s.headers["Cache-Control"] == "private, no-store"
        assert s.headers["Transfer-Encoding"] == "chunked"
        assert len(s.headers["X-Request-Id"]) == 36
        assert s.headers["X-Accel-Buffering"] == "no"
        assert s.expect_event("ready") == {"user_id": uid}
    finally:
        s.close()


def test_r14_membership_events_reach_only_their_user(api_url, admin, employee):
    a_id, a_tok = employee()
    b_id, b_tok = employee()
    sa, sb = Stream(api_url, a_tok), Stream(api_url, b_tok)
    try:
        sa.expect_event("ready")
        sb.expect_event("ready")
        r = call(api_url, "POST", "/groups", admin, {"name": "Streamed", "kind": "extranet"})
        assert r.status_code == 201, r.text
        gid = r.json()["id"]
        r = call(api_url, "POST", "/groups/%s/members" % gid, admin,
                 {"user_id": a_id, "role": "member"})
        assert r.status_code == 201, r.text
        assert sa.expect_event("membership") == {"group_id": gid, "role": "member",
                                                 "reason": "added"}
        r = call(api_url, "DELETE", "/groups/%s/members/%s" % (gid, a_id), admin)
        assert r.status_code == 204, r.text
        ev = sa.expect_event("membership")
        assert ev["group_id"] == gid and ev["role"] == "" and ev["reason"] == "removed"
        # B shares nothing with A: not a word about A's groups (R1/R4/R14)
        sb.quiet_for(1.0)
    finally:
        sa.close()
        sb.close()


def test_r14_logout_ends_the_stream_at_once(api_url, employee):
    _, tok = employee()
    s = Stream(api_url, tok)
    try:
        s.expect_event("ready")
        t0 = time.monotonic()
        assert call(api_url, "POST", "/auth/logout", tok).status_code == 204
        s.expect_end(5)
        assert time.monotonic() - t0 < 5
    finally:
        s.close()


def test_r14_deactivation_ends_the_stream(api_url, admin, employee):
    uid, tok = employee()
    s = Stream(api_url, tok)
    try:
        s.expect_event("ready")
        r = call(api_url, "PATCH", "/admin/users/%s" % uid, admin, {"status": "deactivated"})
        assert r.status_code == 200, r.text
        s.expect_end(5)
    finally:
        s.close()


def test_r14_stream_ends_within_15s_without_an_event(cluster, api_url, employee):
    """The session ends with no event at all: what identity does on a revocation (its row
    goes from PostgreSQL, its sess:{h} entry from Redis) but as if session.revoked were lost.
    The gateway's periodic re-check must end the stream. Meanwhile a stream whose cache entry
    alone went (a plain cache miss, the session still valid) is confirmed by identity and
    stays open: the re-check fails closed, not on every miss."""
    uid, tok = employee()
    _, keep_tok = employee()
    s, keep = Stream(api_url, tok), Stream(api_url, keep_tok)
    try:
        s.expect_event("ready")
        keep.expect_event("ready")
        assert cluster.redis_command("DEL", sess_key(keep_tok)) in (0, 1)
        cluster.psql("DELETE FROM identity.sessions WHERE user_id = :'u'", u=uid)
        assert cluster.redis_command("DEL", sess_key(tok)) in (0, 1)
        t0 = time.monotonic()
        s.quiet_for(0.5)  # no event announced it
        s.expect_end(16)
        assert time.monotonic() - t0 < 16
        keep.quiet_for(1.0)  # re-checked in the same round, and still open
        assert call(api_url, "GET", "/me", keep_tok).status_code == 200
    finally:
        s.close()
        keep.close()


def _raw_stream(host, port, token):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(("GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
               % token).encode())
    return c


def test_hundreds_of_open_streams_hold_no_thread(cluster, api_url, base_url, employee):
    _, tok = employee()
    host, port = "127.0.0.1", int(base_url.rsplit(":", 1)[1])
    socks = []
    try:
        for _ in range(300):
            socks.append(_raw_stream(host, port, tok))
        for c in socks:  # each got its headers and its ready event
            buf = b""
            while b"event: ready" not in buf:
                chunk = c.recv(4096)
                assert chunk, buf
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        # the gateway runs 2 HTTP threads: streams that held one would block these
        for _ in range(20):
            t0 = time.monotonic()
            assert requests.get(base_url + "/healthz", timeout=5).status_code == 200
            assert call(api_url, "GET", "/me", tok, timeout=5).status_code == 200
            assert time.monotonic() - t0 < 1.0
        m = requests.get(base_url + "/metrics", timeout=5).text
        line = [x for x in m.splitlines() if x.startswith("extranet_streams_open ")]
        assert line and int(line[0].split()[1]) >= 300, line
    finally:
        for c in socks:
            c.close()


def test_stream_cap_answers_503_and_sigterm_ends_every_stream(cluster, api_url, employee):
    """A gateway of its own with EXTRANET_MAX_STREAMS=2: the third stream is refused with the
    JSON error; then SIGTERM with both streams open ends them and the gateway exits cleanly
    (libmicrohttpd would abort on a connection still suspended at MHD_stop_daemon)."""
    _, tok = employee()
    cluster.stop_service("gateway")
    cluster.start_service("gateway", env={"EXTRANET_MAX_STREAMS": "2"})
    streams = []
    try:
        streams = [Stream(api_url, tok) for _ in range(2)]
        for s in streams:
            s.expect_event("ready")
        r = requests.get(api_url + "/stream", headers={"Authorization": "Bearer " + tok},
                         timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert len(r.headers["X-Request-Id"]) == 36
        t0 = time.monotonic()
        cluster.kill_service("gateway", signal.SIGTERM)
        assert cluster.procs["gateway"].popen.returncode == 0
        for s in streams:
            s.expect_end(5)
        assert time.monotonic() - t0 < 5
    finally:
        for s in streams:
            s.close()
        if cluster.procs["gateway"].running():
            cluster.stop_service("gateway")
        cluster.start_service("gateway", env={"EXTRANET_MAX_STREAMS": "1000"})
