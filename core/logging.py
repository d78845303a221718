"""One structlog configuration for every process: readable in dev, JSON otherwise.

Secrets are redacted by the configuration itself (`redact_secrets`), after exceptions are
formatted and for records of other libraries too, so no call site has to remember: API
keys, `Authorization` values, passwords in URLs and DSNs, and fields named like secrets.
Uncaught exceptions are logged through the same path, so their text is redacted as well.
"""

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any

import structlog
from temporalio import activity, workflow

from core.log_context import add_request_context, flatten_temporal_extra

REDACTED = "[redacted]"

# Field names whose value is a secret: split on `_`/`-`, any part (or the whole) matches.
_SECRET_PARTS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "apikey", "authorization", "credential", "credentials"}
)
_SECRET_NAMES = frozenset({"api_key", "api-key", "access_key", "private_key", "cookie"})

_TEXT_RULES: list[tuple[re.Pattern[str], str]] = [
    # Our API keys, and OpenAI-style keys, wherever they appear.
    (re.compile(r"sk-asst-[A-Za-z0-9_\-]+"), "sk-asst-" + REDACTED),
    (re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{16,}"), "sk-" + REDACTED),
    # An Authorization header's credentials, in any spelling.
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)([^\r\n\"',}]+)"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=\-]{8,}"), r"\1\2" + REDACTED),
    (re.compile(r"\b(Basic)(\s+)[A-Za-z0-9+/]{8,}={0,2}"), r"\1\2" + REDACTED),
    # The password of a URL or DSN: scheme://user:password@host.
    (re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):([^\s@/]*)@"), r"\1:" + REDACTED + "@"),
    # key=value and "key": "value" forms (libpq DSNs, query strings, repr of settings).
    (
        re.compile(
            r"(?i)\b((?:[a-z_]*_)?(?:password|passwd|pwd|secret|api_?key|access_token|token)"
            r"[\"']?\s*[=:]\s*)(SecretStr\('[^']*'\)|[\"'][^\"']*[\"']|[^\s&;,)}\]]+)"
        ),
        r"\1" + REDACTED,
    ),
]


def redact_text(text: str) -> str:
    """`text` with every secret it recognisably holds replaced by `[redacted]`."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    if lowered in _SECRET_NAMES:
        return True
    parts = re.split(r"[_\-.\s]+", lowered)
    return lowered in _SECRET_PARTS or any(part in _SECRET_PARTS for part in parts)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 8:  # nested past any log event we write: flatten to text
        return redact_text(str(value))
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _is_secret_name(key) and value[key] is not None
            else _redact_value(value[key], depth + 1)
            for key in value
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item, depth + 1) for item in value]
    return redact_text(str(value))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact secret-named fields and secrets inside every text value."""
    for key in list(event_dict):
        value = event_dict[key]
        if key.startswith("_") or key in ("exc_info", "stack_info"):
            continue  # formatted into `exception` text first, then redacted there
        if _is_secret_name(key) and value is not None:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        # Other libraries' `extra` fields (Temporal's workflow and activity info among them),
        # flattened into the ids our own lines carry, and those of the request being served.
        structlog.stdlib.ExtraAdder(),
        flatten_temporal_extra,
        add_request_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_logger_name,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                # After the exception became text, and for other libraries' records too.
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    sys.excepthook = _log_uncaught
    # Temporal's loggers carry their workflow/activity info as fields (flattened above): not
    # also as a dict appended to the message.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    # The access log is ours (api.middleware): uvicorn's would record query strings.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx and httpcore log every request URL at INFO/DEBUG: search queries, the pages the
    # model fetched, and credentials in a URL's userinfo. Tools log what they did themselves.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
