"""No secret reaches the logs: the real log output of real processes is captured and grepped
for API keys, SMTP/IMAP passwords, database passwords and Authorization values."""

import subprocess
import sys
import textwrap

import httpx

from core.config import Settings
from devstack import free_port
from tests.conftest import ROOT, assistant_process, marker, subprocess_env
from tests.helpers import create_conversation, start_turn_json, wait_turn, wait_until_serving

SMTP_PW = "smtp-Pw-4417-zq"
IMAP_PW = "imap-Pw-9921-xk"
DB_PW = "db-Pw-5150-vv"
BEARER = "opaque-Bearer-7788-tt"
FAKE_KEY = "sk-asst-NotAKeyButShapedLikeOne0123456789abcdefgh"


def assert_clean(output: str, secrets: list[str]) -> None:
    leaked = [secret for secret in secrets if secret in output]
    assert not leaked, f"secrets in the log: {leaked}\n{output[-3000:]}"


def test_the_configuration_redacts_fields_text_exceptions_and_other_libraries():
    """Everything a careless call site could log, through the one configuration."""
    script = textwrap.dedent(
        f"""
        import logging
        import structlog
        from core.config import Settings
        from core.logging import configure_logging

        configure_logging("DEBUG", "json")
        log = structlog.get_logger("app")
        settings = Settings(smtp_password={SMTP_PW!r}, imap_password={IMAP_PW!r},
                            database_url="postgresql://app:{DB_PW}@db/app")
        log.info("settings", settings=settings.model_dump(), dsn=settings.database_url)
        log.info("settings repr", value=repr(settings), secrets=str(settings.smtp_password))
        log.info("a request", headers={{"Authorization": "Bearer {BEARER}"}}, api_key={FAKE_KEY!r})
        log.info("nested", extra={{"smtp": {{"password": {SMTP_PW!r}}}, "token": {BEARER!r}}})
        log.info("text mentions Authorization: Bearer {BEARER} and {FAKE_KEY}")
        log.info("libpq form", conninfo="host=db user=app password={DB_PW}")
        try:
            raise ConnectionError("cannot reach postgresql://app:{DB_PW}@db/app with {FAKE_KEY}")
        except ConnectionError:
            log.exception("database unreachable")
        other = logging.getLogger("some.library")
        other.warning("GET https://user:%s@imap.example/ failed", {IMAP_PW!r})
        try:
            raise RuntimeError("imap login failed: password={IMAP_PW}")
        except RuntimeError:
            other.exception("library failure")
        raise SystemError("uncaught, with Authorization: Bearer {BEARER}")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the uncaught exception, logged then exited
    for expected in (
        "database unreachable",
        "library failure",
        "uncaught exception",
        "Traceback",
        "[redacted]",
    ):
        assert expected in output, output
    assert_clean(output, [SMTP_PW, IMAP_PW, DB_PW, BEARER, FAKE_KEY])


async def test_a_served_api_and_a_failing_worker_log_no_secret(settings: Settings, user, model, tmp_path):
    port = free_port()
    env = subprocess_env(
        settings,
        LOG_LEVEL="DEBUG",
        SMTP_USER="assistant",
        SMTP_PASSWORD=SMTP_PW,
        IMAP_HOST="127.0.0.1",
        IMAP_USER="assistant",
        IMAP_PASSWORD=IMAP_PW,
        IMAP_TLS="none",
    )
    api_log = tmp_path / "api.log"
    base = f"http://127.0.0.1:{port}"
    with assistant_process(["api", "--port", str(port)], env, api_log) as api:
        await wait_until_serving(base, api)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {user.key}"}
        ) as client:
            tag = marker()
            model.script(tag, [{"kind": "reply", "content": "all fine"}])
            conv = await create_conversation(client)
            started = await start_turn_json(client, conv["id"], f"hello {tag}")
            assert (await wait_turn(client, started["turn"]["id"]))["status"] == "completed"
            refused = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {FAKE_KEY}"})
            assert refused.status_code == 401
            in_query = await client.get("/api/v1/conversations", params={"api_key": user.key})
            assert in_query.status_code == 400
            odd = await client.get("/api/v1/auth/me", headers={"Authorization": f"Token {BEARER}"})
            assert odd.status_code == 401
    # A worker whose database refuses it: its error is logged, its DSN's password is not.
    worker_log = tmp_path / "worker.log"
    bad_dsn = f"postgresql://assistant:{DB_PW}@127.0.0.1:{free_port()}/assistant"
    with assistant_process(["worker"], dict(env, DATABASE_URL=bad_dsn), worker_log) as worker:
        assert worker.wait(timeout=120) != 0
    output = api_log.read_text() + worker_log.read_text()
    assert '"path": "/api/v1/auth/me"' in output and "Traceback" in output, output[-2000:]
    assert_clean(output, [SMTP_PW, IMAP_PW, DB_PW, BEARER, FAKE_KEY, user.key])
