"""Settings that are fine on a laptop and dangerous on a server, refused outside development.

`assistant api` and `assistant worker` call `check_startup` before anything else. In
development (`ASSISTANT_ENV=development`, which `assistant dev` sets) every finding is only
logged; otherwise the process refuses to start, naming each finding and how to fix it,
unless `ALLOW_INSECURE=true` says the operator knows (the findings are then logged as
warnings at every start, so the choice stays visible).
"""

import ipaddress
from urllib.parse import urlsplit

import structlog
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError

log = structlog.get_logger(__name__)

# Values shipped in examples and compose files, or typed while trying things out: a secret
# equal to one of these is known to everyone who read the same example.
_PLACEHOLDERS = frozenset(
    {
        "assistant",
        "postgres",
        "password",
        "passwd",
        "pass",
        "secret",
        "changeme",
        "change-me",
        "change_me",
        "replace-me",
        "admin",
        "root",
        "default",
        "example",
        "test",
        "todo",
    }
)


def is_loopback(host: str | None) -> bool:
    """Whether `host` names this machine only (an address on loopback, or `localhost`)."""
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_placeholder(secret: str) -> bool:
    """Whether `secret` is a well-known default or an obvious placeholder (`<…>`, `xxxx`)."""
    value = secret.strip().lower()
    return (
        value in _PLACEHOLDERS
        or value.startswith(("<", "your-", "your_", "changeme"))
        or (len(value) > 0 and set(value) <= {"x", "*", "."})
    )


def findings(settings: Settings, *, bind_host: str | None = None) -> list[str]:
    """What is unsafe about these settings for a process (`bind_host`: where the API listens)."""
    found: list[str] = []
    for service, host, tls, password in (
        ("SMTP", settings.smtp_host, settings.smtp_tls, settings.smtp_password),
        ("IMAP", settings.imap_host, settings.imap_tls, settings.imap_password),
    ):
        if tls == "none" and _value(password) and host and not is_loopback(host):
            found.append(
                f"{service}_TLS=none sends {service}_PASSWORD in clear text to {host}; "
                f"use {service}_TLS=starttls or ssl"
            )
    for name, secret in _secrets(settings):
        if is_placeholder(secret):
            found.append(f"{name} holds a default or placeholder secret; set a real one")
    if bind_host is not None and not is_loopback(bind_host) and "*" in settings.allowed_origins:
        found.append(
            f"ALLOWED_ORIGINS=* on {bind_host or 'every address'} lets any web page call the API "
            "from a browser; list the origins of your UI instead"
        )
    return found


def check_startup(settings: Settings, *, process: str, bind_host: str | None = None) -> None:
    """Refuse to start on unsafe settings outside development (ConfigurationError)."""
    found = findings(settings, bind_host=bind_host)
    if not found:
        return
    if settings.is_development or settings.allow_insecure:
        for finding in found:
            log.warning("insecure setting", process=process, finding=finding)
        return
    lines = "\n".join(f"  - {finding}" for finding in found)
    raise ConfigurationError(
        f"refusing to start `assistant {process}` with unsafe settings (ASSISTANT_ENV="
        f"{settings.assistant_env}):\n{lines}\nFix them, or set ALLOW_INSECURE=true to start anyway."
    )


def _value(secret: SecretStr | str | None) -> str:
    if secret is None:
        return ""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _secrets(settings: Settings) -> list[tuple[str, str]]:
    """The secrets that guard access to something, by variable name, where set."""
    named = [
        ("SMTP_PASSWORD", _value(settings.smtp_password)),
        ("IMAP_PASSWORD", _value(settings.imap_password)),
        ("TOOL_SERVER_KEY", _value(settings.tool_server_key)),
        ("DATABASE_URL's password", _url_password(settings.database_url)),
        ("QUERY_DATABASE_URL's password", _url_password(_value(settings.query_database_url))),
    ]
    return [(name, value) for name, value in named if value]


def _url_password(url: str | None) -> str:
    if not url:
        return ""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""
