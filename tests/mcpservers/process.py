"""The HTTP test server as a child process of the tests, killed and restarted on its port."""

import subprocess
import sys
from pathlib import Path

from devstack import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class HttpServerProcess:
    """`python -m tests.mcpservers.http_server` on a fixed loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, variant: str = "v1", token: str | None = None) -> "HttpServerProcess":
        options = ["--port", str(self.port), "--variant", variant, *(["--token", token] if token else [])]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.mcpservers.http_server", *options],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, self._process, timeout=20, what="the test MCP server")
        except RuntimeError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """Stop it the hard way, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
