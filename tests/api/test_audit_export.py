"""GET /api/v1/admin/audit/export streamed (gateway/export.c, services/audit/README.md Export),
black-box on a cluster of its own: one chunked CSV / JSON-lines body holding every matching
record (the CSV header once), fetched page by page; the same record set as paging
GET /admin/audit; admins only; bad filters are JSON errors before any body byte; audit
unavailable before the call is a JSON error, audit gone mid-export cuts the body (no final
chunk: never a clean, complete-looking file); a client that leaves mid-export leaves the gateway
healthy; at most EXTRANET_MAX_EXPORTS at once (503 beyond).

Runs its own cluster: EXTRANET_EXPORT_PAGE=5 (a few dozen records make many pages),
EXTRANET_MAX_EXPORTS=2 and EXTRANET_DEADLINE_MS=3000 (a stopped audit fails fast)."""

import csv
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402
from test_audit_broker import Rpc, pb  # noqa: E402,F401 (pb: fixture)

ADMIN_EMAIL = "root@auditexport.test"
ADMIN_PASSWORD = "AuditExport-Admin-Passw0rd"
PASSWORD = "Export-User-Passw0rd-1"
PAGE = 5
MAX_EXPORTS = 2
COLUMNS = ["seq", "event_id", "time", "actor_id", "actor_kind", "actor_ip", "actor_session",
           "action", "target_type", "target_id", "group_id", "outcome", "request_id", "service",
           "details", "prev_hash", "hash"]
BIG = 4000           # synthetic records of ~3.3 KB: ~13 MB, far more than socket buffers hold
BIG_PAGE = 200       # ?limit= for the big exports (the client's page size)


@pytest.fixture(scope="module")
def ec():
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_EXPORT_PAGE": str(PAGE),
                                       "EXTRANET_MAX_EXPORTS": str(MAX_EXPORTS),
                                       "EXTRANET_DEADLINE_MS": "3000",
                                       "EXTRANET_LOGIN_RATE_IP": "100000",
                                       "EXTRANET_LOGIN_RATE_ACCOUNT": "100000"})
    if not c.gateway_bin() or not c.broker_bin() or \
            not {"identity", "audit"} <= set(c.service_bins()):
        pytest.skip("gateway, broker, identity or audit not built in %s" % c.build)
    c.start()
    yield c
    c.stop(remove=not os.environ.get("EXTRANET_KEEP_CLUSTER"))


class Api:
    def __init__(self, base):
        self.url = base + "/api/v1"
        self.http = requests.Session()
        self.admin_token = self.login(ADMIN_EMAIL, ADMIN_PASSWORD)

    def login(self, email, password=PASSWORD):
        r = self.http.post(self.url + "/auth/login", json={"email": email, "password": password},
                           timeout=20)
        assert r.status_code == 200, r.text
        return r.json()["token"]

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

    def export(self, token=None, stream=False, **params):
        """GET /admin/audit/export on a connection of its own (stream: the body unread)."""
        tok = self.admin_token if token is None else token
        h = {"Authorization": "Bearer " + tok} if tok else {}
        return requests.get(self.url + "/admin/audit/export", headers=h, params=params,
                            stream=stream, timeout=30)

    def new_user(self, kind="employee"):
        email = "export-%s@auditexport.test" % uuid.uuid4().hex[:12]
        r = self.admin("POST", "/admin/users", {"email": email, "display_name": "Export T",
                                                "password": PASSWORD, "kind": kind}, expect=201)
        return email, r.json()["id"]

    def records(self, **filters):
        """Every record matching filters, paging GET /admin/audit."""
        out, cursor = [], ""
        while True:
            params = dict(filters, limit=500)
            if cursor:
                params["cursor"] = cursor
            body = self.admin("GET", "/admin/audit", params=params, expect=200).json()
            out += body["records"]
            cursor = body["next_cursor"]
            if not cursor:
                return out

    def wait_records(self, count, timeout=30.0, **filters):
        end = time.monotonic() + timeout
        while True:
            recs = self.records(**filters)
            if len(recs) >= count:
                return recs
            if time.monotonic() > end:
                pytest.fail("only %d of %d records for %r" % (len(recs), count, filters))
            time.sleep(0.2)


