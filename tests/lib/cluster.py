#!/usr/bin/python3
"""The native extranet cluster: PostgreSQL and Redis from the machine's binaries, an SMTP sink,
the broker, every built service and the gateway, in a fresh temp dir on free ports. The API
tests (tests/api/conftest.py) and `scripts/dev` both drive this one file. Stdlib + python3-zmq.

    c = Cluster(); c.start(); ...; c.stop()      # or: with Cluster() as c: ...
    python3 tests/lib/cluster.py serve --state-dir .dev [--daemon]    # what scripts/dev runs
    python3 tests/lib/cluster.py pg-only --state-dir DIR   # PostgreSQL alone (tests/run, ctest)
"""

import argparse
import ctypes
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("EXTRANET_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("EXTRANET_REDIS_SERVER", "redis-server")
PYTHON = "/usr/bin/python3"
PG_ROLE = "extranet"
PG_DB = "extranet"
# Services start in this order (a later one may call an earlier one at start-up); any other
# built service follows in name order. The broker and the gateway are started separately.
SERVICE_ORDER = ["echo", "identity", "expiry"]
NOT_SERVICES = {"broker", "runtime"}
# A line with one of these in any log fails the run: sanitizer reports must fail the suite.
SANITIZER_PATTERNS = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                      "WARNING: ThreadSanitizer"]
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
STOP_GRACE_S = 10.0


class ClusterError(Exception):
    """Start-up failed or the cluster is in a state the caller did not ask for."""


class SanitizerError(ClusterError):
    """A process reported a sanitizer error or crashed; raised by stop()."""


def build_dir():
    """The build tree whose binaries run: $EXTRANET_BUILD_DIR (e.g. build-san) or build/."""
    d = os.environ.get("EXTRANET_BUILD_DIR")
    if not d:
        return REPO / "build"
    p = Path(d)
    return p if p.is_absolute() else (REPO / p)


def _is_exe(p):
    return p.is_file() and os.access(p, os.X_OK)


