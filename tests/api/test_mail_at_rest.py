"""Queued mail is sealed at rest (identity's mail_outbox, EXTRANET_DATA_KEY): an invitation
mail carries the invitation's only plaintext copy of its token, and while SMTP is down that
mail waits in PostgreSQL. The row must not reveal the token; once SMTP is back the mail goes
out intact and the token in it works (R13: the token is stored only as its hash)."""

import re
import uuid

import requests

from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Mailbox

TOKEN_RE = re.compile(r"/invitations/([A-Za-z0-9_-]{43})\b")


def _call(api_url, method, path, token=None, body=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return requests.request(method, api_url + path, json=body, headers=headers, timeout=30)


def test_r13_queued_invitation_mail_does_not_hold_the_token_in_clear(cluster, api_url):
    r = _call(api_url, "POST", "/auth/login", body={"email": ADMIN_EMAIL,
                                                    "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    admin = r.json()["token"]
    r = _call(api_url, "POST", "/groups", admin, {"name": "Sealed mail", "kind": "extranet"})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    email = "sealed-%s@mail.test" % uuid.uuid4().hex[:10]
    mailbox = Mailbox(cluster.mail_dir)

    cluster.stop_service("smtp")
    try:
        r = _call(api_url, "POST", "/groups/%s/invitations" % gid, admin, {"email": email})
        assert r.status_code == 201, r.text
        rows = cluster.psql("SELECT body FROM identity.mail_outbox WHERE rcpt = :'rcpt'",
                            rcpt=email)
        assert len(rows) == 1, rows
        stored = rows[0][0]
        assert stored.startswith("s1:"), stored[:40]
        assert "/invitations/" not in stored and "Invitation" not in stored
    finally:
        cluster.start_service("smtp")

    m = mailbox.wait(to=email, subject="Invitation", timeout=60)
    tokens = TOKEN_RE.findall(Mailbox.text(m))
    assert len(tokens) == 1, Mailbox.text(m)
    assert tokens[0] not in stored
    assert _call(api_url, "GET", "/invitations/%s" % tokens[0]).status_code == 200
    assert cluster.psql("SELECT count(*) FROM identity.mail_outbox WHERE rcpt = :'rcpt'",
                        rcpt=email) == [["0"]]
