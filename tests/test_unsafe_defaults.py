"""Outside development, `assistant api` and `assistant worker` refuse unsafe settings with a
clear message (run as a user runs them: the real CLI in a child process), unless
ALLOW_INSECURE=true; in development they only warn."""

import subprocess
import sys

import httpx
import pytest

from core.config import Settings
from devstack import free_port
from tests.conftest import ROOT, assistant_process, subprocess_env
from tests.helpers import wait_until_serving

PRODUCTION = {"ASSISTANT_ENV": "production", "ALLOW_INSECURE": "false"}
PLAIN_SMTP = {"SMTP_HOST": "mail.example.test", "SMTP_TLS": "none", "SMTP_PASSWORD": "s3cret-Mail-pw"}
PLAIN_IMAP = {
    "IMAP_HOST": "imap.example.test",
    "IMAP_TLS": "none",
    "IMAP_USER": "me",
    "IMAP_PASSWORD": "s3cret-Imap-pw",
}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


CASES = {
    "plain-smtp-with-password": (["worker"], PLAIN_SMTP, "SMTP_TLS=none sends SMTP_PASSWORD in clear text"),
    "plain-imap-with-password": (["worker"], PLAIN_IMAP, "IMAP_TLS=none sends IMAP_PASSWORD in clear text"),
    "plain-smtp-api": (["api"], PLAIN_SMTP, "SMTP_TLS=none"),
    "any-origin-on-every-address": (
        ["api", "--host", "0.0.0.0"],
        {"ALLOWED_ORIGINS": "*"},
        "ALLOWED_ORIGINS=* on 0.0.0.0",
    ),
    "any-origin-on-every-ipv6-address": (
        ["api", "--host", "::"],
        {"ALLOWED_ORIGINS": "*"},
        "ALLOWED_ORIGINS=*",
    ),
    "default-database-password": (
        ["worker"],
        {"DATABASE_URL": "postgresql://assistant:assistant@db.internal:5432/assistant"},
        "DATABASE_URL's password holds a default or placeholder secret",
    ),
    "placeholder-smtp-password": (
        ["api"],
        {"SMTP_PASSWORD": "changeme", "SMTP_TLS": "starttls"},
        "SMTP_PASSWORD holds a default or placeholder secret",
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_unsafe_settings_are_refused_outside_development(settings: Settings, case):
    args, unsafe, message = case
    result = run_cli(args, subprocess_env(settings, **PRODUCTION, **unsafe))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"refusing to start `assistant {args[0]}` with unsafe settings" in result.stderr
    assert message in result.stderr, result.stderr
    assert "ALLOW_INSECURE=true" in result.stderr
    for secret in ("s3cret-Mail-pw", "s3cret-Imap-pw"):
        assert secret not in result.stderr + result.stdout


def test_every_finding_is_named_at_once(settings: Settings):
    result = run_cli(
        ["api", "--host", "0.0.0.0"],
        subprocess_env(settings, **PRODUCTION, **PLAIN_IMAP, ALLOWED_ORIGINS="*"),
    )
    assert result.returncode == 2
    assert "IMAP_TLS=none" in result.stderr and "ALLOWED_ORIGINS=*" in result.stderr


def test_safe_settings_with_a_wildcard_bind_are_not_refused(settings: Settings):
    """Loopback mail servers and a listed origin are fine: nothing to refuse (the check passes,
    then the process fails later on purpose: its Temporal address points nowhere)."""
    env = subprocess_env(
        settings,
        **PRODUCTION,
        SMTP_PASSWORD="a-real-Long-password",
        ALLOWED_ORIGINS="https://ui.example.test",
        TEMPORAL_ADDRESS="not a host:0",
    )
    result = run_cli(["worker"], env)
    assert "refusing to start" not in result.stderr


@pytest.mark.parametrize(
    "allowance", [{"ALLOW_INSECURE": "true", "ASSISTANT_ENV": "production"}, {"ASSISTANT_ENV": "development"}]
)
async def test_an_explicit_allowance_starts_with_a_warning(settings: Settings, tmp_path, allowance):
    port = free_port()
    env = subprocess_env(settings, **PLAIN_SMTP, **allowance)
    log = tmp_path / "api.log"
    with assistant_process(["api", "--port", str(port)], env, log) as api:
        await wait_until_serving(f"http://127.0.0.1:{port}", api)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    output = log.read_text()
    assert "insecure setting" in output and "SMTP_TLS=none" in output
    assert "s3cret-Mail-pw" not in output
