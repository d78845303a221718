"""Compact terminal rendering of a turn's events (API.md, "The event stream of a turn")."""

import itertools
import json
import sys
import threading
from typing import Any, TextIO

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_WIDTH = 100


def compact(value: Any, width: int = _WIDTH) -> str:
    """A value as one line of JSON, cut to `width` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


class Spinner:
    """A status line that animates while the turn waits; cleared before anything else is printed."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self._label = ""
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._label = label
            if self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._spin, args=(self._stop,), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._thread is None or self._stop is None:
                return
            self._stop.set()
            thread, self._thread = self._thread, None
        thread.join()
        self.out.write("\r\x1b[K")
        self.out.flush()

    def _spin(self, stop: threading.Event) -> None:
        for frame in itertools.cycle(_FRAMES):
            with self._lock:
                if stop.is_set():
                    return
                self.out.write(f"\r\x1b[K{frame} {self._label}")
                self.out.flush()
            if stop.wait(0.1):
                return


class Renderer:
    """Prints events as they come: the reply's text streamed, one line per tool call and result."""

    def __init__(self, out: TextIO = sys.stdout, *, spinner: bool | None = None) -> None:
        self.out = out
        self.spinner = Spinner(out, out.isatty() if spinner is None else spinner)
        self._text = ""  # the text of the current attempt of the streamed message
        self._message_id: str | None = None
        self._mid_line = False
        self._tools: dict[str, str] = {}

    def waiting(self, label: str = "thinking") -> None:
        self.spinner.start(label)

    def line(self, text: str) -> None:
        """A whole line of its own (a note, a tool call), after any streamed text."""
        self.spinner.stop()
        self._end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_status(self, event: dict[str, Any]) -> None:
        if event["status"] in ("queued", "running"):
            self.waiting("waiting for the model" if event["status"] == "queued" else "thinking")

    def _on_token(self, event: dict[str, Any]) -> None:
        if event["message_id"] != self._message_id:
            self._message_id, self._text = event["message_id"], ""
        content, index = event["content"], event["index"]
        if index < len(self._text):  # already shown (should not happen: seq is deduplicated)
            content = content[len(self._text) - index :]
        if not content:
            return
        self.spinner.stop()
        self._text += content
        self.out.write(content)
        self.out.flush()
        self._mid_line = not self._text.endswith("\n")

    def _on_reset(self, event: dict[str, Any]) -> None:
        had_text = bool(self._text)
        self._message_id, self._text = event["message_id"], ""
        if had_text:
            self.line(f"[the model call failed part-way; text above discarded; attempt {event['attempt']}:]")
        self.waiting("retrying")

    def _on_message(self, event: dict[str, Any]) -> None:
        message = event["message"]
        if message.get("content") and not self._text:
            self.spinner.stop()  # a message that came without tokens (e.g. replayed partially)
            self.out.write(message["content"])
            self._mid_line = True
        self._end_line()
        self._text, self._message_id = "", None
        if message.get("tool_calls"):
            self.waiting("calling tools")

    def _on_tool_request(self, event: dict[str, Any]) -> None:
        self._tools[event["tool_call_id"]] = event["tool_id"]
        gate = "  (needs approval)" if event.get("requires_confirmation") else ""
        self.line(f"→ {event['tool_id']} {compact(event['arguments'])}{gate}")
        self.waiting(f"running {event['tool_id']}")

    def _on_approval_decided(self, event: dict[str, Any]) -> None:
        reason = f": {event['reason']}" if event.get("reason") else ""
        self.line(f"  approval {event['decision']}{reason}")
        self.waiting("running the tool" if event["decision"] == "approved" else "thinking")

    def _on_tool_result(self, event: dict[str, Any]) -> None:
        status = event["status"]
        if status == "ok":
            detail = compact(event.get("result"))
        elif status == "rejected":
            detail = str((event.get("result") or {}).get("reason") or "")
        else:
            detail = compact(event.get("error"))
        self.line(f"← {event['tool_id']} {status}: {detail}")
        self.waiting("thinking")

    def _on_complete(self, event: dict[str, Any]) -> None:
        self.spinner.stop()
        self._end_line()

    def _on_error(self, event: dict[str, Any]) -> None:
        hint = "sending it again later may work" if event.get("retryable") else "retrying will not help"
        self.line(f"error [{event.get('code')}]: {event.get('error')} ({hint})")

    def _on_cancelled(self, event: dict[str, Any]) -> None:
        self.line("(turn cancelled)")

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.flush()


class JsonRenderer(Renderer):
    """`--json`: one event per line, exactly as the API sent it; no status line."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        super().__init__(out, spinner=False)

    def line(self, text: str) -> None:
        pass  # notes are for people; scripts read events

    def event(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.out.flush()
