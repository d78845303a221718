"""Readiness checks, shared by `/readyz` and `assistant doctor` (API.md, "/readyz").

Six checks run concurrently, each under its own timeout: `database` and `temporal` are
required (a failure makes the whole report `failed`, a 503), the others only make it
`degraded`. Each result has a `message` safe to show without a key (no addresses, no
secrets, no error text from a driver) and a `detail` for the command line, which may say more.
"""

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from core.config import Settings

Status = Literal["ok", "degraded", "failed"]

REQUIRED = ("database", "temporal")
CHECK_TIMEOUT = 3.0
# Below these the disk or the memory is reported degraded.
MIN_FREE_DISK_BYTES = 2**30
MIN_FREE_DISK_RATIO = 0.05
MIN_AVAILABLE_MEMORY_RATIO = 0.05


@dataclass
class CheckResult:
    status: Status
    message: str
    # For the command line only: addresses, paths, the error's own text.
    detail: str | None = None
    latency_ms: float = 0.0

    def public(self) -> dict[str, Any]:
        return {"status": self.status, "latency_ms": self.latency_ms, "message": self.message}


@dataclass
class Report:
    checks: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        if any(c.status == "failed" for c in self.checks.values()):
            return "failed"
        if any(c.status != "ok" for c in self.checks.values()):
            return "degraded"
        return "ok"

    def public(self) -> dict[str, Any]:
        return {"status": self.status, "checks": {name: c.public() for name, c in self.checks.items()}}