@pytest.fixture(scope="module")
def api(ec):
    return Api(ec.base_url)


@pytest.fixture(scope="module")
def walk(api):
    """One user with 1 user.created + 22 user.updated records: 23 records, 5 pages of 5."""
    _, uid = api.new_user()
    for i in range(22):
        api.admin("PATCH", "/admin/users/" + uid, {"display_name": "E%d" % i}, expect=200)
    recs = api.wait_records(23, target_id=uid)
    assert len(recs) == 23
    return uid, recs


@pytest.fixture(scope="module")
def big(ec, pb):
    """BIG synthetic records (audit.Append as SYSTEM, like a relay) with ~3.3 KB of details,
    all with target_id = the returned tag."""
    tag = "export-big-" + uuid.uuid4().hex[:8]
    rpc = Rpc(pb, ec.urls["broker"])
    pad = json.dumps({"pad": "x" * 3200})
    try:
        for start in range(0, BIG, 500):
            now = time.time()
            recs = []
            for i in range(start, start + 500):
                recs.append(pb.audit.Record(
                    event_id=str(uuid.uuid4()),
                    time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                    + ".%06dZ" % int((now % 1) * 1e6),
                    actor_kind="system", action="test.export", target_type="test",
                    target_id=tag, outcome="ok", details=pad, service="pytest"))
            req = pb.audit.AppendRequest()
            req.records.extend(recs)
            st, msg, rep = rpc.call("audit.Append", req, reply=pb.audit.AppendReply, timeout=60)
            assert st == "OK" and rep.appended == 500, (st, msg)
    finally:
        rpc.close()
    return tag


def body_of(r):
    assert r.status_code == 200, r.text
    return r.content.decode("utf-8")


def csv_rows(text):
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_json_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    assert "Content-Disposition" not in r.headers
    err = r.json()["error"]
    if code:
        assert err["code"] == code, err
    assert err["request_id"] == r.headers["X-Request-Id"]


