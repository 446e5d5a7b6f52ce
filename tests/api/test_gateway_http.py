"""Black-box tests of the gateway's HTTP layer (gateway/): error shape and X-Request-Id on
every response, limits (body 413, headers 431, JSON depth, content type 415, unknown fields),
routing (404/405), CORS, /healthz, /readyz, /metrics, deadlines (504), idle keep-alive
connections, shutdown. Uses the session cluster (tests/api/conftest.py); tests that need other
settings start a second gateway of their own on the cluster's broker and Redis (OwnGateway)."""

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


class OwnGateway:
    """A second gateway process on the cluster's broker and Redis with extra env, on a free
    port; its log is <cluster log dir>/gateway-<n>.log. stop() sends SIGTERM and returns the
    exit code; a sanitizer report in the log fails the test."""

    count = 0

    def __init__(self, cluster, env=None):
        import cluster as cluster_lib  # tests/lib, on sys.path through conftest.py
        OwnGateway.count += 1
        self.cluster = cluster
        self.port = cluster_lib.free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = Path(cluster.log_dir) / ("gateway-%d.log" % OwnGateway.count)
        e = dict(os.environ)
        e.update(cluster.env)
        e["EXTRANET_HTTP_ADDR"] = "127.0.0.1:%d" % self.port
        e.update(env or {})
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen([str(cluster.gateway_bin())], env=e, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=str(cluster.dir))
        end = time.monotonic() + 20
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                pytest.fail("own gateway did not start:\n" + self.log.read_text())
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        text = self.log.read_text(errors="replace")
        assert not any(m in text for m in SANITIZER_MARKS), text
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        rc = self.stop()
        if exc[0] is None:
            assert rc == 0, "gateway exited with %s:\n%s" % (rc, self.log.read_text())