class Degraded(Exception):
    """Raised by a check that works but finds a problem worth reporting."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


Check = Callable[[], Awaitable[CheckResult]]


async def _timed(name: str, check: Check, limit: float) -> CheckResult:
    bad: Status = "failed" if name in REQUIRED else "degraded"
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(check(), timeout=limit)
    except Degraded as problem:
        result = CheckResult(bad, problem.message, problem.detail)
    except TimeoutError:
        result = CheckResult(bad, f"no answer within {limit:g}s", f"no answer within {limit:g}s")
    except Exception as err:  # a failed check is reported, never raised
        # Only the error's type in the message: /readyz answers without a key.
        result = CheckResult(bad, f"unreachable ({type(err).__name__})", f"{type(err).__name__}: {err}")
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


async def run_checks(checks: dict[str, Check], *, per_check: float = CHECK_TIMEOUT) -> Report:
    """Run every check concurrently; the report keeps the order given."""
    results = await asyncio.gather(*(_timed(name, check, per_check) for name, check in checks.items()))
    return Report(dict(zip(checks, results, strict=True)))


# The checks. Each returns an ok result or raises (Degraded, or any error).


def database_check(fetchval: Callable[[str], Awaitable[Any]]) -> Check:
    async def check() -> CheckResult:
        await fetchval("SELECT 1")
        return CheckResult("ok", "PostgreSQL answers")

    return check


def temporal_check(get_client: Callable[[], Awaitable[Any]]) -> Check:
    async def check() -> CheckResult:
        client = await get_client()
        if client is None:
            raise Degraded("cannot connect to Temporal", "the Temporal client could not connect")
        await client.service_client.check_health(timeout=timedelta(seconds=2))
        return CheckResult("ok", "Temporal answers")

    return check


def without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unparsable URL)"
    return url


def model_configured(settings: Settings) -> bool:
    return bool(settings.openai_base_url or settings.openai_api_key)


def model_check(settings: Settings, *, timeout: float = 2.0) -> Check:
    """GET {OPENAI_BASE_URL}/models with the key: reachable, key accepted, model offered."""

    async def check() -> CheckResult:
        if not model_configured(settings):
            raise Degraded("no model configured", "set OPENAI_BASE_URL and/or OPENAI_API_KEY")
        url = (settings.openai_base_url or "https://api.openai.com/v1").rstrip("/")
        base = without_credentials(url)  # what details may show
        headers = {"Authorization": f"Bearer {settings.openai_api_key}"} if settings.openai_api_key else {}
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                answer = await client.get(f"{url}/models", headers=headers)
        except httpx.HTTPError as err:
            raise Degraded(
                f"model endpoint unreachable ({type(err).__name__})", f"{base}: {type(err).__name__}: {err}"
            ) from None
        if answer.status_code in (401, 403):
            raise Degraded(
                f"model endpoint refused the API key ({answer.status_code})",
                f"{base}/models answered {answer.status_code}: check OPENAI_API_KEY",
            )
        if answer.status_code == 404:  # some compatible servers list no models
            return CheckResult("ok", "model endpoint answers", f"{base} answers (it lists no models)")
        if answer.status_code >= 400:
            raise Degraded(
                f"model endpoint answered {answer.status_code}",
                f"{base}/models answered {answer.status_code}",
            )
        try:
            offered = {str(m.get("id")) for m in answer.json().get("data", []) if isinstance(m, dict)}
        except (ValueError, AttributeError):
            offered = set()
        if offered and settings.assistant_model not in offered:
            raise Degraded(
                f"model {settings.assistant_model!r} is not offered by the endpoint",
                f"{base} offers {', '.join(sorted(offered)[:10])}; check ASSISTANT_MODEL",
            )
        return CheckResult("ok", f"model {settings.assistant_model!r} available", f"{base} answers")

    return check


def mcp_servers_check(fetch: Callable[..., Awaitable[list[Any]]]) -> Check:
    """The remote tool servers that running workers publish in the catalog (store/catalog.py):
    a server is unhealthy when any of its tools is. Entries no worker refreshes are ignored."""
    from store.catalog import FRESH_FOR

    query = (
        "SELECT source, bool_and(healthy) AS healthy,"
        " string_agg(DISTINCT problem, '; ') FILTER (WHERE NOT healthy) AS problems"
        " FROM tool_catalog WHERE source <> 'builtin'"
        f" AND updated_at > now() - interval '{FRESH_FOR}' GROUP BY source ORDER BY source"
    )

    async def check() -> CheckResult:
        try:
            rows = await fetch(query)
        except Exception as err:
            said = err.message if isinstance(err, Degraded) else f"{type(err).__name__}: {err}"
            raise Degraded("unknown: the tool catalog cannot be read", said) from None
        if not rows:
            return CheckResult("ok", "no tool server configured")
        servers = {r["source"].partition(":")[2] or r["source"]: r for r in rows}
        unhealthy = [name for name, r in servers.items() if not r["healthy"]]
        if unhealthy:
            raise Degraded(
                f"unhealthy tool server(s): {', '.join(unhealthy)}",
                "; ".join(f"{name}: {servers[name]['problems'] or 'unhealthy'}" for name in unhealthy),
            )
        return CheckResult("ok", f"{len(servers)} tool server(s) healthy", ", ".join(servers))

    return check


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def disk_check(data_dir: Path) -> Check:
    """Free space where the data dir and temporary files live."""

    async def check() -> CheckResult:
        places = {_existing(data_dir), _existing(Path(tempfile.gettempdir()))}
        worst: tuple[float, int, Path] | None = None
        for place in places:
            usage = await asyncio.to_thread(shutil.disk_usage, place)
            ratio = usage.free / usage.total if usage.total else 1.0
            if worst is None or usage.free < worst[1]:
                worst = (ratio, usage.free, place)
        assert worst is not None
        ratio, free, place = worst
        message = f"{_gib(free)} free ({ratio:.0%})"
        if free < MIN_FREE_DISK_BYTES or ratio < MIN_FREE_DISK_RATIO:
            raise Degraded(f"low disk space: {message}", f"{place}: {message}")
        return CheckResult("ok", message, f"{', '.join(str(p) for p in sorted(places))}: {message}")

    return check


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None


def memory_figures() -> tuple[int, int] | None:
    """(available, total) bytes: /proc/meminfo, narrowed by a cgroup v2 limit if there is one."""
    try:
        info = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.split(":")[0] in ("MemTotal", "MemAvailable")
        }
        available, total = info["MemAvailable"], info["MemTotal"]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    limit = _read_int(Path("/sys/fs/cgroup/memory.max"))
    used = _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is not None and used is not None and limit < total:
        total, available = limit, min(available, max(limit - used, 0))
    return available, total


def memory_check() -> Check:
    async def check() -> CheckResult:
        figures = memory_figures()
        if figures is None:
            return CheckResult("ok", "not measured on this system")
        available, total = figures
        ratio = available / total if total else 1.0
        message = f"{_gib(available)} available ({ratio:.0%})"
        if ratio < MIN_AVAILABLE_MEMORY_RATIO:
            raise Degraded(f"low memory: {message}", f"{message} of {_gib(total)}")
        return CheckResult("ok", message, f"{message} of {_gib(total)}")

    return check


def standard_checks(
    settings: Settings,
    *,
    fetchval: Callable[[str], Awaitable[Any]],
    fetch: Callable[..., Awaitable[list[Any]]],
    temporal_client: Callable[[], Awaitable[Any]],
) -> dict[str, Check]:
    """The six checks of `/readyz`, in its order."""
    return {
        "database": database_check(fetchval),
        "temporal": temporal_check(temporal_client),
        "model": model_check(settings),
        "mcp_servers": mcp_servers_check(fetch),
        "disk": disk_check(settings.assistant_data_dir),
        "memory": memory_check(),
    }
