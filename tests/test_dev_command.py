"""`assistant dev` as a person runs it: one command, a URL with a key, a streamed reply,
`assistant users create` beside it, Ctrl-C stops every child, and data survives a restart."""

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from httpx_sse import connect_sse

from devstack import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_URL = re.compile(r"Open (http://127\.0\.0\.1:\d+)/#key=(sk-asst-[A-Za-z0-9]+)")


def _env(data_dir) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "TEMPORAL_", "OPENAI_", "SMTP_"))
    }
    env.update({"ASSISTANT_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"})
    return env


def _start_dev(data_dir, port, log):
    """Start `assistant dev` with its output in `log` (a file, so children never block on a pipe)."""
    log.flush()
    offset = Path(log.name).stat().st_size  # the log may hold an earlier run's lines
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "--port", str(port)],
        env=_env(data_dir),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = Path(log.name).read_text()[offset:]
        match = _URL.search(text)
        if match:
            return proc, match[1], match[2], text.splitlines()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"assistant dev printed no URL: {Path(log.name).read_text()[-3000:]}")


def _stop_dev(proc) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "dev runs its services as child processes"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    _gone, alive = psutil.wait_procs(children, timeout=20)
    return _running(alive)


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running. A zombie has exited: with its parent killed, it waits to be
    reaped by whatever adopts it (a container's init may never do so)."""
    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def _stream_reply(base: str, key: str, conversation_id: str, content: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=base, headers=headers, timeout=60) as client,
        connect_sse(
            client, "POST", f"/api/v1/conversations/{conversation_id}/messages", json={"content": content}
        ) as source,
    ):
        return [json.loads(e.data) for e in source.iter_sse()]


def _approve_a_demo_email(base: str, headers: dict[str, str], conversation_id: str, mail_dir: Path) -> None:
    """With no SMTP configured, dev's mail catcher keeps the approved email as a file."""
    started = httpx.post(
        f"{base}/api/v1/conversations/{conversation_id}/messages",
        json={"content": "Please send an email to bob@example.com saying the report is ready"},
        headers={**headers, "Accept": "application/json"},
    )
    assert started.status_code == 202, started.text
    turn_url = f"{base}/api/v1/turns/{started.json()['turn']['id']}"
    turn = httpx.get(turn_url, params={"wait": 30}, headers=headers, timeout=40).json()
    assert turn["status"] == "awaiting_approval", turn
    assert not list(mail_dir.glob("*.eml")), "nothing is sent before the approval"
    (approval,) = turn["pending_approvals"]
    decided = httpx.post(
        f"{base}/api/v1/approvals/{approval['id']}", json={"decision": "approve"}, headers=headers
    )
    assert decided.status_code == 200, decided.text
    for _ in range(30):
        turn = httpx.get(turn_url, params={"wait": 10}, headers=headers, timeout=20).json()
        if turn["status"] == "completed":
            break
    assert turn["status"] == "completed", turn
    (kept,) = mail_dir.glob("*.eml")
    message = email.message_from_bytes(kept.read_bytes(), policy=email.policy.default)
    assert message["To"] == "bob@example.com" and message["From"] == approval["preview"]["from"]


def test_dev_runs_everything_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    with open(tmp_path / "dev.log", "w") as log:
        proc, base, key, lines = _start_dev(data_dir, port, log)
        # A second dev on the same data dir is refused, and harms nothing.
        second = subprocess.run(
            [sys.executable, "-m", "cli", "dev", "--port", str(free_port())],
            env=_env(data_dir),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "already running" in second.stderr
        try:
            assert any("built-in offline model" in line for line in lines)
            assert any("approved email is kept in" in line for line in lines)
            headers = {"Authorization": f"Bearer {key}"}
            conv = httpx.post(f"{base}/api/v1/conversations", json={"title": "dev"}, headers=headers).json()
            events = _stream_reply(base, key, conv["id"], "What are you?")
            assert events[-1]["type"] == "complete"
            assert "What are you?" in events[-1]["content"]  # the demo model echoes the question
            assert "".join(e["content"] for e in events if e["type"] == "token") == events[-1]["content"]
            _approve_a_demo_email(base, headers, conv["id"], data_dir / "mail")

            created = subprocess.run(
                [sys.executable, "-m", "cli", "users", "create", "alice", "--json"],
                env=_env(data_dir),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            alice = json.loads(created.stdout)
            dev_user = httpx.get(f"{base}/api/v1/auth/me", headers=headers).json()
            assert dev_user["role"] == "admin", "the dev login may manage users"
            me = httpx.get(f"{base}/api/v1/auth/me", headers={"Authorization": f"Bearer {alice['api_key']}"})
            assert me.status_code == 200 and me.json()["id"] == alice["user_id"]
        finally:
            alive = _stop_dev(proc)
        assert alive == [], f"orphans left behind: {alive}"
        assert not (data_dir / "dev-services.json").exists()

        # Data survives a restart, and the printed key still works.
        proc, base, key2, _ = _start_dev(data_dir, port, log)
        try:
            assert key2 == key
            listed = httpx.get(
                f"{base}/api/v1/conversations", headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert [c["id"] for c in listed["data"]] == [conv["id"]]
            messages = httpx.get(
                f"{base}/api/v1/conversations/{conv['id']}/messages",
                headers={"Authorization": f"Bearer {key}"},
            ).json()["data"]
            roles = [m["role"] for m in messages]
            assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant"]
        finally:
            alive = _stop_dev(proc)
        assert alive == []


def test_dev_refuses_a_busy_port_clearly(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cli", "dev", "--port", str(port)],
            env=_env(tmp_path / "data"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_kill_9_of_dev_leaves_no_orphans(tmp_path):
    with open(tmp_path / "dev.log", "w") as log:
        proc, _base, _key, _ = _start_dev(tmp_path / "data", free_port(), log)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert {c.name() for c in children} >= {"postgres", "temporal"}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _gone, alive = psutil.wait_procs(children, timeout=20)
    assert _running(alive) == [], f"orphans left behind: {alive}"