def assert_error(r, status, code):
    """The one error shape, with the response's X-Request-Id inside."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    rid = r.headers.get("X-Request-Id", "")
    assert UUID_RE.match(rid), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == rid
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def assert_common_headers(r):
    assert UUID_RE.match(r.headers.get("X-Request-Id", "")), r.headers
    assert r.headers.get("Cache-Control") == "private, no-store"
    assert "Authorization" in r.headers.get("Vary", "")


# ------------------------------------------------------------------ health, routing, headers

def test_healthz(base_url):
    r = requests.get(base_url + "/healthz", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["Content-Type"] == "application/json"
    assert_common_headers(r)


def test_request_ids_are_unique(base_url):
    ids = {requests.get(base_url + "/healthz", timeout=5).headers["X-Request-Id"]
           for _ in range(20)}
    assert len(ids) == 20


def test_readyz_when_ready(base_url):
    r = requests.get(base_url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["missing"] == []
    assert body["brokers_reachable"] == body["brokers_total"] == 1
    assert_common_headers(r)


def test_unknown_route_404(base_url):
    for path in ("/nope", "/api/v1/nope", "/api/v1/me/", "/api/v1/admin/users/x/y/z",
                 "/api/v1/" + "a" * 3000):
        assert_error(requests.get(base_url + path, timeout=5), 404, "not_found")


def test_unknown_route_keeps_connection_alive(base_url):
    with requests.Session() as s:
        r1 = s.get(base_url + "/nope", timeout=5)
        assert_error(r1, 404, "not_found")
        assert r1.headers.get("Connection", "").lower() != "close"
        assert s.get(base_url + "/healthz", timeout=5).status_code == 200


def test_wrong_method_405_with_allow(base_url):
    r = requests.delete(base_url + "/healthz", timeout=5)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, OPTIONS"
    r = requests.get(base_url + "/api/v1/auth/login", timeout=5)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    r = requests.put(base_url + "/api/v1/admin/users", json={}, timeout=5)
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "OPTIONS"}


def test_debug_route_absent_by_default(base_url):
    assert_error(requests.get(base_url + "/api/v1/debug/echo", timeout=5), 404, "not_found")


# ------------------------------------------------------------------ authentication (no service)

@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer ", "Basic YWxhZGRpbjpzZXNhbWU=",
                                   "Bearer a b", "Bearer \"quoted\"", "Bearer " + "x" * 600,
                                   "Bearer =abc", "Token abc"])
def test_missing_or_garbage_token_401(api_url, value):
    headers = {} if value is None else {"Authorization": value}
    r = requests.get(api_url + "/me", headers=headers, timeout=5)
    assert_error(r, 401, "unauthenticated")


def test_401_comes_before_validation(api_url):
    """A stranger learns nothing about validation: bad body, bad id, unknown field -> 401."""
    r = requests.patch(api_url + "/admin/users/not-a-uuid", data="{bad",
                       headers={"Content-Type": "application/json"}, timeout=5)
    assert_error(r, 401, "unauthenticated")
    r = requests.post(api_url + "/me/password", json={"nope": 1}, timeout=5)
    assert_error(r, 401, "unauthenticated")


# ------------------------------------------------------------------ bodies and JSON

def login(api_url, data=None, raw=None, ctype="application/json", **kw):
    headers = {"Content-Type": ctype} if ctype else {}
    if raw is None:
        raw = json.dumps(data)
    return requests.post(api_url + "/auth/login", data=raw, headers=headers, timeout=10, **kw)


@pytest.mark.parametrize("raw", ["{bad", "{\"email\": \"a\",}", "[1,2]", "\"text\"", "42",
                                 "null", "{\"email\":\"a\"} trailing", "\xff\xfe{}"])
def test_malformed_json_400(api_url, raw):
    assert_error(login(api_url, raw=raw.encode("latin-1")), 400, "invalid")


def test_unknown_field_400(api_url):
    e = assert_error(login(api_url, {"email": "a@b.c", "password": "x", "admin": True}), 400,
                     "invalid")
    assert "admin" in e["message"]


@pytest.mark.parametrize("data", [{"email": 5, "password": "x"},
                                  {"email": ["a"], "password": "x"},
                                  {"email": {"x": 1}, "password": "x"},
                                  {"email": "a@b.c", "password": 1.5},
                                  {"email": True, "password": "x"}])
def test_wrong_type_400(api_url, data):
    assert_error(login(api_url, data), 400, "invalid")


def test_duplicate_keys_400(api_url):
    raw = '{"email": "a@b.c", "email": "evil@b.c", "password": "x"}'
    assert_error(login(api_url, raw=raw), 400, "invalid")


@pytest.mark.parametrize("depth", [20, 100, 1000])
def test_deep_json_400(api_url, depth):
    # Nested under an unknown field, so only the depth limit (not a type error) can refuse it.
    raw = '{"email": "a@b.c", "password": "x", "deep": ' + "[" * depth + "]" * depth + '}'
    err = assert_error(login(api_url, raw=raw), 400, "invalid")
    assert "nested deeper than" in err["message"], err


def test_json_beyond_the_parser_depth_400(api_url):
    # Deeper than jansson parses at all: refused by the parser, still the one error shape.
    raw = '{"email": ' + "[" * 5000 + "]" * 5000 + ', "password": "x"}'
    assert_error(login(api_url, raw=raw), 400, "invalid")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonp", None])
def test_wrong_content_type_415(api_url, ctype):
    r = login(api_url, {"email": "a@b.c", "password": "x"}, ctype=ctype)
    assert_error(r, 415, "unsupported_media")


def test_body_too_large_413(api_url):
    big = json.dumps({"email": "a@b.c", "password": "x" * (1024 * 1024 + 10)})
    assert_error(login(api_url, raw=big), 413, "too_large")


def test_body_too_large_chunked_413(api_url):
    def gen():
        yield b'{"email": "a@b.c", "password": "'
        for _ in range(80):
            yield b"x" * 16384
        yield b'"}'
    r = requests.post(api_url + "/auth/login", data=gen(),
                      headers={"Content-Type": "application/json"}, timeout=20)
    assert_error(r, 413, "too_large")


def test_query_parameter_unknown_400(api_url):
    r = requests.post(api_url + "/auth/login?admin=1", json={"email": "a@b.c", "password": "x"},
                      timeout=5)
    assert_error(r, 400, "invalid")


# ------------------------------------------------------------------ headers

def test_header_too_large_431(base_url):
    r = requests.get(base_url + "/healthz", headers={"X-Big": "a" * 10000}, timeout=5)
    assert_error(r, 431, "header_too_large")


def test_header_far_too_large_refused(base_url):
    """Past libmicrohttpd's per-connection memory it answers 431 itself (its own body)."""
    r = requests.get(base_url + "/healthz", headers={"X-Big": "a" * 100000}, timeout=5)
    assert r.status_code in (431, 400)


