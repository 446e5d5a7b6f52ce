#!/usr/bin/python3
"""HTTP steps of tests/compose/run against a compose-started cluster (stdlib only).

    e2e.py URL wait-ready SECONDS          poll /readyz until 200 or the deadline
    e2e.py URL flow                        admin login, create an employee, employee login,
                                           GET /me, employee refused on /admin/users, the
                                           creation in the audit log, the audit chain verifies
    e2e.py URL create-users N              N x POST /admin/users as the admin (each one is
                                           logged once by the identity copy that served it)
    e2e.py URL me N                        N x GET /me as a fresh employee; all must be 200
Admin credentials: $EXTRANET_ADMIN_EMAIL / $EXTRANET_ADMIN_PASSWORD. Exit 0 on success."""

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request


class Fail(Exception):
    pass


def call(base, method, path, body=None, token=None, timeout=15):
    """(status, parsed JSON or None, X-Request-Id)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, rid = r.read(), r.status, r.headers.get("X-Request-Id")
    except urllib.error.HTTPError as e:
        raw, status, rid = e.read(), e.code, e.headers.get("X-Request-Id")
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    return status, doc, rid


def expect(what, got, want, doc=None):
    if got != want:
        raise Fail("%s: HTTP %s, expected %s: %s" % (what, got, want, json.dumps(doc)))


def login(base, email, password):
    st, doc, _ = call(base, "POST", "/api/v1/auth/login", {"email": email, "password": password})
    expect("login " + email, st, 200, doc)
    if not doc.get("token"):
        raise Fail("login %s: no token (mfa?): %s" % (email, json.dumps(doc)))
    return doc["token"]


def admin_token(base):
    return login(base, os.environ["EXTRANET_ADMIN_EMAIL"], os.environ["EXTRANET_ADMIN_PASSWORD"])


def create_employee(base, admin):
    email = "emp-%s@example.com" % secrets.token_hex(4)
    password = "pw-" + secrets.token_hex(8)
    st, doc, _ = call(base, "POST", "/api/v1/admin/users",
                      {"email": email, "display_name": "Employee " + email[4:12],
                       "kind": "employee", "password": password}, token=admin)
    expect("create employee", st, 201, doc)
    if doc.get("email") != email or doc.get("kind") != "employee" or not doc.get("id"):
        raise Fail("create employee: unexpected user %s" % json.dumps(doc))
    return email, password, doc["id"]


def wait_ready(base, seconds):
    end = time.monotonic() + float(seconds)
    last = None
    while time.monotonic() < end:
        try:
            last = call(base, "GET", "/readyz", timeout=3)
            if last[0] == 200:
                print("ready: %s" % json.dumps(last[1]))
                return
        except OSError as e:
            last = (None, str(e), None)
        time.sleep(1)
    raise Fail("not ready after %s s; last /readyz: %s" % (seconds, last))


def flow(base):
    admin = admin_token(base)
    st, me, _ = call(base, "GET", "/api/v1/me", token=admin)
    expect("admin GET /me", st, 200, me)
    if me.get("kind") != "admin":
        raise Fail("admin GET /me: %s" % json.dumps(me))
    email, password, uid = create_employee(base, admin)
    emp = login(base, email, password)
    st, me, rid = call(base, "GET", "/api/v1/me", token=emp)
    expect("employee GET /me", st, 200, me)
    if me.get("id") != uid or me.get("email") != email or me.get("kind") != "employee":
        raise Fail("employee GET /me: %s" % json.dumps(me))
    if not rid:
        raise Fail("no X-Request-Id on GET /me")
    st, doc, _ = call(base, "GET", "/api/v1/admin/users", token=emp)
    expect("employee GET /admin/users", st, 403, doc)
    st, doc, _ = call(base, "GET", "/api/v1/me")
    expect("anonymous GET /me", st, 401, doc)
    # identity's audit outbox reaches the audit service through the broker (relayed by its tick).
    end = time.monotonic() + 20
    while True:
        st, doc, _ = call(base, "GET", "/api/v1/admin/audit?action=user.created&target_id=" + uid,
                          token=admin)
        expect("admin GET /admin/audit", st, 200, doc)
        if any(r.get("target_id") == uid for r in (doc or {}).get("records", [])):
            break
        if time.monotonic() > end:
            raise Fail("no user.created audit record for %s after 20 s: %s" % (uid, json.dumps(doc)))
        time.sleep(0.5)
    st, doc, _ = call(base, "GET", "/api/v1/admin/audit/verify", token=admin)
    expect("admin GET /admin/audit/verify", st, 200, doc)
    if not doc.get("ok"):
        raise Fail("audit chain does not verify: %s" % json.dumps(doc))
    print("flow ok: admin logged in, employee %s created, logged in, GET /me = %s, audited"
          % (uid, email))


def create_users(base, n):
    admin = admin_token(base)
    for i in range(int(n)):
        create_employee(base, admin)
    print("created %s users" % n)


def me_many(base, n):
    admin = admin_token(base)
    email, password, uid = create_employee(base, admin)
    emp = login(base, email, password)
    bad = []
    t0 = time.monotonic()
    for i in range(int(n)):
        st, doc, _ = call(base, "GET", "/api/v1/me", token=emp)
        if st != 200 or doc.get("id") != uid:
            bad.append((i, st, doc))
    print("%s x GET /me in %.1f s, %d failed" % (n, time.monotonic() - t0, len(bad)))
    if bad:
        raise Fail("failed requests: %s" % bad[:5])


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, cmd, args = argv[1].rstrip("/"), argv[2], argv[3:]
    try:
        {"wait-ready": wait_ready, "flow": flow, "create-users": create_users,
         "me": me_many}[cmd](base, *args)
    except (Fail, OSError, KeyError, ValueError) as e:
        print("FAIL %s: %s" % (cmd, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
