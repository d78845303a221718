"""Tool use by the offline demo model, so `assistant dev` can show the approval flow.

Asked to email an address (when `send_email` is offered), it calls `send_email`; given the
tool's result, it says what happened. Anything else gets the plain demo answer.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from fakemodel.messages import last_user_text
from fakemodel.script import ReplyStep, Step, ToolCallSpec, ToolCallsStep

_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ASKS_TO_MAIL = re.compile(r"\b(e-?mail|mail|send|write)\b", re.IGNORECASE)


def demo_step(request: dict[str, Any]) -> Step | None:
    """A tool call or a report on a tool's result; None for the plain demo answer."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "tool":
        return ReplyStep(content=_report(str(last.get("content") or "")))
    offered = {t.get("function", {}).get("name") for t in request.get("tools") or [] if isinstance(t, dict)}
    question = last_user_text(messages) or ""
    address = _ADDRESS.search(question)
    if "send_email" not in offered or address is None or not _ASKS_TO_MAIL.search(question):
        return None
    subject = " ".join(question.split())[:70]
    return ToolCallsStep(
        content="I'll draft that email; it goes out only once you approve it.\n",
        tool_calls=[
            ToolCallSpec(
                name="send_email",
                arguments={
                    "to": address.group(0),
                    "subject": subject,
                    "body": f"<p>{html.escape(question)}</p><p>(Drafted by the offline demo model.)</p>",
                },
            )
        ],
    )


def _report(content: str) -> str:
    try:
        result = json.loads(content)
    except ValueError:
        return "The tool answered, but not in a form I can read."
    if not isinstance(result, dict):
        return "The tool answered."
    if result.get("status") == "rejected":
        return f"I did not send it: {result.get('reason') or 'it was rejected'}."
    if "error" in result:
        error = result["error"] if isinstance(result["error"], dict) else {}
        return f"That did not work ({error.get('code', 'error')}): {error.get('message', '')}"
    if "message_id" in result:
        accepted = ", ".join(result.get("accepted") or []) or "the recipients"
        return f"Done: the email was accepted for {accepted} (Message-ID `{result['message_id']}`)."
    return "Done."
