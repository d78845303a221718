"""The mail catcher of `assistant dev`: an SMTP server on loopback that keeps every message
it receives as an `.eml` file instead of delivering it, so that approving an email in a
demo sends it somewhere visible and nowhere else. Run as `python -m devmail --port P --dir D`."""

import argparse
import email
import email.policy
import signal
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class KeepMessages:
    """aiosmtpd handler: each message becomes `<dir>/<time>-<n>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._count += 1
            path = self.directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._count}.eml"
        path.write_bytes(envelope.original_content)
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        print(f"caught mail to {', '.join(envelope.rcpt_tos)}: {message['Subject']!s} ({path})", flush=True)
        return "250 2.0.0 kept, not delivered"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(KeepMessages(args.dir), hostname="127.0.0.1", port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller.start()
    try:
        stop.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
