"""Invitation expiry as an expiry timer (services/expiry/README.md, kind "invitation.expire"),
black-box on the real cluster: membership registers the timer when an invitation is created
(due at its expires_at), the timer fires membership.ExpireInvitation, which marks the invitation
expired once, idempotently, and only when it is past expires_at; only SYSTEM may call it."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from test_expiry_broker import Rpc, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ipb(tmp_path_factory):
    out = tmp_path_factory.mktemp("invitation_pb")
    subprocess.run(["protoc", "--proto_path", str(REPO / "proto"), "--python_out", str(out),
                    "envelope.proto", "expiry.proto", "membership.proto"], check=True)
    sys.path.insert(0, str(out))
    import envelope_pb2
    import expiry_pb2
    import membership_pb2

    class PB:
        envelope, expiry, membership = envelope_pb2, expiry_pb2, membership_pb2
    return PB


@pytest.fixture(scope="module")
def rpc(cluster, ipb, require_service):
    for s in ("expiry", "membership", "audit"):
        require_service(s)
    r = Rpc(ipb, cluster.urls["broker"])
    yield r
    r.close()


class Http:
    def __init__(self, url, admin):
        self.url = url
        self.s = requests.Session()
        r = self.s.post(url + "/auth/login", json=admin, timeout=20)
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]

    def call(self, method, path, body=None, params=None):
        return self.s.request(method, self.url + path, json=body, params=params, timeout=30,
                              headers={"Authorization": "Bearer " + self.token})


@pytest.fixture(scope="module")
def http(api_url, admin_credentials, rpc):
    return Http(api_url, admin_credentials)


def invite(http, gid):
    r = http.call("POST", "/groups/%s/invitations" % gid,
                  {"email": "inv-%s@expiry.test" % uuid.uuid4().hex[:10]})
    assert r.status_code == 201, r.text
    inv = r.json()
    assert inv["state"] == "pending"
    return inv


def inv_state(cluster, iid):
    return cluster.psql("SELECT state FROM membership.invitations WHERE id = :'i'", i=iid)[0][0]


def expire_call(rpc, gid, iid, actor="SYSTEM"):
    m = rpc.pb.membership.InvitationIdRequest(gid=gid, id=iid)
    return rpc.call("membership.ExpireInvitation", m, actor)[0]


def test_invitation_timer_is_registered_and_expires_it_once(cluster, rpc, http):
    r = http.call("POST", "/groups", {"name": "Invited", "kind": "extranet"})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    inv, later = invite(http, gid), invite(http, gid)
    subject = "%s:%s" % (gid, inv["id"])
    # Registered by membership at creation, due exactly at the invitation's expires_at.
    rows = cluster.psql(
        "SELECT t.state, abs(extract(epoch FROM t.due_at - i.expires_at)) < 1 "
        "FROM expiry.timers t, membership.invitations i "
        "WHERE t.kind = 'invitation.expire' AND t.subject = :'s' AND i.id = :'i'",
        s=subject, i=inv["id"])
    assert rows == [["pending", "t"]], rows

    # Not yet expired (a timer due a fraction early): nothing changes, and the answer is one
    # expiry retries (UNAVAILABLE), not OK, which would end the timer with the work undone.
    assert expire_call(rpc, gid, inv["id"]) == "UNAVAILABLE"
    assert inv_state(cluster, inv["id"]) == "pending"

    # Past expires_at: move the invitation and its timer into the past; the timer fires.
    cluster.psql("UPDATE membership.invitations SET expires_at = now() - interval '1 second' "
                 "WHERE id = :'i'", i=inv["id"])
    m = rpc.pb.expiry.ScheduleRequest()
    m.timer.kind, m.timer.subject = "invitation.expire", subject
    m.timer.due_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    assert rpc.call("expiry.Schedule", m)[0] == "OK"
    wait_for(lambda: inv_state(cluster, inv["id"]) == "expired", 20, "the invitation expired")
    wait_for(lambda: cluster.psql("SELECT state FROM expiry.timers WHERE kind = "
                                  "'invitation.expire' AND subject = :'s'", s=subject)
             == [["done"]], 20, "the timer done")

    # Idempotent: again changes nothing; exactly one invitation.expired audit record.
    assert expire_call(rpc, gid, inv["id"]) == "OK"
    assert inv_state(cluster, inv["id"]) == "expired"
    listed = {i["id"]: i["state"] for i in
              http.call("GET", "/groups/%s/invitations" % gid).json()["invitations"]}
    assert listed[inv["id"]] == "expired" and listed[later["id"]] == "pending"

    def audited():
        r = http.call("GET", "/admin/audit", params={"action": "invitation.expired",
                                                     "target_id": inv["id"]})
        assert r.status_code == 200, r.text
        return r.json()["records"]
    recs = wait_for(audited, 20, "the invitation.expired record")
    time.sleep(1.0)
    recs = audited()
    assert len(recs) == 1 and recs[0]["group_id"] == gid and recs[0]["actor_kind"] == "system"

    # The other invitation is untouched, and its own timer still pending.
    assert inv_state(cluster, later["id"]) == "pending"
    assert cluster.psql("SELECT state FROM expiry.timers WHERE kind = 'invitation.expire' "
                        "AND subject = :'s'", s="%s:%s" % (gid, later["id"])) == [["pending"]]

    # Only SYSTEM; unknown invitation or the wrong group: NOT_FOUND (the timer ends).
    for actor in ("ADMIN", "EMPLOYEE", "EXTRANET"):
        assert expire_call(rpc, gid, later["id"], actor) == "FORBIDDEN"
    assert expire_call(rpc, gid, later["id"], "ANONYMOUS") == "UNAUTHENTICATED"
    assert expire_call(rpc, gid, str(uuid.uuid4())) == "NOT_FOUND"
    assert expire_call(rpc, str(uuid.uuid4()), later["id"]) == "NOT_FOUND"
    assert expire_call(rpc, "x", later["id"]) == "NOT_FOUND"
    assert inv_state(cluster, later["id"]) == "pending"
