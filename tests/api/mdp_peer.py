"""An independent Majordomo peer: client (MDP/Client) and worker (MDP/Worker) written in Python
with python3-zmq straight from the ZeroMQ RFC 7/MDP and 8/MMI texts. It shares no code with the
C runtime on purpose: it is the "third-party peer" our broker must serve unchanged."""

import threading
import time

import zmq

MDPC = b"MDPC01"  # RFC 7: MDP/Client v0.1
MDPW = b"MDPW01"  # RFC 7: MDP/Worker v0.1
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (bytes([c]) for c in range(1, 6))
COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY",
                 HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT"}

# The broker's agreed heartbeat (RFC 7 "Known weaknesses": both sides must use similar values).
HEARTBEAT_S = 1.0
LIVENESS = 5


class ProtocolError(Exception):
    """The broker sent something RFC 7 does not allow."""


def _dealer(ctx, endpoint):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class Client:
    """An asynchronous MDP client on a DEALER: it must write the empty frame 0 itself."""

    def __init__(self, ctx, endpoint):
        self.sock = _dealer(ctx, endpoint)

    def send(self, service, *body):
        if isinstance(service, str):
            service = service.encode()
        self.sock.send_multipart([b"", MDPC, service, *body])

    def recv(self, timeout=2.0):
        """Returns (service, [body frames]) or None on timeout; checks the REPLY framing."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        if len(frames) < 4 or frames[0] != b"" or frames[1] != MDPC:
            raise ProtocolError(f"bad client reply framing: {frames!r}")
        return frames[2], frames[3:]

    def request(self, service, *body, timeout=2.0):
        self.send(service, *body)
        got = self.recv(timeout)
        if got is None:
            raise TimeoutError(f"no reply from {service!r} within {timeout}s")
        return got

    def mmi_service(self, name, timeout=2.0):
        """RFC 8: asks whether `name` has a worker; returns the code as text ("200"/"404")."""
        if isinstance(name, str):
            name = name.encode()
        service, body = self.request(b"mmi.service", name, timeout=timeout)
        if service != b"mmi.service":
            raise ProtocolError(f"MMI reply for {service!r}")
        return body[0].decode()

    def close(self):
        self.sock.close()


class Worker:
    """A hand-driven MDP worker (the caller's thread owns it): every command is explicit, so tests
    can misbehave on purpose (stay silent, answer twice, disconnect early)."""

    def __init__(self, ctx, endpoint, service=None):
        self.sock = _dealer(ctx, endpoint)
        if service is not None:
            self.ready(service)

    def send_raw(self, frames):
        self.sock.send_multipart(frames)

    def ready(self, service):
        if isinstance(service, str):
            service = service.encode()
        self.send_raw([b"", MDPW, READY, service])

    def heartbeat(self):
        self.send_raw([b"", MDPW, HEARTBEAT])

    def disconnect(self):
        self.send_raw([b"", MDPW, DISCONNECT])

    def reply(self, client, *body):
        self.send_raw([b"", MDPW, REPLY, client, b"", *body])

    def recv(self, timeout=2.0):
        """Returns (command, rest) or None on timeout. For REQUEST, rest = (client, [body])."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        if len(frames) < 3 or frames[0] != b"" or frames[1] != MDPW:
            raise ProtocolError(f"bad worker framing: {frames!r}")
        cmd = frames[2]
        if cmd == REQUEST:
            if len(frames) < 6 or frames[4] != b"":
                raise ProtocolError(f"bad REQUEST: {frames!r}")
            return cmd, (frames[3], frames[5:])
        if cmd in (HEARTBEAT, DISCONNECT):
            if len(frames) != 3:
                raise ProtocolError(f"bad {COMMAND_NAMES[cmd]}: {frames!r}")
            return cmd, None
        raise ProtocolError(f"broker sent command {cmd!r} to a worker")

    def recv_request(self, timeout=2.0):
        """Waits for a REQUEST (heartbeats are skipped); returns (client, [body]) or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self.recv(left)
            if got is None:
                return None
            if got[0] == REQUEST:
                return got[1]
            if got[0] == DISCONNECT:
                raise ProtocolError("DISCONNECT while waiting for a request")

    def close(self):
        self.sock.close()


class EchoWorker(threading.Thread):
    """A well-behaved worker on its own thread: READY, answers each REQUEST with
    handler(body frames) -> reply frames, heartbeats every HEARTBEAT_S when it sent nothing else,
    and says DISCONNECT on stop(). `served` lists the bodies it answered."""

    def __init__(self, ctx, endpoint, service, handler=None, name=None):
        super().__init__(daemon=True, name=name or f"worker-{service}")
        self.ctx, self.endpoint, self.service = ctx, endpoint, service
        self.handler = handler or (lambda body: body)
        self.served = []
        self.commands = []          # every command received from the broker, by name
        self.disconnected = threading.Event()
        self.ready_sent = threading.Event()
        self._halt = threading.Event()
        self.error = None

    def run(self):
        w = Worker(self.ctx, self.endpoint)
        try:
            w.ready(self.service)
            self.ready_sent.set()
            last_sent = time.monotonic()
            while not self._halt.is_set():
                got = w.recv(0.05)
                if got is not None:
                    cmd, rest = got
                    self.commands.append(COMMAND_NAMES[cmd])
                    if cmd == REQUEST:
                        client, body = rest
                        out = self.handler(body)
                        self.served.append(body)
                        w.reply(client, *out)
                        last_sent = time.monotonic()
                    elif cmd == DISCONNECT:
                        self.disconnected.set()
                        return
                if time.monotonic() - last_sent >= HEARTBEAT_S:
                    w.heartbeat()
                    last_sent = time.monotonic()
            w.disconnect()
        except Exception as e:  # surfaced by stop()
            self.error = e
        finally:
            w.close()

    def stop(self):
        self._halt.set()
        self.join(5)
        if self.error:
            raise self.error
