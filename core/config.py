"""Configuration from the environment (and `.env`), built once per process.

Every command reads the same variables (API.md, "Configuration"). When `DATABASE_URL`
or `TEMPORAL_ADDRESS` is unset, the addresses of the services that a running
`assistant dev` started in the same data dir are used, so `assistant users create`
beside `assistant dev` reaches the embedded database.
"""

import json
import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, computed_field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}


def parse_duration(value: Any) -> timedelta:
    """`10s`, `24h`, `500ms`, `1.5m` or a number of seconds → timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 10s, 5m, 24h)")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def parse_size(value: Any) -> int:
    """`1MiB`, `512kb` or a number of bytes → bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 1MiB, 512KiB)")
    return int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]


def parse_rate_limit(value: Any) -> str:
    """`600/minute`, `30 per minute`, `5/10 seconds` (the `limits` notation); `0`, `off` or
    empty → `` (no limit)."""
    text = "" if value is None else str(value).strip()
    if text.lower() in ("", "0", "off", "none"):
        return ""
    from limits import parse

    try:
        parse(text)
    except ValueError:
        raise ValueError(f"not a rate limit: {value!r} (use e.g. 600/minute, 5 per 10 seconds)") from None
    return text


RateLimit = Annotated[str, BeforeValidator(parse_rate_limit)]


