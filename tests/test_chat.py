"""`assistant chat`, driven through a pseudo-terminal as a person would use it, against the test stack."""

import asyncio
import json
import sys
from pathlib import Path

import pexpect

from tests.conftest import ROOT, marker, subprocess_env
from tests.test_approvals import email_args, script_email

TIMEOUT = 20


def chat(settings, api_url: str, key: str, data_dir: Path, *args: str, **env: str) -> pexpect.spawn:
    child_env = subprocess_env(
        settings, ASSISTANT_URL=api_url, ASSISTANT_API_KEY=key, ASSISTANT_DATA_DIR=str(data_dir), **env
    )
    return pexpect.spawn(
        sys.executable,
        ["-m", "cli", "chat", *args],
        env=child_env,
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 200),
    )


def quit_chat(child: pexpect.spawn) -> int:
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def reply(model, tag: str, content: str) -> None:
    model.script(tag, [{"kind": "reply", "content": content}])


async def test_a_streamed_answer_appears(settings, api_url, user, model, tmp_path):
    tag = marker()
    reply(model, tag, "The quick brown fox jumps over the lazy dog.")

    def converse() -> int:
        child = chat(settings, api_url, user.key, tmp_path)
        child.expect("> ")
        child.sendline(f"tell me {tag}")
        child.expect("The quick brown fox jumps over the lazy dog.")
        return quit_chat(child)

    assert await asyncio.to_thread(converse) == 0


async def test_approving_with_y_sends_exactly_one_message(settings, api_url, user, model, mail, tmp_path):
    tag = marker()
    script_email(model, tag, email_args(tag, cc=["carol@example.test"]), then="Sent it.")

    def converse() -> int:
        child = chat(settings, api_url, user.key, tmp_path)
        child.expect("> ")
        child.sendline(f"please mail {tag}")
        child.expect("approval needed for send_email")
        child.expect("to: +bob@example.test")
        child.expect("cc: +carol@example.test")
        child.expect_exact(f"subject: Report {tag}")
        child.expect("Hello Bob")  # the HTML body, as plain text
        child.expect(r"\[y\]es / \[e\]dit / \[n\]o: ")
        assert mail.messages(tag) == []
        child.sendline("y")
        child.expect("← send_email ok")
        child.expect("Sent it.")
        return quit_chat(child)

    assert await asyncio.to_thread(converse) == 0
    received = mail.messages(tag)
    assert len(received) == 1 and received[0].message["Subject"] == f"Report {tag}"


async def test_editing_with_e_sends_the_edited_subject(settings, api_url, user, model, mail, tmp_path):
    tag = marker()
    script_email(model, tag, email_args(tag), then="Sent the edit.")
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "args = json.load(open(path))\n"
        "args['subject'] = args['subject'].replace('Report', 'Edited')\n"
        "json.dump(args, open(path, 'w'))\n"
    )

    def converse() -> int:
        child = chat(settings, api_url, user.key, tmp_path, EDITOR=f"{sys.executable} {editor}")
        child.expect("> ")
        child.sendline(f"please mail {tag}")
        child.expect(r"\[y\]es / \[e\]dit / \[n\]o: ")
        child.sendline("e")
        child.expect_exact(f"subject: Edited {tag}")  # the edit is previewed before it is approved
        child.expect("← send_email ok")
        child.expect("Sent the edit.")
        return quit_chat(child)

    assert await asyncio.to_thread(converse) == 0
    received = mail.messages(tag)
    assert len(received) == 1 and received[0].message["Subject"] == f"Edited {tag}"


async def test_rejecting_with_n_sends_nothing_and_shows_the_follow_up(
    settings, api_url, user, model, mail, tmp_path
):
    tag = marker()
    script_email(model, tag, email_args(tag), then="Understood, I did not send it.")

    def converse() -> int:
        child = chat(settings, api_url, user.key, tmp_path)
        child.expect("> ")
        child.sendline(f"please mail {tag}")
        child.expect(r"\[y\]es / \[e\]dit / \[n\]o: ")
        child.sendline("n")
        child.expect("reason")
        child.sendline("wrong recipient")
        child.expect("approval rejected: wrong recipient")
        child.expect("Understood, I did not send it.")
        return quit_chat(child)

    assert await asyncio.to_thread(converse) == 0
    assert mail.messages(tag) == []
    tool_message = next(m for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool")
    assert json.loads(tool_message["content"]) == {"status": "rejected", "reason": "wrong recipient"}


async def test_json_mode_prints_one_event_per_line(settings, api_url, user, model, tmp_path):
    tag = marker()
    reply(model, tag, "Scripts read this.")
    env = subprocess_env(
        settings, ASSISTANT_URL=api_url, ASSISTANT_API_KEY=user.key, ASSISTANT_DATA_DIR=str(tmp_path)
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "chat", "--json", "--new", cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(f"hello {tag}\n".encode()), TIMEOUT)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert events[-1]["type"] == "complete" and events[-1]["content"] == "Scripts read this."
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_resuming_a_conversation_by_id_continues_it(settings, api_url, user, model, tmp_path):
    first, second = marker(), marker()
    reply(model, first, "First answer.")
    reply(model, second, "Second answer.")

    def converse(*args: str, message: str, answer: str) -> None:
        child = chat(settings, api_url, user.key, tmp_path / "elsewhere", *args)
        child.expect("> ")
        child.sendline(message)
        child.expect(answer)
        assert quit_chat(child) == 0

    await asyncio.to_thread(converse, "--new", message=f"one {first}", answer="First answer.")
    conversation_id = (await user.client.get("/api/v1/conversations")).json()["data"][0]["id"]
    await asyncio.to_thread(
        converse, "--conversation", conversation_id, message=f"two {second}", answer="Second answer."
    )
    messages = (await user.client.get(f"/api/v1/conversations/{conversation_id}/messages")).json()["data"]
    users_said = [m["content"] for m in messages if m["role"] == "user"]
    assert users_said == [f"one {first}", f"two {second}"]
    assert len((await user.client.get("/api/v1/conversations")).json()["data"]) == 1


async def test_a_refused_key_is_a_clear_error(settings, api_url, tmp_path):
    def run() -> tuple[str, int]:
        child = chat(settings, api_url, "sk-asst-not-a-real-key", tmp_path)
        child.expect(pexpect.EOF)
        child.close()
        return child.before, child.exitstatus

    output, status = await asyncio.to_thread(run)
    assert "the key was refused" in output and status != 0