def test_many_headers_431(base_url):
    headers = {"X-H%d" % i: "v" * 40 for i in range(250)}
    assert_error(requests.get(base_url + "/healthz", headers=headers, timeout=5), 431,
                 "header_too_large")


# ------------------------------------------------------------------ CORS

def test_cors_allowed_origin(base_url, cors_origin):
    r = requests.get(base_url + "/healthz", headers={"Origin": cors_origin}, timeout=5)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == cors_origin
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    assert "Origin" in r.headers["Vary"]
    # errors carry CORS headers too, or a browser could not read them
    r = requests.get(base_url + "/api/v1/me", headers={"Origin": cors_origin}, timeout=5)
    assert_error(r, 401, "unauthenticated")
    assert r.headers["Access-Control-Allow-Origin"] == cors_origin


def test_cors_refused_origin(base_url):
    for origin in ("https://evil.example", "null", "https://portal.example.test.evil.example"):
        r = requests.get(base_url + "/healthz", headers={"Origin": origin}, timeout=5)
        assert r.status_code == 200
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers


def test_cors_preflight(base_url, cors_origin):
    r = requests.options(base_url + "/api/v1/admin/users/%s" % uuid.uuid4(),
                         headers={"Origin": cors_origin,
                                  "Access-Control-Request-Method": "PATCH",
                                  "Access-Control-Request-Headers": "authorization,content-type"},
                         timeout=5)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == cors_origin
    assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) >= {"GET", "PATCH"}
    allow_h = r.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allow_h and "content-type" in allow_h
    # writes may carry Idempotency-Key (openapi.yaml): a browser on another origin must too
    assert "idempotency-key" in allow_h
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert UUID_RE.match(r.headers["X-Request-Id"])


def test_cors_preflight_refused(base_url):
    r = requests.options(base_url + "/api/v1/me",
                         headers={"Origin": "https://evil.example",
                                  "Access-Control-Request-Method": "GET"}, timeout=5)
    assert r.status_code == 204
    assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers
    assert "GET" in r.headers["Allow"]


def test_cors_preflight_unknown_path_404(base_url, cors_origin):
    r = requests.options(base_url + "/api/v1/nope", headers={"Origin": cors_origin}, timeout=5)
    assert_error(r, 404, "not_found")


def test_cors_nothing_allowed_by_default(cluster):
    env = {"EXTRANET_REQUIRED_SERVICES": "none", "EXTRANET_CORS_ORIGINS": ""}
    with OwnGateway(cluster, env) as gw:
        r = requests.get(gw.url + "/healthz", headers={"Origin": "https://portal.example.test"},
                         timeout=5)
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers


# ------------------------------------------------------------------ metrics

