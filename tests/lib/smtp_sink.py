#!/usr/bin/python3
"""A real SMTP server that accepts every message and keeps it as one file per message
(<mail-dir>/<epoch-ms>-<seq>.eml), so tests and developers can read invitations and notices.
Run by tests/lib/cluster.py; stdlib + python3-aiosmtpd only."""

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time

from aiosmtpd.smtp import SMTP


class MaildirHandler:
    """Writes each message atomically (temp file, then rename), so a reader polling the
    directory never sees half a message. The SMTP envelope is kept in X-Sink-* headers
    in front of the message as received."""

    def __init__(self, mail_dir):
        self.mail_dir = mail_dir
        self.seq = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        name = "%d-%06d.eml" % (int(time.time() * 1000), next(self.seq))
        head = ("X-Sink-Mail-From: %s\r\nX-Sink-Rcpt-To: %s\r\n"
                % (envelope.mail_from, ", ".join(envelope.rcpt_tos))).encode()
        tmp = os.path.join(self.mail_dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(head + content)
        os.rename(tmp, os.path.join(self.mail_dir, name))
        print("stored %s from=%s to=%s bytes=%d" % (name, envelope.mail_from,
              ",".join(envelope.rcpt_tos), len(content)), flush=True)
        return "250 Message accepted for delivery"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mail-dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.mail_dir, exist_ok=True)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = MaildirHandler(args.mail_dir)
    # enable_SMTPUTF8: libcurl may announce it for UTF-8 addresses; accept like a real MTA.
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="extranet-sink", enable_SMTPUTF8=True,
                     data_size_limit=10 * 1024 * 1024),
        host=args.host, port=args.port))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print("smtp sink listening on %s:%d, mail in %s" % (args.host, args.port, args.mail_dir),
          flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