def free_port(exclude=()):
    """A free 127.0.0.1 TCP port. Chosen at random below the kernel's ephemeral range, so an
    outgoing connection of another process cannot take it between now and our bind (a port
    found by binding port 0 is an ephemeral one and can); bind-tested; port 0 as fallback."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = [random.randint(10000, low - 1) for _ in range(50)] if low > 11000 else []
    for port in [p for p in candidates if p not in exclude] + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if s.getsockname()[1] not in exclude:
                return s.getsockname()[1]
    raise ClusterError("no free port")


def _tail(path, lines=40):
    try:
        data = Path(path).read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


_libc = ctypes.CDLL(None, use_errno=True)


def _deathsig(sig):
    """preexec_fn: the child gets `sig` when the process that started it dies, so a killed
    test run or supervisor leaves nothing behind (prctl PR_SET_PDEATHSIG = 1)."""
    def fn():
        _libc.prctl(1, int(sig), 0, 0, 0)
    return fn


class Proc:
    """One process of the cluster: how to start it, its Popen while it runs, its log."""

    def __init__(self, name, argv, env, log, kind, ready=None, deathsig=signal.SIGKILL,
                 user=None, cwd=None, stop_fn=None):
        self.name, self.argv, self.env, self.log, self.kind = name, argv, env, log, kind
        self.ready = ready              # callable -> bool, polled until True
        self.deathsig, self.user, self.cwd = deathsig, user, cwd
        self.stop_fn = stop_fn          # custom graceful stop (PostgreSQL: pg_ctl -m fast)
        self.popen = None
        self.signalled = set()          # signals we sent: such an exit is expected
        self.problems = []              # crash reports, collected at exit

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def spawn(self, cwd):
        with open(self.log, "ab") as log:
            log.write(("--- %s cluster.py starting %s\n"
                       % (time.strftime("%H:%M:%S"), " ".join(map(str, self.argv)))).encode())
            log.flush()
            kw = {}
            if self.user is not None:
                kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
            # Own session: a Ctrl-C in the terminal reaches the controller only, which then
            # stops everything in order; killpg() later also reaches any child of the child.
            self.popen = subprocess.Popen(
                [str(a) for a in self.argv], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.env, cwd=str(self.cwd or cwd),
                start_new_session=True, preexec_fn=_deathsig(self.deathsig), **kw)
        self.signalled = set()

    def signal(self, sig):
        if self.running():
            self.signalled.add(sig)
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        try:
            self.popen.wait(timeout=max(timeout, 0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill_group(self):
        """SIGKILL the process and everything in its process group."""
        # Only while unreaped: a reaped pid (and its group id) may already be someone else's.
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signalled.add(signal.SIGKILL)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()

    def note_exit(self):
        """Records a crash (a fatal signal we did not send) after the process has exited."""
        if self.popen is None or self.popen.returncode is None:
            return
        rc = self.popen.returncode
        if rc < 0 and -rc in {int(s) for s in CRASH_SIGNALS} and -rc not in self.signalled:
            self.problems.append("%s crashed with %s (log %s)"
                                 % (self.name, signal.Signals(-rc).name, self.log))


class Cluster:
    """Everything the cluster runs, on free ports, in a fresh temp dir (self.dir).

    build: build tree (default build_dir()); admin_email/admin_password: the first admin
    (default from EXTRANET_ADMIN_EMAIL/PASSWORD); extra_env: more variables for every binary;
    log_dir/mail_dir: where logs and received mail go (default <dir>/logs, <dir>/mail);
    timeout: start-up deadline in seconds (default $EXTRANET_START_TIMEOUT or 60)."""

    def __init__(self, build=None, admin_email=None, admin_password=None, extra_env=None,
                 log_dir=None, mail_dir=None, timeout=None, pwhash="interactive"):
        self.build = Path(build) if build else build_dir()
        self.admin_email = admin_email or os.environ.get("EXTRANET_ADMIN_EMAIL", "")
        self.admin_password = admin_password or os.environ.get("EXTRANET_ADMIN_PASSWORD", "")
        self.extra_env = dict(extra_env or {})
        self._log_dir_arg, self._mail_dir_arg = log_dir, mail_dir
        self.timeout = float(timeout or os.environ.get("EXTRANET_START_TIMEOUT", "60"))
        self.pwhash = pwhash
        self.procs = {}          # name -> Proc, in start order
        self.services = []       # names of the services started (MMI-registered)
        self.dir = None
        self.env = {}
        self.urls = {}
        self.ports = {}
        self.problems = []
        self._pg_user = None
        self._zctx = None

    # ---------------------------------------------------------------- what is built
    def broker_bin(self):
        p = self.build / "services" / "broker" / "broker"
        return p if _is_exe(p) else None

    def gateway_bin(self):
        p = self.build / "gateway" / "gateway"
        return p if _is_exe(p) else None

    def service_bins(self):
        """{name: path} of every built service binary except the broker, in start order."""
        root = self.build / "services"
        found = {}
        if root.is_dir():
            for d in root.iterdir():
                if d.name not in NOT_SERVICES and _is_exe(d / d.name):
                    found[d.name] = d / d.name
        order = {n: i for i, n in enumerate(SERVICE_ORDER)}
        return {n: found[n] for n in sorted(found, key=lambda n: (order.get(n, 99), n))}

    # ---------------------------------------------------------------- paths and env
    @property
    def log_dir(self):
        return Path(self._log_dir_arg) if self._log_dir_arg else self.dir / "logs"

    @property
    def mail_dir(self):
        return Path(self._mail_dir_arg) if self._mail_dir_arg else self.dir / "mail"

    @property
    def base_url(self):
        return self.urls.get("gateway")

    def _plan(self):
        """Chooses ports and secrets and fills self.env (what every binary gets) and
        self.urls. EXTRANET_REQUIRED_SERVICES is what was built, so the gateway's readiness
        means every started service has a worker."""
        ports = {}
        for k in ("pg", "redis", "smtp", "broker", "events", "events_pub", "http"):
            ports[k] = free_port(exclude=set(ports.values()))
        self.ports = ports
        self.pg_password = secrets.token_hex(16)
        host = "127.0.0.1"
        services = list(self.service_bins()) if self.broker_bin() else []
        self.urls = {
            "gateway": "http://%s:%d" % (host, ports["http"]),
            "broker": "tcp://%s:%d" % (host, ports["broker"]),
            "events": "tcp://%s:%d" % (host, ports["events"]),
            "events_pub": "tcp://%s:%d" % (host, ports["events_pub"]),
            "pg": "postgresql://%s:%s@%s:%d/%s" % (PG_ROLE, self.pg_password, host,
                                                   ports["pg"], PG_DB),
            "redis": "%s:%d" % (host, ports["redis"]),
            "smtp": "smtp://%s:%d" % (host, ports["smtp"]),
        }
        self.env = {
            "EXTRANET_BROKER": self.urls["broker"],
            "EXTRANET_EVENTS": self.urls["events"],
            "EXTRANET_EVENTS_PUB": self.urls["events_pub"],
            "EXTRANET_PG": self.urls["pg"],
            "EXTRANET_REDIS": self.urls["redis"],
            "EXTRANET_SMTP_URL": self.urls["smtp"],
            "EXTRANET_PUBLIC_URL": self.urls["gateway"],
            "EXTRANET_HTTP_ADDR": "%s:%d" % (host, ports["http"]),
            "EXTRANET_DATA_KEY": secrets.token_hex(32),
            "EXTRANET_PWHASH": self.pwhash,
            "EXTRANET_THREADS": os.environ.get("EXTRANET_THREADS", "2"),
            "EXTRANET_LOG": os.environ.get("EXTRANET_LOG", "info"),
            "EXTRANET_BLOB_DIR": str(self.dir / "blobs"),
            "EXTRANET_REQUIRED_SERVICES": ",".join(s for s in services if s != "echo"),
        }
        if self.admin_email:
            self.env["EXTRANET_ADMIN_EMAIL"] = self.admin_email
            self.env["EXTRANET_ADMIN_PASSWORD"] = self.admin_password
        self.env.update(self.extra_env)

    def client_env(self):
        """What other tools need to reach the cluster (written to .dev/cluster.env)."""
        return {
            "EXTRANET_URL": self.urls["gateway"] if self.gateway_bin() else "",
            "EXTRANET_BROKER": self.env["EXTRANET_BROKER"],
            "EXTRANET_EVENTS": self.env["EXTRANET_EVENTS"],
            "EXTRANET_EVENTS_PUB": self.env["EXTRANET_EVENTS_PUB"],
            "EXTRANET_PG": self.env["EXTRANET_PG"],
            "EXTRANET_REDIS": self.env["EXTRANET_REDIS"],
            "EXTRANET_SMTP_URL": self.env["EXTRANET_SMTP_URL"],
            "EXTRANET_MAIL_DIR": str(self.mail_dir),
            "EXTRANET_LOG_DIR": str(self.log_dir),
        }

    def _proc_env(self, extra=None):
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra or {})
        return env

    # ---------------------------------------------------------------- start
    def start(self):
        """Starts everything and waits until ready. A port taken between our choice and the
        bind (another cluster on the machine) is retried with new ports, twice at most."""
        return self._start_retrying(self._start_once)

    def start_pg_only(self):
        """Starts PostgreSQL alone, with the extranet role and database, and waits until it
        takes connections: self.urls["pg"] is its conninfo. stop() ends it as usual."""
        return self._start_retrying(self._start_pg_only_once)

    def _start_retrying(self, start_once):
        for attempt in range(3):
            try:
                start_once()
                return self
            except ClusterError as e:
                in_use = "already in use" in str(e).lower() or "EADDRINUSE" in str(e)
                self._stop_all(quiet=True)
                if not in_use or attempt == 2:
                    if self.dir and not os.environ.get("EXTRANET_KEEP_CLUSTER"):
                        shutil.rmtree(self.dir / "pg", ignore_errors=True)
                    raise   # the temp dir stays, for its logs
                self._cleanup_dir()
            except BaseException:
                self._stop_all(quiet=True)
                self._cleanup_dir()
                raise
        return self

    def _start_once(self):
        self.deadline = time.monotonic() + self.timeout
        self.dir = Path(tempfile.mkdtemp(prefix="extranet-"))
        os.chmod(self.dir, 0o711)  # PostgreSQL runs as another user and must reach pg/
        self.procs, self.problems, self.services = {}, [], []
        self._plan()
        for d in (self.log_dir, self.mail_dir, self.dir / "blobs"):
            d.mkdir(parents=True, exist_ok=True)
        self._start_pg()
        self._add(Proc("redis", [REDIS_SERVER, "--port", self.ports["redis"], "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                                 self.dir, "--daemonize", "no", "--logfile", ""],
                       self._proc_env(), self.log_dir / "redis.log", "infra",
                       ready=self._redis_ready))
        self._add(Proc("smtp", [PYTHON, REPO / "tests" / "lib" / "smtp_sink.py", "--port",
                                self.ports["smtp"], "--mail-dir", self.mail_dir],
                       self._proc_env(), self.log_dir / "smtp.log", "infra",
                       ready=lambda: self._smtp_ready()))
        for name in ("redis", "smtp"):
            self.procs[name].spawn(self.dir)
        self._wait(["postgres"], "PostgreSQL")
        self._create_db()
        self._wait(["redis", "smtp"], "Redis and the SMTP sink")
        if not self.broker_bin():
            print("cluster: no broker in %s: started PostgreSQL, Redis and SMTP only"
                  % self.build, file=sys.stderr)
            return
        self._add(self._broker_proc()).spawn(self.dir)
        self._wait(["broker"], "the broker")
        for name, path in self.service_bins().items():
            self._add(self._service_proc(name, path)).spawn(self.dir)
            self.services.append(name)
        self._wait(self.services, "services registered with the broker")
        if self.gateway_bin():
            self._add(self._gateway_proc()).spawn(self.dir)
            self._wait(["gateway"], "the gateway's /readyz")

    def _start_pg_only_once(self):
        self.deadline = time.monotonic() + self.timeout
        self.dir = Path(tempfile.mkdtemp(prefix="extranet-pg-"))
        os.chmod(self.dir, 0o711)  # PostgreSQL runs as another user and must reach pg/
        self.procs, self.problems, self.services = {}, [], []
        self._plan()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._start_pg()
        self._wait(["postgres"], "PostgreSQL")
        self._create_db()

    def _add(self, proc):
        self.procs[proc.name] = proc
        return proc

    def _broker_proc(self):
        extra = {"EXTRANET_BROKER_BIND": self.urls["broker"],
                 "EXTRANET_EVENTS_BIND": self.urls["events"],
                 "EXTRANET_EVENTS_PUB_BIND": self.urls["events_pub"]}
        return Proc("broker", [self.broker_bin()], self._proc_env(extra),
                    self.log_dir / "broker.log", "broker", ready=self._broker_ready)

    def _service_proc(self, name, path, instance=None, extra=None):
        inst = instance or name
        return Proc(inst, [path], self._proc_env(extra), self.log_dir / ("%s.log" % inst),
                    "service", ready=lambda: self.mmi_service(name))

    def _gateway_proc(self, extra=None):
        return Proc("gateway", [self.gateway_bin()], self._proc_env(extra),
                    self.log_dir / "gateway.log", "gateway", ready=self._gateway_ready)

    # ---------------------------------------------------------------- PostgreSQL
    def _pg_os_user(self):
        """PostgreSQL refuses to run as root: as root it runs as `postgres` (Debian's
        package creates it) or `nobody`; otherwise as ourselves."""
        if os.geteuid() != 0:
            return None
        for name in (os.environ.get("EXTRANET_PG_USER"), "postgres", "nobody"):
            if name:
                try:
                    return pwd.getpwnam(name)
                except KeyError:
                    continue
        raise ClusterError("running as root and no user to run PostgreSQL as")

    def _start_pg(self):
        self._pg_user = user = self._pg_os_user()
        pgdir = self.dir / "pg"
        self.pg_data, self.pg_sock = pgdir / "data", pgdir / "run"
        for d in (pgdir, self.pg_sock):
            d.mkdir(mode=0o700)
            if user:
                os.chown(d, user.pw_uid, user.pw_gid)
        pwfile = pgdir / "pw"
        pwfile.write_text(self.pg_password + "\n")
        os.chmod(pwfile, 0o600)
        if user:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pgenv = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(pgdir),
                 "LC_ALL": "C"}
        # Local socket: trust (only the cluster's own tools use it; the dir is 0700).
        # TCP: password, which the services get in EXTRANET_PG.
        self._run_as(user, [PG_BIN / "initdb", "-D", self.pg_data, "-U", PG_ROLE,
                            "--auth-local=trust", "--auth-host=scram-sha-256",
                            "--pwfile", pwfile, "-E", "UTF8", "--no-locale", "--no-sync"],
                     pgenv, pgdir, self.log_dir / "initdb.log", "initdb")
        pwfile.unlink()
        settings = {"listen_addresses": "127.0.0.1", "port": self.ports["pg"],
                    "unix_socket_directories": self.pg_sock, "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off",
                    "max_connections": "300", "shared_buffers": "32MB",
                    "log_min_messages": "warning", "log_line_prefix": "%m [%p] "}
        argv = [PG_BIN / "postgres", "-D", self.pg_data]
        for k, v in settings.items():
            argv += ["-c", "%s=%s" % (k, v)]
        # SIGQUIT on our death: PostgreSQL's immediate shutdown, which also ends backends.
        self._add(Proc("postgres", argv, pgenv, self.log_dir / "postgres.log", "infra",
                       ready=self._pg_ready, deathsig=signal.SIGQUIT, user=user, cwd=pgdir,
                       stop_fn=self._pg_stop)).spawn(self.dir)

    def _run_as(self, user, argv, env, cwd, log, what):
        kw = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user else {}
        with open(log, "ab") as f:
            r = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=f,
                               stderr=subprocess.STDOUT, env=env, cwd=str(cwd), timeout=120,
                               **kw)
        if r.returncode != 0:
            raise ClusterError("%s failed (exit %d):\n%s" % (what, r.returncode, _tail(log)))

    def _pg_ready(self):
        r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.pg_sock), "-p",
                            str(self.ports["pg"]), "-U", PG_ROLE, "-d", "postgres"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def _create_db(self):
        self._run_as(None, [PG_BIN / "createdb", "-h", self.pg_sock, "-p", self.ports["pg"],
                            "-U", PG_ROLE, PG_DB],
                     dict(os.environ), self.dir, self.log_dir / "initdb.log", "createdb")

    def _pg_stop(self, proc):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir / "pg")}
        kw = {}
        if self._pg_user:
            u = self._pg_user
            kw = dict(user=u.pw_uid, group=u.pw_gid, extra_groups=[])
        proc.signalled.add(signal.SIGINT)   # what pg_ctl -m fast sends
        with open(proc.log, "ab") as f:
            subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(self.pg_data), "-m", "fast",
                            "-w", "-t", str(int(STOP_GRACE_S)), "stop"],
                           stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                           env=env, cwd=str(self.dir / "pg"), timeout=STOP_GRACE_S + 5, **kw)

    def psql(self, sql, **params):
        """Runs SQL in the extranet database through psql over the unix socket and returns
        rows as lists of strings. Parameters are psql variables, used as :'name' in sql
        (quoted as literals by psql, so values cannot inject SQL)."""
        argv = [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-F", "\x1f", "-v",
                "ON_ERROR_STOP=1", "-h", str(self.pg_sock), "-p", str(self.ports["pg"]),
                "-U", PG_ROLE, "-d", PG_DB]
        for k, v in params.items():
            argv += ["-v", "%s=%s" % (k, v)]
        r = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise ClusterError("psql failed: %s" % r.stderr.strip())
        return [line.split("\x1f") for line in r.stdout.splitlines() if line != ""]

    # ---------------------------------------------------------------- readiness checks
    def _redis_ready(self):
        return self.redis_command("PING") == "PONG"

    def redis_command(self, *args):
        """Sends one command to Redis (RESP) and returns a simple reply as str, an integer,
        a bulk string, or None for a nil; an error reply raises ClusterError."""
        payload = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            payload += b"$%d\r\n%s\r\n" % (len(a), a)
        try:
            with socket.create_connection(("127.0.0.1", self.ports["redis"]), timeout=2) as s:
                s.sendall(payload)
                f = s.makefile("rb")
                return self._resp_read(f)
        except OSError:
            return None

    def _resp_read(self, f):
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ClusterError("redis: %s" % rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._resp_read(f) for _ in range(n)]
        return None

    def _smtp_ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=2) as s:
                ok = s.recv(512).startswith(b"220")
                s.sendall(b"QUIT\r\n")
                return ok
        except OSError:
            return False

    def _port_open(self, port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _broker_ready(self):
        return all(self._port_open(self.ports[k]) for k in ("broker", "events", "events_pub"))

    def mmi_service(self, name, timeout_ms=1000):
        """Asks the broker (8/MMI) whether `name` has a worker. True on "200"."""
        import zmq  # python3-zmq; imported here so the infra-only cluster needs no zmq
        if self._zctx is None:
            self._zctx = zmq.Context()
        s = self._zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.urls["broker"])
            s.send_multipart([b"", b"MDPC01", b"mmi.service", name.encode()])
            if not s.poll(timeout_ms):
                return False
            frames = s.recv_multipart()
            return (len(frames) == 4 and frames[1] == b"MDPC01"
                    and frames[2] == b"mmi.service" and frames[3] == b"200")
        finally:
            s.close()

    def http_status(self, path, timeout=2):
        try:
            with urllib.request.urlopen(self.urls["gateway"] + path, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, urllib.error.URLError):
            return None

    def _gateway_ready(self):
        st = self.http_status("/readyz")
        if st == 200:
            return True
        # A minimal gateway without /readyz: process up is all we can know.
        return st == 404 and self.http_status("/healthz") == 200

    def _wait(self, names, what):
        """Polls each process's readiness check until all pass; fails at the deadline or as
        soon as one of them has exited, with the tail of its log."""
        pending = list(names)
        delay = 0.02
        while True:
            for n in list(pending):
                p = self.procs[n]
                if not p.running():
                    rc = p.popen.returncode if p.popen else None
                    raise ClusterError("%s exited (code %s) while waiting for %s; log %s:\n%s"
                                       % (n, rc, what, p.log, _tail(p.log)))
                if p.ready is None or p.ready():
                    pending.remove(n)
            if not pending:
                return
            if time.monotonic() > self.deadline:
                n = pending[0]
                raise ClusterError("timed out after %.0f s waiting for %s (not ready: %s); "
                                   "log %s:\n%s" % (self.timeout, what, ", ".join(pending),
                                                    self.procs[n].log,
                                                    _tail(self.procs[n].log)))
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    # ---------------------------------------------------------------- control
    def _proc(self, name):
        if name not in self.procs:
            raise ClusterError("no process %r (have: %s)" % (name, ", ".join(self.procs)))
        return self.procs[name]

    def stop_service(self, name):
        """Graceful stop (SIGTERM; SIGKILL after 10 s) of one process: a service, "broker",
        "gateway", "redis", "smtp" or "postgres"."""
        self._stop_procs([self._proc(name)])

    def kill_service(self, name, sig=signal.SIGKILL):
        """Sends `sig` (e.g. SIGKILL for a crash, SIGSTOP to freeze a worker). Waits for the
        exit when the signal ends the process."""
        p = self._proc(name)
        p.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            if not p.wait(STOP_GRACE_S):
                p.kill_group()
            p.note_exit()
            self.problems += p.problems

    def start_service(self, name, env=None, wait=True):
        """(Re)starts a stopped process with its former command; env adds or overrides
        variables (kept for later restarts). Waits until it is ready unless wait=False.
        A service is ready when MMI says it has a worker: after kill_service the broker may
        still count the dead worker until its heartbeats expire."""
        p = self._proc(name)
        if p.running():
            raise ClusterError("%s is already running" % name)
        if env:
            p.env = dict(p.env)
            p.env.update(env)
        if p.kind == "gateway":
            # Alone, the gateway is ready when it serves; /readyz depends on the services.
            p.ready = lambda: self.http_status("/healthz") == 200 or self._gateway_ready()
        p.spawn(self.dir)
        if wait:
            self.deadline = time.monotonic() + self.timeout
            self._wait([name], name)

    def restart_service(self, name, env=None):
        self.stop_service(name)
        self.start_service(name, env=env)

    restart = restart_service

    def add_copy(self, name, env=None, wait=True):
        """Starts one more copy of a service (scaling); returns its name, e.g. "expiry.2",
        which stop_service/kill_service accept. Its log is <log_dir>/<that name>.log."""
        path = self.service_bins().get(name)
        if path is None:
            raise ClusterError("service %r is not built" % name)
        i = 2
        while "%s.%d" % (name, i) in self.procs:
            i += 1
        inst = "%s.%d" % (name, i)
        self._add(self._service_proc(name, path, instance=inst, extra=env)).spawn(self.dir)
        if wait:
            self.deadline = time.monotonic() + self.timeout
            self._wait([inst], inst)
        return inst

    def pids(self):
        return {n: p.popen.pid for n, p in self.procs.items() if p.running()}

    # ---------------------------------------------------------------- stop
    def _stop_procs(self, procs, quiet=False):
        """SIGTERM (or the process's own stop) to all at once, then waits; SIGKILL to the
        process group of whatever is still there after the grace period."""
        live = [p for p in procs if p.running()]
        for p in live:
            if p.stop_fn:
                try:
                    p.stop_fn(p)
                except (subprocess.SubprocessError, OSError) as e:
                    if not quiet:
                        print("cluster: stopping %s: %s" % (p.name, e), file=sys.stderr)
            else:
                p.signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        for p in live:
            if not p.wait(end - time.monotonic()):
                if not quiet:
                    print("cluster: %s did not stop within %.0f s: SIGKILL"
                          % (p.name, STOP_GRACE_S), file=sys.stderr)
                p.kill_group()
        for p in procs:
            if p.popen is not None and p.popen.poll() is None:
                p.kill_group()
            p.note_exit()
            self.problems += [x for x in p.problems if x not in self.problems]
            p.problems = []

    def _stop_all(self, quiet=False):
        kinds = ["gateway", "service", "broker"]
        for k in kinds:
            self._stop_procs([p for p in self.procs.values() if p.kind == k], quiet)
        self._stop_procs([p for n, p in self.procs.items() if n in ("smtp", "redis")], quiet)
        self._stop_procs([p for n, p in self.procs.items() if n == "postgres"], quiet)
        # anything else (added later by a test)
        self._stop_procs(list(self.procs.values()), quiet)
        if self._zctx is not None:
            self._zctx.term()
            self._zctx = None

    def sanitizer_reports(self):
        """[(log, excerpt)] for each log that holds a sanitizer report."""
        found = []
        if not self.dir or not self.log_dir.is_dir():
            return found
        for log in sorted(self.log_dir.glob("*.log")):
            try:
                text = log.read_text("utf-8", "replace")
            except OSError:
                continue
            for pat in SANITIZER_PATTERNS:
                i = text.find(pat)
                if i >= 0:
                    start = text.rfind("\n", 0, max(i - 200, 0)) + 1
                    found.append((log, text[start:i + 3000]))
                    break
        return found

    def _cleanup_dir(self):
        if self.dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self, remove=True):
        """Stops everything (no process is left), then raises SanitizerError when a log holds
        a sanitizer report or a process crashed. Removes the temp dir when remove is true and
        nothing was found; otherwise it stays for its logs (path in the error)."""
        if self.dir is None:
            return
        self._stop_all()
        reports = self.sanitizer_reports()
        bad = reports or self.problems
        msg = ""
        if bad:
            parts = ["%s:\n%s" % (log, ex) for log, ex in reports] + self.problems
            msg = ("sanitizer reports or crashes in the cluster (logs kept in %s):\n\n%s"
                   % (self.log_dir, "\n\n".join(parts)))
        if remove and not bad:
            self._cleanup_dir()
        elif not os.environ.get("EXTRANET_KEEP_CLUSTER"):
            # Kept for its logs and mail; the database files (~40 MB) only with the variable.
            shutil.rmtree(self.dir / "pg", ignore_errors=True)
        if bad:
            raise SanitizerError(msg)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -------------------------------------------------------------------- scripts/dev supervisor
def _write_atomic(path, text):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _shell_quote(v):
    return "'" + str(v).replace("'", "'\\''") + "'"


class _Shutdown(Exception):
    pass


def serve(state_dir, daemon):
    """Runs a cluster until SIGTERM/SIGINT. Writes into state_dir: supervisor.pid, then on
    readiness cluster.env (shell assignments) and ready, or failed (the error); keeps logs in
    state_dir/logs and received mail in state_dir/mail."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    for f in ("ready", "failed", "cluster.env", "pids", "cluster.dir"):
        (state / f).unlink(missing_ok=True)
    shutil.rmtree(state / "mail", ignore_errors=True)   # a fresh cluster: old links are dead
    shutil.rmtree(state / "logs", ignore_errors=True)
    (state / "supervisor.log").write_text("")
    if daemon:
        # Double fork + setsid: the supervisor outlives `scripts/dev up` and its terminal.
        if os.fork() > 0:
            return 0
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.chdir("/")
        fd = os.open(str(state / "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o644)
        nul = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nul, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(nul)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    _write_atomic(state / "supervisor.pid", "%d\n" % os.getpid())

    def on_signal(signum, frame):
        raise _Shutdown()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    c = Cluster(log_dir=state / "logs", mail_dir=state / "mail")
    (state / "logs").mkdir(exist_ok=True)
    code, failed = 0, None
    try:
        try:
            print("%s supervisor %d starting the cluster" % (time.strftime("%F %T"),
                                                              os.getpid()), flush=True)
            c.start()
        except ClusterError as e:
            failed = str(e)
            print("start failed: %s" % e, flush=True)
            return 1
        env = c.client_env()
        _write_atomic(state / "cluster.env", "".join(
            "%s=%s\n" % (k, _shell_quote(v)) for k, v in env.items()))
        _write_atomic(state / "cluster.dir", "%s\n" % c.dir)
        _write_atomic(state / "pids", "".join("%s %d\n" % kv for kv in c.pids().items()))
        _write_atomic(state / "ready", "%s\n" % env["EXTRANET_URL"])
        # (not the whole env: EXTRANET_PG holds a password, and logs hold no secrets)
        print("%s ready: %s (addresses in %s)" % (time.strftime("%F %T"),
              env["EXTRANET_URL"] or "no gateway", state / "cluster.env"), flush=True)
        seen_dead = set()
        while True:
            time.sleep(1)
            for n, p in c.procs.items():
                if not p.running() and n not in seen_dead:
                    seen_dead.add(n)
                    print("%s %s exited with code %s (log %s)"
                          % (time.strftime("%F %T"), n, p.popen.returncode, p.log),
                          flush=True)
    except _Shutdown:
        print("%s stopping" % time.strftime("%F %T"), flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            c.stop()
        except SanitizerError as e:
            print(str(e), flush=True)
            code = 1
        for f in ("ready", "cluster.env", "pids", "cluster.dir", "supervisor.pid"):
            (state / f).unlink(missing_ok=True)
        print("%s stopped" % time.strftime("%F %T"), flush=True)
        if failed is not None:   # written last: scripts/dev reads it once all is gone
            _write_atomic(state / "failed", "%s\n" % failed)
    return code


def pg_only(state_dir):
    """Runs PostgreSQL alone until SIGTERM/SIGINT (tests/run's unit tests). Writes into
    state_dir: conninfo (mode 0600: it holds the password) and then ready, or failed (the
    error); PostgreSQL's log is state_dir/logs/postgres.log."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    for f in ("ready", "failed", "conninfo"):
        (state / f).unlink(missing_ok=True)

    def on_signal(signum, frame):
        raise _Shutdown()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    c = Cluster(log_dir=state / "logs")
    code = 0
    try:
        try:
            c.start_pg_only()
        except (ClusterError, OSError, subprocess.SubprocessError) as e:
            _write_atomic(state / "failed", "%s\n" % e)
            return 1
        fd = os.open(str(state / "conninfo.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(c.urls["pg"])
        os.replace(state / "conninfo.tmp", state / "conninfo")
        _write_atomic(state / "ready", "%d\n" % c.ports["pg"])
        while True:
            time.sleep(1)
            if not c.procs["postgres"].running():
                print("pg-only: PostgreSQL exited (log %s)" % c.procs["postgres"].log,
                      file=sys.stderr, flush=True)
                code = 1
                break
    except _Shutdown:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            c.stop()
        except SanitizerError as e:
            print(str(e), file=sys.stderr, flush=True)
            code = 1
        for f in ("ready", "conninfo"):
            (state / f).unlink(missing_ok=True)
    return code


def main(argv=None):
    ap = argparse.ArgumentParser(description="extranet native cluster")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run a cluster until SIGTERM (scripts/dev up)")
    sp.add_argument("--state-dir", default=str(REPO / ".dev"))
    sp.add_argument("--daemon", action="store_true")
    sp = sub.add_parser("pg-only", help="run PostgreSQL alone until SIGTERM (tests/run)")
    sp.add_argument("--state-dir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.state_dir, args.daemon)
    if args.cmd == "pg-only":
        return pg_only(args.state_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
