"""`assistant dev`: the embedded services, a worker and the API, in one command.

Children start in order (database, Temporal, model, worker, API) and stop in reverse on
Ctrl-C. The service addresses are published in the data dir while it runs, so other
commands there (`assistant users create`) reach the same embedded database.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.config import Settings, read_dev_state
from devstack import (
    EmbeddedPostgres,
    EmbeddedTemporal,
    ensure_port_free,
    free_port,
    spawn,
    stop_process,
    wait_for_port,
)

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
        # The person running `dev` owns the machine: their user may manage others.
        user = await users.find_user_by_name(pool, name="dev") or await users.create_user(
            pool, name="dev", role="admin"
        )
        key = await users.create_key(pool, user_id=user.id, name="dev login")
        key_file.write_text(key.secret)
        key_file.chmod(0o600)
        return key.secret
    finally:
        await pool.close()


class _DevRun:
    """The processes of one `assistant dev`, started in order and stopped in reverse."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.env = dict(os.environ, ASSISTANT_ENV="development", ASSISTANT_DATA_DIR=str(data_dir))
        # Addresses may come from `.env` (read by Settings) rather than the environment.
        for name, value in (
            ("DATABASE_URL", settings.database_url),
            ("TEMPORAL_ADDRESS", settings.temporal_address),
            ("OPENAI_BASE_URL", settings.openai_base_url),
        ):
            if value:
                self.env[name] = value
        self.offline = not settings.openai_base_url and not settings.openai_api_key
        self.mail_dir: Path | None = None  # where the mail catcher keeps email, when it runs
        self._stops: list[Callable[[], None]] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start_services(self) -> None:
        """PostgreSQL, Temporal and the built-in model, unless configured elsewhere."""
        if not self.settings.database_url:
            pg = EmbeddedPostgres(self.data_dir)
            self.env["DATABASE_URL"] = pg.start()
            self._stops.append(pg.stop)
            assert pg.proc is not None
            self.children["postgres"] = pg.proc
        if not self.settings.temporal_address:
            temporal = EmbeddedTemporal(self.data_dir)
            self.env["TEMPORAL_ADDRESS"] = temporal.start()
            self._stops.append(temporal.stop)
            assert temporal.proc is not None
            self.children["temporal"] = temporal.proc
        if not self.settings.smtp_host:
            self._start_mail_catcher()
        if self.offline:
            port = free_port()
            log = self.data_dir / "fake-model.log"
            model = self._child("model", ["fake-model", "--port", str(port)], log=log)
            wait_for_port(port, model, timeout=30, what="built-in model", log=log)
            self.env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
            self.env["OPENAI_API_KEY"] = "offline"

    def _start_mail_catcher(self) -> None:
        """With no SMTP server configured, email goes to files in the data dir, so that an
        approved email in a demo lands somewhere visible (and never leaves the machine)."""
        if importlib.util.find_spec("aiosmtpd") is None:
            return  # installed without the dev extras: send_email stays unavailable
        port = free_port()
        self.mail_dir = self.data_dir / "mail"
        log = self.data_dir / "mail.log"
        catcher = spawn(
            [sys.executable, "-m", "devmail", "--port", str(port), "--dir", str(self.mail_dir)],
            env=self.env,
            log_path=log,
        )
        self._stops.append(lambda: stop_process(catcher))
        self.children["mail catcher"] = catcher
        wait_for_port(port, catcher, timeout=30, what="the mail catcher", log=log)
        self.env.update(
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(port),
            SMTP_TLS="none",
            SMTP_FROM=self.settings.smtp_from or "Assistant <assistant@localhost>",
        )

    def publish_state(self, host: str, port: int) -> None:
        """Let other commands in this data dir (`users create`, …) find the services."""
        state = self.settings.dev_state_path()
        state.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "database_url": self.env["DATABASE_URL"],
                    "temporal_address": self.env["TEMPORAL_ADDRESS"],
                    "openai_base_url": self.env["OPENAI_BASE_URL"] if self.offline else None,
                    "api_url": _client_url(host, port),
                }
            )
        )
        self._stops.append(lambda: state.unlink(missing_ok=True))

    def start_processes(self, host: str, port: int) -> None:
        """A worker and the API; their logs go to this terminal."""
        ensure_port_free(host, port)
        # The API's /metrics appends the worker's, so one scrape covers the stack (development only).
        metrics_port = free_port()
        self.env["WORKER_METRICS_URL"] = f"http://127.0.0.1:{metrics_port}/metrics"
        self._child("worker", ["worker", "--metrics-port", str(metrics_port)])
        api = self._child("api", ["api", "--host", host, "--port", str(port)])
        wait_for_port(port, api, timeout=60, what="the API")

    def first_exited(self) -> str | None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()

    def _child(self, name: str, args: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
        proc = spawn([sys.executable, "-m", "cli", *args], env=self.env, log_path=log)
        self._stops.append(lambda: stop_process(proc))
        self.children[name] = proc
        return proc


def run_dev(*, host: str, port: int) -> int:
    """`assistant dev`: embedded services, a worker and the API, until Ctrl-C."""
    import asyncio

    from core.logging import configure_logging

    settings = Settings(assistant_env="development")
    configure_logging(settings.log_level, settings.effective_log_format)
    data_dir = settings.assistant_data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum  # stop in order from the main loop, not in the handler

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    running = read_dev_state(settings.dev_state_path())
    if running is not None:
        print(f"assistant dev: already running in {data_dir} (pid {running['pid']})", file=sys.stderr)
        return 1
    run = _DevRun(settings, data_dir)
    try:
        ensure_port_free(host, port)
        run.start_services()
        secret = asyncio.run(_prepare_database(run.env["DATABASE_URL"], data_dir))
        run.publish_state(host, port)
        run.start_processes(host, port)
        if run.offline:
            print("No model configured (OPENAI_BASE_URL/OPENAI_API_KEY): using the built-in offline model.")
        if run.mail_dir is not None:
            print(f"No SMTP server configured (SMTP_HOST): approved email is kept in {run.mail_dir}.")
        print(f"Assistant running. Open http://{host}:{port}/#key={secret}")
        print(f"API: http://{host}:{port}/api/v1  (Authorization: Bearer {secret})")
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping["signal"]:
            exited = run.first_exited()
            if exited:
                print(f"assistant dev: {exited}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as err:
        print(f"assistant dev: {err}", file=sys.stderr)
        return 1
    finally:
        run.stop()


def _client_url(host: str, port: int) -> str:
    """Where a client on this machine reaches the API: a wildcard bind is reached on loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
