"""scripts/dev, the native dev cluster in one command (issue 2, item 5), driven as a developer
would: `up` starts everything and writes cluster.env, the first admin can sign in, `status`
lists the processes, `down` stops all of it and leaves no process behind (not even a child of
PostgreSQL). The state goes to a temp dir (EXTRANET_DEV_DIR) so a developer's .dev/ is never
touched."""

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import requests

import cluster as cluster_lib

REPO = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "dev-admin@dev.test"
ADMIN_PASSWORD = "Dev-Admin-Passw0rd-1"
VARS = ("EXTRANET_URL", "EXTRANET_BROKER", "EXTRANET_EVENTS", "EXTRANET_PG", "EXTRANET_REDIS")


def _dev(env, *args, timeout=240):
    return subprocess.run([str(REPO / "scripts" / "dev"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _alive(pid):
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgids):
    """Every live process whose process group is one of pgids (the cluster's processes each
    lead their own group; PostgreSQL's backends are in the postmaster's)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(d.name))
    return found


def _mentioning(text):
    """Live processes whose command line contains text (PostgreSQL and its backends run with
    the cluster's temp dir in theirs)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in cmd and _alive(int(d.name)):
            found.append(int(d.name))
    return found


def _parse_env(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = shlex.split(v)[0] if v.strip() else ""
    return out


def test_scripts_dev_up_status_down_leaves_nothing(build_dir):
    state = tempfile.mkdtemp(prefix="extranet-devtest-")
    env = dict(os.environ, EXTRANET_DEV_DIR=state, EXTRANET_BUILD_DIR=str(build_dir),
               EXTRANET_ADMIN_EMAIL=ADMIN_EMAIL, EXTRANET_ADMIN_PASSWORD=ADMIN_PASSWORD)
    up = _dev(env, "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        cenv = _parse_env(Path(state) / "cluster.env")
        assert set(VARS) <= set(cenv), cenv
        url = cenv["EXTRANET_URL"]
        assert url.startswith("http://127.0.0.1:") and url in up.stdout
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        r = requests.post(url + "/api/v1/auth/login", timeout=30,
                          json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        pids = {}
        for line in (Path(state) / "pids").read_text().splitlines():
            name, pid = line.split()
            pids[name] = int(pid)
        services = cluster_lib.Cluster(admin_email=ADMIN_EMAIL,
                                       admin_password=ADMIN_PASSWORD).service_bins()
        want = {"redis", "smtp", "broker", "gateway"} | set(services)
        assert want <= set(pids), pids
        assert all(_alive(p) for p in pids.values()), pids
        st = _dev(env, "status")
        assert st.returncode == 0 and "running" in st.stdout, st.stdout + st.stderr
        supervisor = int((Path(state) / "supervisor.pid").read_text())
        cluster_dir = (Path(state) / "cluster.dir").read_text().strip()
        assert _mentioning(cluster_dir), "no process runs from %s" % cluster_dir  # PostgreSQL
    finally:
        down = _dev(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    assert not _alive(supervisor)
    left = _group_members(set(pids.values())) + _mentioning(cluster_dir)
    assert left == [], "left behind: %s" % left
    assert not (Path(state) / "cluster.env").exists()
    st = _dev(env, "status")
    assert st.returncode == 1 and "not running" in st.stdout
