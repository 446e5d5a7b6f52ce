"""Fixtures of the black-box API tests: one real cluster for the whole session (PostgreSQL,
Redis, SMTP sink, broker, every built service, gateway; tests/lib/cluster.py), its URL, and a
mailbox over the SMTP sink. Tests that need their own broker (test_broker.py) use build_dir
and start their own processes; the cluster only starts when a test asks for it."""

import email
import email.policy
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import cluster as cluster_lib  # noqa: E402  (tests/lib, put on the path just above)

ADMIN_EMAIL = "admin@extranet.test"
ADMIN_PASSWORD = "Admin-Test-Passw0rd-1"
# The one origin the test cluster's gateway allows for CORS (EXTRANET_CORS_ORIGINS).
CORS_ORIGIN = "https://portal.example.test"


@pytest.fixture(scope="session")
def build_dir():
    """The build tree under test: build/, or $EXTRANET_BUILD_DIR (build-san for sanitizers)."""
    return cluster_lib.build_dir()


@pytest.fixture(scope="session")
def cluster(request):
    """The running cluster (a tests/lib/cluster.py Cluster). Stopped at the end of the
    session; a sanitizer report or crash in any log then fails the run. Its logs are kept
    (path printed) when a test failed or EXTRANET_KEEP_CLUSTER is set."""
    c = cluster_lib.Cluster(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            extra_env={"EXTRANET_CORS_ORIGINS": CORS_ORIGIN})
    c.start()
    yield c
    keep = request.session.testsfailed > 0 or bool(os.environ.get("EXTRANET_KEEP_CLUSTER"))
    c.stop(remove=not keep)
    if keep:
        sys.stderr.write("\ncluster logs kept in %s\n" % c.log_dir)


@pytest.fixture(scope="session")
def base_url(cluster):
    """The gateway's URL, e.g. http://127.0.0.1:23456 (no trailing slash)."""
    if not cluster.gateway_bin():
        pytest.skip("no gateway built in %s" % cluster.build)
    return cluster.base_url


@pytest.fixture(scope="session")
def api_url(base_url):
    return base_url + "/api/v1"


@pytest.fixture(scope="session")
def admin_credentials():
    return {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}


@pytest.fixture(scope="session")
def cors_origin():
    return CORS_ORIGIN


@pytest.fixture(scope="session")
def require_service(cluster):
    """require_service("identity") skips the calling test when that service is not built."""
    def need(name):
        if name not in cluster.services:
            pytest.skip("service %s not built in %s" % (name, cluster.build))
    return need


class Mailbox:
    """Messages the SMTP sink received (one .eml file each, oldest first by name).
    wait() hands out each message once, so consecutive waits return consecutive mails."""

    URL_RE = re.compile(r"https?://[^\s<>\"')\]]+")

    def __init__(self, mail_dir):
        self.dir = Path(mail_dir)
        self.taken = set()

    def _files(self):
        return sorted(p for p in self.dir.glob("*.eml"))

    @staticmethod
    def parse(path):
        msg = email.message_from_bytes(Path(path).read_bytes(), policy=email.policy.default)
        msg.path = str(path)
        return msg

    @staticmethod
    def recipients(msg):
        return ",".join([msg.get("X-Sink-Rcpt-To", ""), msg.get("To", "")]).lower()

    def all(self, to=None):
        """Every message so far (to: only those for this address)."""
        msgs = [self.parse(p) for p in self._files()]
        return [m for m in msgs if to is None or to.lower() in self.recipients(m)]

    def wait(self, to=None, subject=None, timeout=15.0, predicate=None):
        """The next message not handed out before, for address `to`, whose subject contains
        `subject`, and that passes predicate(msg); polls until `timeout` seconds pass, then
        fails the test."""
        end = time.monotonic() + timeout
        while True:
            for p in self._files():
                if p.name in self.taken:
                    continue
                m = self.parse(p)
                if to is not None and to.lower() not in self.recipients(m):
                    continue
                if subject is not None and subject not in (m.get("Subject") or ""):
                    continue
                if predicate is not None and not predicate(m):
                    continue
                self.taken.add(p.name)
                return m
            if time.monotonic() > end:
                pytest.fail("no mail to=%r subject=%r within %.0f s (have %d in %s)"
                            % (to, subject, timeout, len(self._files()), self.dir))
            time.sleep(0.05)

    def none_for(self, to, within=1.0):
        """Asserts that no message for `to` arrives within `within` seconds."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            assert not [m for m in self.all(to) if Path(m.path).name not in self.taken], \
                "unexpected mail to %s" % to
            time.sleep(0.05)

    @staticmethod
    def text(msg):
        """The message's text (the text/plain part, else the HTML part, else the body)."""
        part = msg.get_body(preferencelist=("plain", "html"))
        return (part or msg).get_content()

    @classmethod
    def links(cls, msg):
        """Every http(s) URL in the message's text, in order."""
        return cls.URL_RE.findall(cls.text(msg))


@pytest.fixture(scope="session")
def mail(cluster):
    """The SMTP sink's mailbox: mail.wait(to=..., subject=...), mail.text(m), mail.links(m)."""
    return Mailbox(cluster.mail_dir)