class Settings(BaseSettings):
    """Every setting of every process; names are the environment variables of API.md."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    assistant_model: str = "gpt-4o-mini"
    model_timeout: Duration = timedelta(seconds=120)

    database_url: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_task_queue: str = "assistant"

    assistant_data_dir: Path = Path("./.assistant")
    assistant_env: Literal["development", "production"] = "production"

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None
    # Optional tracing and error tracking (core/telemetry.py, the `observability` extra): spans
    # go to this OTLP/HTTP collector (the other OTEL_* variables apply), errors to this DSN.
    otel_exporter_otlp_endpoint: str | None = None
    sentry_dsn: SecretStr | None = None

    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"
    # A CA bundle to trust for the SMTP server's certificate (a private CA); none = system CAs.
    smtp_ca_file: Path | None = None
    smtp_timeout: Duration = timedelta(seconds=30)

    # search_emails: the mailbox it reads. `ssl` is IMAPS (port 993), `starttls` upgrades
    # a plain connection (port 143), `none` is for loopback test servers only.
    imap_host: str | None = None
    imap_port: int | None = None
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_tls: Literal["ssl", "starttls", "none"] = "ssl"
    imap_ca_file: Path | None = None
    imap_timeout: Duration = timedelta(seconds=30)

    # query_database: a DSN whose role should be read-only (docs/TOOLS.md); the tool also
    # runs every statement in a READ ONLY transaction under these timeouts.
    query_database_url: SecretStr | None = None
    query_timeout: Duration = timedelta(seconds=10)
    query_max_bytes: ByteSize = 64 * 1024

    # web_search: `searxng` needs SEARCH_URL; `serper` defaults to its public endpoint.
    search_backend: Literal["searxng", "serper"] | None = None
    search_url: str | None = None
    search_api_key: SecretStr | None = None
    search_timeout: Duration = timedelta(seconds=15)

    # Tool servers (MCP over stdio or streamable HTTP, the simple HTTP tool protocol): a JSON
    # file in the `mcpServers` shape other MCP clients use (docs/TOOLS.md, "Tool servers").
    mcp_config: Path | None = None
    # The bearer key of `assistant tool-server` over HTTP; generated and shown at start if unset.
    tool_server_key: SecretStr | None = None

    # fetch_page: non-public addresses are refused unless this is on (intranets, tests).
    fetch_allow_private_networks: bool = False
    fetch_timeout: Duration = timedelta(seconds=20)
    fetch_max_bytes: ByteSize = 5 * 2**20

    allowed_origins: Annotated[list[str], NoDecode, BeforeValidator(_split_csv)] = Field(default_factory=list)
    max_request_bytes: ByteSize = 1 << 20
    max_message_chars: int = 100_000
    max_steps: int = 10
    approval_timeout: Duration = timedelta(hours=24)
    # Token events are batched: the first at once, then at most one row per interval.
    token_batch_interval: Duration = timedelta(milliseconds=30)
    sse_ping_interval: Duration = timedelta(seconds=15)
    # An event stream is closed after this long (with a `retry:` hint); clients resume by
    # Last-Event-ID, so nothing is lost and no connection is held for ever.
    sse_max_duration: Duration = timedelta(hours=1)
    # On SIGTERM (graceful shutdown): how long an API process waits for requests in flight
    # (its event streams are closed at once, with a `retry:` hint), and how long a worker lets
    # running activities finish before cancelling them (Temporal then retries them elsewhere).
    api_shutdown_grace: Duration = timedelta(seconds=10)
    worker_shutdown_grace: Duration = timedelta(seconds=30)
    # The request line and headers together (431 above it); enforced by the server (api/server.py).
    max_header_bytes: ByteSize = 64 * 1024
    # Outside development, `api` and `worker` refuse unsafe settings (core/safety.py) unless this is on.
    allow_insecure: bool = False

    # Rate limits per API key (api/ratelimit.py): requests to /api/v1, and turns started. The
    # counters live in this process (`memory`) or in PostgreSQL, shared by every API process.
    # Defaults that stop a runaway client, not a busy one (parallel conversations, polling).
    rate_limit_requests: RateLimit = "1200/minute"
    rate_limit_turns: RateLimit = "120/minute"
    rate_limit_storage: Literal["memory", "postgres"] = "memory"
    # Concurrency and quota limits (0 = none): turns active at once per user (exact, decided
    # in PostgreSQL), open event streams per key (per API process), tokens per user per UTC day.
    max_active_turns_per_user: int = Field(default=20, ge=0)
    max_streams_per_key: int = Field(default=50, ge=0)
    daily_token_budget: int = Field(default=0, ge=0)

    # Prometheus (api/metrics.py): a bearer token `/metrics` requires when set; and, in
    # development only, the worker's metrics URL whose exposition `/metrics` appends (set by `dev`).
    metrics_token: SecretStr | None = None
    worker_metrics_url: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def is_development(self) -> bool:
        return self.assistant_env == "development"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("console" if self.is_development else "json")

    def dev_state_path(self) -> Path:
        return self.assistant_data_dir / "dev-services.json"

    def resolved(self) -> "Settings":
        """These settings with unset service addresses filled in from a running `assistant dev`."""
        if self.database_url and self.temporal_address and self.openai_base_url:
            return self
        state = read_dev_state(self.dev_state_path())
        if not state:
            return self
        updates: dict[str, Any] = {}
        if not self.database_url:
            updates["database_url"] = state.get("database_url")
        if not self.temporal_address:
            updates["temporal_address"] = state.get("temporal_address")
        if not self.openai_base_url and state.get("openai_base_url"):
            updates["openai_base_url"] = state["openai_base_url"]
            updates["openai_api_key"] = self.openai_api_key or "offline"
        return self.model_copy(update=updates)

    def require_database_url(self) -> str:
        if not self.database_url:
            from core.errors import ConfigurationError

            raise ConfigurationError(
                "DATABASE_URL is not set and no `assistant dev` is running in "
                f"{self.assistant_data_dir}; set DATABASE_URL or start `assistant dev`"
            )
        return self.database_url

    def require_temporal_address(self) -> str:
        if not self.temporal_address:
            from core.errors import ConfigurationError

            raise ConfigurationError(
                "TEMPORAL_ADDRESS is not set and no `assistant dev` is running in "
                f"{self.assistant_data_dir}; set TEMPORAL_ADDRESS or start `assistant dev`"
            )
        return self.temporal_address


def read_dev_state(path: Path) -> dict[str, Any] | None:
    """The service addresses written by a live `assistant dev`, or None if it is not running."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _process_alive(pid):
        return None
    return state


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@lru_cache
def get_settings() -> Settings:
    """The process's settings, resolved once."""
    return Settings().resolved()