def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value} of a text exposition; checks each line."""
    out = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([0-9.eE+-]+|\+Inf|NaN)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = sample.match(line)
        assert m, "bad metrics line: %r" % line
        labels = dict(label.findall(m.group(3) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics(base_url):
    before = parse_prometheus(requests.get(base_url + "/metrics", timeout=5).text)
    for _ in range(3):
        requests.get(base_url + "/healthz", timeout=5)
    requests.get(base_url + "/no/such/route", timeout=5)
    r = requests.get(base_url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = parse_prometheus(r.text)
    key = dict(route="/healthz", method="GET", status="200")
    assert metric(after, "extranet_http_requests_total", **key) - \
        metric(before, "extranet_http_requests_total", **key) == 3
    key = dict(route="unmatched", method="GET", status="404")
    assert metric(after, "extranet_http_requests_total", **key) - \
        metric(before, "extranet_http_requests_total", **key) == 1
    count = metric(after, "extranet_http_request_duration_seconds_count", route="/healthz")
    inf = metric(after, "extranet_http_request_duration_seconds_bucket", route="/healthz",
                 le="+Inf")
    assert count >= 3 and inf == count
    assert ("extranet_http_in_flight", frozenset()) in after
    assert after[("extranet_http_in_flight", frozenset())] >= 1   # the /metrics request itself
    assert "# TYPE extranet_upstream_errors_total counter" in r.text


def test_metrics_promtool(base_url, tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus)")
    requests.get(base_url + "/healthz", timeout=5)
    text = requests.get(base_url + "/metrics", timeout=5).content
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


# ------------------------------------------------------------------ readiness, deadlines, shutdown

def test_readyz_names_missing_service(cluster):
    env = {"EXTRANET_REQUIRED_SERVICES": "echo,nosuchservice"}
    with OwnGateway(cluster, env) as gw:
        r = requests.get(gw.url + "/readyz", timeout=10)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not_ready" and body["missing"] == ["nosuchservice"]
        assert_common_headers(r)


def test_readyz_503_when_service_stopped(cluster):
    name = "identity" if "identity" in cluster.services else "echo"
    with OwnGateway(cluster, {"EXTRANET_REQUIRED_SERVICES": name}) as gw:
        assert requests.get(gw.url + "/readyz", timeout=10).status_code == 200
        cluster.stop_service(name)
        try:
            r = requests.get(gw.url + "/readyz", timeout=10)
            assert r.status_code == 503, r.text
            assert r.json()["missing"] == [name]
        finally:
            cluster.start_service(name)
        end = time.monotonic() + 15
        while requests.get(gw.url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < end, "not ready again after restarting " + name
            time.sleep(0.1)


def test_readyz_503_without_broker(cluster):
    import cluster as cluster_lib
    env = {"EXTRANET_BROKER": "tcp://127.0.0.1:%d" % cluster_lib.free_port()}
    with OwnGateway(cluster, env) as gw:
        t0 = time.monotonic()
        r = requests.get(gw.url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json()["brokers_reachable"] == 0
        assert time.monotonic() - t0 < 5


def test_readyz_with_two_brokers_one_dead(cluster):
    """Ready when one broker of EXTRANET_BROKER has every required service; the dead one is
    counted as unreachable after its one-second MMI timeout."""
    import cluster as cluster_lib
    dead = "tcp://127.0.0.1:%d" % cluster_lib.free_port()
    env = {"EXTRANET_BROKER": dead + "," + cluster.urls["broker"],
           "EXTRANET_REQUIRED_SERVICES": "echo"}
    with OwnGateway(cluster, env) as gw:
        r = requests.get(gw.url + "/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["brokers_total"] == 2 and r.json()["brokers_reachable"] == 1
        # requests still go through (to the live broker)
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200


def debug_gateway(cluster, **env):
    """An own gateway with the debug routes, used only once /readyz says echo is reachable (as
    a load balancer would): /healthz alone answers before its broker connection is up, and a
    request sent in that moment gets 503."""
    e = {"EXTRANET_DEBUG_ROUTES": "1", "EXTRANET_REQUIRED_SERVICES": "echo"}
    e.update(env)
    gw = OwnGateway(cluster, e)
    end = time.monotonic() + 20
    while requests.get(gw.url + "/readyz", timeout=5).status_code != 200:
        if time.monotonic() > end:
            gw.stop()
            pytest.fail("own gateway never ready:\n" + gw.log.read_text())
        time.sleep(0.05)
    return gw


def test_debug_echo_roundtrip(cluster):
    with debug_gateway(cluster) as gw:
        r = requests.get(gw.url + "/api/v1/debug/echo?data=aGVsbG8%3D&sleep_ms=0", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["data"] == "aGVsbG8=" and body["worker_pid"] > 0
        assert_common_headers(r)
        assert_error(requests.get(gw.url + "/api/v1/debug/echo?sleep_ms=abc", timeout=10), 400,
                     "invalid")
        assert_error(requests.get(gw.url + "/api/v1/debug/echo?nope=1", timeout=10), 400,
                     "invalid")
        # Idempotency-Key is checked and passed on
        r = requests.get(gw.url + "/api/v1/debug/echo", headers={"Idempotency-Key": "k-1"},
                         timeout=10)
        assert r.status_code == 200, r.text
        for bad in ("x" * 129, "a b", "\u00e9t\u00e9"):
            r = requests.get(gw.url + "/api/v1/debug/echo",
                             headers={"Idempotency-Key": bad.encode("utf-8")}, timeout=10)
            assert_error(r, 400, "invalid")
        # the service's own error goes through with its status
        assert_error(requests.get(gw.url + "/api/v1/debug/echo?sleep_ms=-1", timeout=10), 400,
                     "invalid")


def test_deadline_504(cluster):
    with debug_gateway(cluster, EXTRANET_DEADLINE_MS="400") as gw:
        t0 = time.monotonic()
        r = requests.get(gw.url + "/api/v1/debug/echo?sleep_ms=1500", timeout=10)
        took = time.monotonic() - t0
        assert_error(r, 504, "deadline_exceeded")
        assert 0.35 < took < 1.4, took
        # the late reply is dropped; the next request is answered normally
        time.sleep(1.3)
        r = requests.get(gw.url + "/api/v1/debug/echo?data=eA%3D%3D", timeout=10)
        assert r.status_code == 200 and r.json()["data"] == "eA=="
        m = parse_prometheus(requests.get(gw.url + "/metrics", timeout=5).text)
        assert metric(m, "extranet_upstream_errors_total", service="echo", kind="deadline") == 1


def test_many_slow_requests_hold_no_thread(cluster):
    """64 requests waiting on a slow service at once; /healthz still answers at once."""
    with debug_gateway(cluster, EXTRANET_DEADLINE_MS="1500") as gw:
        results = []

        def slow():
            try:
                results.append(requests.get(gw.url + "/api/v1/debug/echo?sleep_ms=1200",
                                            timeout=15).status_code)
            except requests.RequestException as e:
                results.append(repr(e))
        threads = [threading.Thread(target=slow) for _ in range(64)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 0.5
        for t in threads:
            t.join()
        assert len(results) == 64
        assert set(results) <= {200, 504}, results


def test_shutdown_answers_suspended_requests_503(cluster):
    gw = debug_gateway(cluster, EXTRANET_DEADLINE_MS="20000")
    out = {}

    def slow():
        out["r"] = requests.get(gw.url + "/api/v1/debug/echo?sleep_ms=5000", timeout=20)
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    rc = gw.stop()
    t.join(10)
    assert rc == 0, gw.log.read_text()
    assert time.monotonic() - t0 < 4
    assert_error(out["r"], 503, "unavailable")


# An LD_PRELOAD shim for the test below: zmq_poll fails (EFAULT) once the file named by
# GW_SHIM_FAIL_FILE exists, and MHD_quiesce_daemon is slowed down, which widens the window
# between the loop thread's death and loop_stop() in which requests still arrive.
LOOP_FAIL_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int zmq_poll(void *items, int n, long timeout) {
    int (*real)(void *, int, long) = (int (*)(void *, int, long))dlsym(RTLD_NEXT, "zmq_poll");
    const char *f = getenv("GW_SHIM_FAIL_FILE");
    if (f && access(f, F_OK) == 0) { errno = EFAULT; return -1; }
    return real(items, n, timeout);
}
int MHD_quiesce_daemon(void *d) {
    int (*real)(void *) = (int (*)(void *))dlsym(RTLD_NEXT, "MHD_quiesce_daemon");
    struct timespec ts = {0, 800L * 1000000L};
    nanosleep(&ts, NULL);
    return real(d);
}
"""


