"""`assistant chat`, driven through a pseudo-terminal as a person would use it, against the test stack."""

import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
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


def quit_chat(child: pexpect.spawn, *, at_prompt: bool = False) -> int:
    if not at_prompt:
        child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def reply(model, tag: str, content: str) -> None:
    model.script(tag, [{"kind": "reply", "content": content}])


def screen_lines(raw: str) -> list[str]:
    """The non-empty lines a terminal would show for `raw`: a carriage return rewrites its line."""
    raw = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", raw).replace("\r\n", "\n")
    lines = (line.rsplit("\r", 1)[-1].rstrip() for line in raw.split("\n"))
    return [line for line in lines if line]


def slow_text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words)) + "."


async def latest_turn(user) -> dict:
    conversation_id = (await user.client.get("/api/v1/conversations")).json()["data"][0]["id"]
    turns = (await user.client.get(f"/api/v1/conversations/{conversation_id}/turns")).json()["data"]
    return turns[0]


class CuttingProxy:
    """A TCP proxy on loopback that cuts, once, the connection whose reply carries the `cut_at`-th
    `token` event, in the middle of that event's frame; every other byte passes unchanged."""

    _MARK = b"event: token"

    def __init__(self, upstream: str, cut_at: int) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_at = cut_at
        self.cut = threading.Event()
        self.sent = bytearray()  # everything the client sent, in order
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]

    def __enter__(self) -> "CuttingProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    self.sent += data
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        seen, tail = 0, b""
        try:
            while data := server.recv(65536):
                window = tail + data
                seen += window.count(self._MARK)
                tail = window[-(len(self._MARK) - 1) :]
                if seen >= self.cut_at and not self.cut.is_set():
                    self.cut.set()
                    end = data.rfind(self._MARK)
                    client.sendall(data if end < 0 else data[: end + len(self._MARK) + 8])
                    return  # the frame is cut short and the chunked body never ends
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


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
        # The client's own SMTP_FROM differs: the preview shows the sender the server uses.
        child = chat(settings, api_url, user.key, tmp_path, SMTP_FROM="client@example.test")
        child.expect("> ")
        child.sendline(f"please mail {tag}")
        child.expect("approval needed for send_email")
        child.expect_exact(f"from:    {settings.smtp_from}")  # the server's sender, from its preview
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


async def test_ctrl_c_cancels_the_running_turn_and_the_prompt_comes_back(
    settings, api_url, user, model, tmp_path
):
    tag = marker()
    text = slow_text(60)
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 100}])  # 6 s unless cancelled
    child = chat(settings, api_url, user.key, tmp_path)

    def interrupt() -> list[str]:
        child.expect("> ")
        child.sendline(f"count slowly {tag}")
        child.expect_exact("word2 ")  # the turn is running and streaming
        child.sendintr()
        child.expect_exact("(cancelling the turn; Ctrl-C again to leave)")
        shown = screen_lines(child.before)
        child.expect_exact("(turn cancelled)")
        child.expect("> ")  # the prompt comes back
        return shown

    shown = await asyncio.to_thread(interrupt)
    assert child.isalive()
    turn = await latest_turn(user)
    assert turn["status"] == "cancelled"
    assert "word59." not in "".join(shown)  # the reply was cut short

    def interrupt_at_the_prompt() -> str:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        return child.before

    output = await asyncio.to_thread(interrupt_at_the_prompt)
    assert child.exitstatus == 0 and "Traceback" not in output


async def test_a_second_ctrl_c_during_a_turn_leaves(settings, api_url, user, model, tmp_path):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": slow_text(60), "delay_ms": 100}])

    def converse() -> tuple[str, int]:
        child = chat(settings, api_url, user.key, tmp_path)
        child.expect("> ")
        child.sendline(f"count slowly {tag}")
        child.expect_exact("word2 ")
        child.sendintr()
        child.expect_exact("(cancelling the turn; Ctrl-C again to leave)")
        child.sendintr()  # while the cancel is requested and the stream followed to its end
        child.expect(pexpect.EOF)
        child.close()
        return child.before, child.exitstatus

    output, status = await asyncio.to_thread(converse)
    assert status == 0 and "Traceback" not in output, output
    for _ in range(50):  # the first Ctrl-C's cancel was sent; the turn ends cancelled
        if (turn := await latest_turn(user))["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.1)
    assert turn["status"] == "cancelled"


async def test_a_stream_broken_midway_shows_the_reset_and_the_stored_text(
    settings, api_url, user, model, tmp_path
):
    tag = marker()
    broken = "A partial answer that will be cut off before it ends"
    final = "The complete and correct answer, streamed again from the start."
    model.script(
        tag,
        [
            {"kind": "break", "content": broken, "after_chunks": 3, "delay_ms": 20},
            {"kind": "reply", "content": final, "delay_ms": 20},
        ],
    )
    note = "[the model call failed part-way; text above discarded; attempt 2:]"

    def converse() -> list[str]:
        child = chat(settings, api_url, user.key, tmp_path)
        child.expect("> ")
        child.sendline(f"answer {tag}")
        child.expect_exact(note)
        child.expect("> ")
        shown = screen_lines(child.before)
        assert quit_chat(child, at_prompt=True) == 0
        return shown

    shown = await asyncio.to_thread(converse)
    assert shown == [final]  # what follows the note, up to the next prompt
    conversation_id = (await user.client.get("/api/v1/conversations")).json()["data"][0]["id"]
    messages = (await user.client.get(f"/api/v1/conversations/{conversation_id}/messages")).json()["data"]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == [shown[0]]
    assert len(model.requests(tag)) == 2


async def test_a_dropped_stream_resumes_without_losing_or_repeating_text(
    settings, api_url, user, model, tmp_path
):
    tag = marker()
    text = slow_text(30)
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 40}])

    with CuttingProxy(api_url, cut_at=4) as proxy:

        def converse() -> tuple[str, list[str]]:
            child = chat(settings, proxy.url, user.key, tmp_path)
            child.expect("> ")
            child.sendline(f"count {tag}")
            child.expect("> ")
            raw, shown = child.before, screen_lines(child.before)
            assert quit_chat(child, at_prompt=True) == 0
            return raw, shown

        raw, shown = await asyncio.to_thread(converse)
        assert proxy.cut.is_set()
        sent = proxy.sent.decode("latin-1")

    assert shown == [f"count {tag}", text]  # the echoed message, then the reply exactly once
    # Not merely on screen: every word was written once, in order (none redrawn over a replay).
    assert re.findall(r"word\d+", raw) == [f"word{i}" for i in range(30)]
    turn = await latest_turn(user)
    resumed = re.findall(
        rf"GET /api/v1/turns/{turn['id']}/events [^\r]*\r\n(?:[^\r]+\r\n)*?last-event-id: (\d+)",
        sent,
        flags=re.IGNORECASE,
    )
    assert resumed and int(resumed[0]) >= 3  # resumed after the last whole event it had read
    assert turn["status"] == "completed" and turn["output"]["content"] == text
    assert len(model.requests(tag)) == 1
