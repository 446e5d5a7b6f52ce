"""docs/openapi.yaml against the gateway's route table (`gateway --routes`, one JSON line per
route with its message fields): the same routes, methods, success statuses, service methods,
auth and 2FA rules, request bodies / query parameters and reply fields. And the spec must pass a
real OpenAPI validator (Redocly CLI through npx; skipped with a reason when npx cannot fetch
it). Needs python3-yaml (Debian)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml (Debian) not installed")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}
REDOCLY = "@redocly/cli@2.77.0"


@pytest.fixture(scope="module")
def spec():
    with open(SPEC) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def routes(build_dir):
    exe = Path(build_dir) / "gateway" / "gateway"
    if not exe.exists():
        pytest.skip("gateway not built in %s" % build_dir)
    out = subprocess.run([str(exe), "--routes"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert rows, "gateway --routes printed nothing"
    return {(r["method"], r["path"]): r for r in rows}


def resolve(spec, node):
    """Follows "#/..." $refs (recursively) to the node they name."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def path_params(path):
    return re.findall(r"\{([^}]+)\}", path)


def test_same_routes(spec, routes):
    in_spec = {(m, p) for m, p, _ in operations(spec)}
    assert in_spec - set(routes) == set(), "in docs/openapi.yaml but not in the route table"
    assert set(routes) - in_spec == set(), "in the route table but not in docs/openapi.yaml"


def test_each_operation_matches_its_route(spec, routes):
    problems = []
    for method, path, op in operations(spec):
        r = routes.get((method, path))
        if r is None:
            continue
        where = "%s %s" % (method, path)

        def check(cond, what):
            if not cond:
                problems.append("%s: %s" % (where, what))
        responses = op.get("responses", {})
        check(str(r["status"]) in responses, "success status %s not documented" % r["status"])
        check(op.get("x-rpc") == r["rpc"], "x-rpc %r != %r" % (op.get("x-rpc"), r["rpc"]))
        security = op.get("security", spec.get("security"))
        if r["auth"]:
            check(security and any("bearer" in s for s in security), "needs bearer security")
            check("401" in responses, "auth route without 401")
        else:
            check(security == [], "public route must say security: []")
        check(bool(op.get("x-mfa-pending-ok")) == r["mfa_pending_ok"], "x-mfa-pending-ok")
        check(bool(op.get("x-debug")) == r["debug"], "x-debug")
        if r["rate_limited"]:
            check("429" in responses, "rate-limited route without 429")
        check(any(c.startswith("4") for c in responses) or r["rpc"] is None or "default" in responses,
              "no 4xx response")
        for code, resp in responses.items():
            if code not in ("200", "201", "204") and code != "default":
                resp = resolve(spec, resp)
                schema = resolve(spec, resp.get("content", {}).get("application/json", {})
                                 .get("schema", {}))
                if code.startswith(("4", "5")) and r["rpc"] is not None:
                    check(schema.get("required") == ["error"], "%s is not the Error shape" % code)

        params = [resolve(spec, p) for p in op.get("parameters", [])]
        in_path = sorted(p["name"] for p in params if p["in"] == "path")
        in_query = sorted(p["name"] for p in params if p["in"] == "query")
        check(in_path == sorted(path_params(path)), "path parameters %s" % in_path)
        fields = set(r["request_fields"] or []) - set(path_params(path))
        body = op.get("requestBody")
        if r["body"]:
            check(body is not None, "route takes a JSON body, spec has no requestBody")
            if body:
                schema = resolve(spec, resolve(spec, body)["content"]["application/json"]["schema"])
                props = set(schema.get("properties", {}))
                check(props == fields, "body properties %s != request fields %s"
                      % (sorted(props), sorted(fields)))
        else:
            check(body is None, "spec has a requestBody, the route takes none")
            if r["rpc"] is not None:
                check(set(in_query) == fields, "query parameters %s != request fields %s"
                      % (in_query, sorted(fields)))

        ok = resolve(spec, responses.get(str(r["status"]), {}))
        content = ok.get("content", {})
        if r["status"] == 204:
            check(not content, "204 route documents a body")
        elif r.get("stream"):
            check(set(content) == {"text/event-stream"}, "stream route must answer "
                  "text/event-stream only, spec has %s" % sorted(content))
        elif r.get("export"):
            check(set(content) == {"text/csv", "application/x-ndjson"}, "export route must "
                  "answer text/csv and application/x-ndjson, spec has %s" % sorted(content))
        elif r["rpc"] is not None:
            schema = resolve(spec, content.get("application/json", {}).get("schema", {}))
            props = set(schema.get("properties", {}))
            check(props == set(r["reply_fields"]), "reply properties %s != reply fields %s"
                  % (sorted(props), sorted(r["reply_fields"])))
    assert not problems, "\n".join(problems)


def test_spec_validates_with_redocly(tmp_path):
    npx = shutil.which("npx")
    if not npx:
        pytest.skip("npx (node) not installed")
    env = dict(os.environ, NO_UPDATE_NOTIFIER="1", REDOCLY_TELEMETRY="off")
    try:
        p = subprocess.run([npx, "--yes", REDOCLY, "lint", str(SPEC)], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("npx %s timed out (no network?)" % REDOCLY)
    out = p.stdout + p.stderr
    if "validated in" not in out and "valid" not in out.lower():
        pytest.skip("npx could not fetch or run %s:\n%s" % (REDOCLY, out[-2000:]))
    sys.stdout.write(out[-1500:])
    assert p.returncode == 0, out