def test_dead_loop_thread_answers_every_request(cluster, tmp_path):
    """When the ZeroMQ loop thread dies (zmq_poll fails), the gateway stops: requests that
    arrive after its death used to wait in the queue forever, and MHD_stop_daemon() then
    aborted on their suspended connections. Now each gets 503 and the exit code is 1."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler for the LD_PRELOAD shim")
    src, shim = tmp_path / "shim.c", tmp_path / "shim.so"
    src.write_text(LOOP_FAIL_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"], check=True)
    preload = [str(shim)]
    ldd = subprocess.run(["ldd", str(cluster.gateway_bin())], capture_output=True, text=True)
    m = re.search(r"libasan\.so\S* => (\S+)", ldd.stdout)
    if m:   # a sanitizer build: its runtime must come first
        preload.insert(0, m.group(1))
    fail_file = tmp_path / "fail"
    gw = debug_gateway(cluster, LD_PRELOAD=":".join(preload), GW_SHIM_FAIL_FILE=str(fail_file))
    stop, results = threading.Event(), []

    def client():
        with requests.Session() as sess:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = sess.get(gw.url + "/api/v1/debug/echo?sleep_ms=0", timeout=8)
                    results.append((r.status_code, time.monotonic() - t0))
                except requests.ConnectionError:   # refused once it stopped listening
                    results.append(("closed", time.monotonic() - t0))
                    time.sleep(0.01)
                except requests.RequestException as e:
                    results.append((repr(e), time.monotonic() - t0))
    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        fail_file.touch()
        rc = gw.proc.wait(15)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        gw.stop()
    log = gw.log.read_text(errors="replace")
    assert "zmq_poll" in log and "the gateway stops" in log, log
    assert rc == 1, "exit code %s:\n%s" % (rc, log[-3000:])
    codes = {c for c, _ in results}
    assert 200 in codes and 503 in codes, codes
    assert codes <= {200, 503, "closed"}, codes
    assert max(took for _, took in results) < 3, sorted(took for _, took in results)[-5:]


# ------------------------------------------------------------------ connections

def test_idle_keepalive_connections_do_not_block(cluster):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2000
    if hard < want + 200:
        pytest.skip("RLIMIT_NOFILE hard limit %d too low" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want + 200), hard))
    with OwnGateway(cluster, {"EXTRANET_REQUIRED_SERVICES": "none"}) as gw:
        socks = []
        try:
            req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
            for i in range(want):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                socks.append(s)
                if i % 2 == 0:   # half of them used once, then idle; half never used
                    s.sendall(req)
            for s in socks[::2]:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    assert chunk, "connection closed"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            r = requests.get(gw.url + "/healthz", timeout=5)
            took = time.monotonic() - t0
            assert r.status_code == 200
            assert took < 0.5, took
            # and a used idle connection still works
            socks[0].sendall(req)
            assert socks[0].recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for s in socks:
                s.close()
        m = parse_prometheus(requests.get(gw.url + "/metrics", timeout=5).text)
        assert metric(m, "extranet_http_requests_total", route="/healthz", method="GET",
                      status="200") >= want // 2 + 2


def test_slow_client_times_out(cluster):
    with OwnGateway(cluster, {"EXTRANET_REQUIRED_SERVICES": "none",
                              "EXTRANET_HTTP_TIMEOUT_S": "1"}) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # never finishes its headers
        t0 = time.monotonic()
        assert s.recv(4096) == b""   # closed by the gateway
        assert time.monotonic() - t0 < 5
        s.close()