def test_csv_stream_holds_every_record_once_like_paging(api, walk):
    uid, recs = walk
    r = api.export(format="csv", target_id=uid)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.headers
    cd = r.headers["Content-Disposition"]
    assert cd.startswith('attachment; filename="audit-') and cd.endswith('.csv"'), cd
    rows = csv_rows(body_of(r))
    assert rows[0] == COLUMNS
    assert COLUMNS not in rows[1:], "the header came more than once"
    got = [dict(zip(COLUMNS, row)) for row in rows[1:]]
    assert [int(g["seq"]) for g in got] == [int(x["seq"]) for x in recs]  # 5 pages, in order
    seqs = [int(g["seq"]) for g in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 23
    for g, want in zip(got, recs):
        for k in COLUMNS[1:]:
            assert g[k] == str(want[k]), (k, g, want)


def test_jsonl_stream_holds_every_record_once_like_paging(api, walk):
    uid, recs = walk
    r = api.export(target_id=uid)  # jsonl is the default
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.headers
    assert r.headers["Content-Disposition"].endswith('.jsonl"')
    text = body_of(r)
    assert text.endswith("\n")
    lines = [json.loads(x) for x in text.splitlines()]
    assert [x["seq"] for x in lines] == [int(x["seq"]) for x in recs]
    for got, want in zip(lines, recs):
        for k in COLUMNS[1:]:
            assert got[k] == want[k], (k, got, want)
    # format=jsonl said out loud is the same stream
    again = [json.loads(x) for x in body_of(api.export(format="jsonl", target_id=uid))
             .splitlines()]
    assert again == lines


def test_filters_narrow_the_stream(api, walk):
    uid, recs = walk
    rows = csv_rows(body_of(api.export(format="csv", target_id=uid, action="user.created")))
    assert rows[0] == COLUMNS and len(rows) == 2 and rows[1][7] == "user.created"
    since = recs[10]["time"]
    lines = [json.loads(x) for x in body_of(api.export(target_id=uid, since=since)).splitlines()]
    assert [x["seq"] for x in lines] == [int(x["seq"]) for x in recs[10:]]
    lines = [json.loads(x) for x in body_of(api.export(target_id=uid, until=since)).splitlines()]
    assert [x["seq"] for x in lines] == [int(x["seq"]) for x in recs[:10]]
    lines = body_of(api.export(target_id=uid, request_id=recs[3]["request_id"])).splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [recs[3]["seq"]]
    # nothing matches: CSV is the header alone, JSON lines an empty body
    none = str(uuid.uuid4())
    assert csv_rows(body_of(api.export(format="csv", target_id=none))) == [COLUMNS]
    assert body_of(api.export(target_id=none)) == ""
    # a client's own page size, and a cursor resumes after that seq (no header: the rest
    # of a file already started)
    lines = body_of(api.export(target_id=uid, limit=2)).splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [x["seq"] for x in recs]
    rows = csv_rows(body_of(api.export(format="csv", target_id=uid, cursor=recs[19]["seq"])))
    assert [int(x[0]) for x in rows] == [int(x["seq"]) for x in recs[20:]]


def test_only_admins_export(api):
    email, _ = api.new_user()
    tok = api.login(email)
    assert_json_error(api.export(token=tok, format="csv"), 403, "forbidden")
    assert_json_error(api.export(token=""), 401)
    assert_json_error(api.export(token="not-a-session-token"), 401)
    email, _ = api.new_user(kind="extranet")
    tok = api.login(email)
    r = api.export(token=tok)
    assert_json_error(r, 403)
    assert "records" not in r.text and "hash" not in r.text


def test_bad_filters_are_json_errors_before_any_body(api):
    for params in ({"bogus": "1"}, {"since": "yesterday"}, {"until": "x"}, {"format": "xml"},
                   {"limit": "100000"}, {"cursor": "x"}, {"format": "csv", "actor": "a"}):
        r = api.export(**params)
        assert_json_error(r, 400, "invalid")


def test_audit_stopped_before_the_call_is_a_json_error(api, ec, walk):
    uid, _ = walk
    ec.stop_service("audit")
    try:
        r = api.export(format="csv", target_id=uid)
        # The gateway's answer when a service gives none: 503 when it is known to be
        # unavailable, 504 when the deadline passed with the request queued at the broker.
        assert r.status_code in (503, 504), (r.status_code, r.text)
        assert_json_error(r, r.status_code)
    finally:
        ec.start_service("audit")
    assert body_of(api.export(format="csv", target_id=uid)).startswith("seq,")


def read_some(r, n=1):
    """The first n chunks of r's body (at least one byte each) and the iterator for the rest
    (urllib3 closes the connection when that iterator is dropped unfinished)."""
    it = r.iter_content(chunk_size=16384)
    got = b""
    for _ in range(n):
        got += next(it)
    return it, got


def test_audit_gone_mid_export_cuts_the_body(api, ec, big):
    r = api.export(stream=True, format="csv", target_id=big, limit=BIG_PAGE)
    assert r.status_code == 200, r.text
    assert r.headers.get("Transfer-Encoding") == "chunked"
    it, first = read_some(r)
    assert first.startswith(b"seq,event_id")
    # Arrived incrementally: the body is being written while audit is stopped; later pages
    # cannot come, and the body must not end like a complete one.
    ec.stop_service("audit")
    try:
        rest = b""
        with pytest.raises((requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ConnectionError)):
            for chunk in it:
                rest += chunk
        rows = csv_rows((first + rest).decode("utf-8", "replace"))
        assert len(rows) - 1 < BIG, "a complete export despite audit being stopped"
    finally:
        r.close()
        ec.start_service("audit")
    log = (ec.log_dir / "gateway.log").read_text(errors="replace")
    assert "audit export aborted" in log


def test_big_export_complete_and_in_order(api, big):
    r = api.export(stream=True, format="csv", target_id=big, limit=BIG_PAGE)
    assert r.status_code == 200, r.text
    text = b"".join(r.iter_content(chunk_size=65536)).decode("utf-8")
    rows = csv_rows(text)
    assert rows[0] == COLUMNS and COLUMNS not in rows[1:]
    seqs = [int(x[0]) for x in rows[1:]]
    assert len(seqs) == BIG and seqs == sorted(seqs) and len(set(seqs)) == BIG
    assert seqs == [int(x["seq"]) for x in api.records(target_id=big)]


def gateway_log(ec):
    return (ec.log_dir / "gateway.log").read_text(errors="replace")


def test_client_leaving_mid_export_leaves_the_gateway_healthy(api, ec, big, walk):
    before = gateway_log(ec).count("audit export ended by the client")
    r = api.export(stream=True, target_id=big, limit=BIG_PAGE)
    assert r.status_code == 200, r.text
    read_some(r)
    r.close()  # gone, mid-body: the connection is closed with most of the body unread
    end = time.monotonic() + 15
    while gateway_log(ec).count("audit export ended by the client") == before:
        assert time.monotonic() < end, "the gateway did not notice the client leave"
        time.sleep(0.1)
    assert api.call("GET", "/me", api.admin_token).status_code == 200
    uid, recs = walk
    lines = body_of(api.export(target_id=uid)).splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [x["seq"] for x in recs]


def test_at_most_max_exports_at_once(api, ec, big, walk):
    held = []
    try:
        for _ in range(MAX_EXPORTS):  # slow readers: open, first chunk read, then nothing
            r = api.export(stream=True, format="csv", target_id=big, limit=BIG_PAGE)
            assert r.status_code == 200, r.text
            it, _ = read_some(r)
            held.append((r, it))  # the iterator too: dropping it would close the connection
        r = api.export(format="csv", target_id=walk[0])
        assert_json_error(r, 503, "unavailable")
        assert "too many exports" in r.json()["error"]["message"]
        # an ordinary request is not held up by them
        assert api.call("GET", "/me", api.admin_token).status_code == 200
        metrics = requests.get(ec.base_url + "/metrics", timeout=10).text
        assert "\nextranet_exports_running %d\n" % MAX_EXPORTS in metrics
    finally:
        for r, _ in held:
            r.close()
    # their slots come back once their clients are gone
    end = time.monotonic() + 15
    while True:
        r = api.export(format="csv", target_id=walk[0])
        if r.status_code == 200:
            break
        assert r.status_code == 503 and time.monotonic() < end, r.text
        time.sleep(0.2)
    assert len(csv_rows(r.text)) == 24


def test_http10_is_refused_before_any_body(api, ec):
    """HTTP/1.0 has no chunked encoding: a cut export would end like a complete one (the
    connection closes either way), so the gateway refuses it with a JSON 505."""
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(api.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(("GET /api/v1/admin/audit/export?format=csv HTTP/1.0\r\nHost: %s\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % (u.netloc, api.admin_token)).encode())
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"505", raw[:300]
    assert b"application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "http_version_not_supported"
    # HTTP/1.1 still streams
    assert api.export(format="csv").status_code == 200


def test_logout_mid_export_cuts_the_body(api, big):
    """Every later page re-checks the session: an admin who logs out mid-export gets a cut body
    (at most the page being written and the one fetched ahead), never the whole export."""
    token = api.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    r = api.export(token=token, stream=True, format="csv", target_id=big, limit=BIG_PAGE)
    assert r.status_code == 200, r.text
    it, got = read_some(r)
    assert api.call("POST", "/auth/logout", token).status_code in (200, 204)
    try:
        with pytest.raises((requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ConnectionError)):
            for chunk in it:
                got += chunk
    finally:
        r.close()
    rows = csv_rows(got.decode("utf-8", "replace"))
    assert len(rows) - 1 < BIG
