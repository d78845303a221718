"""The approval prompt: a preview of the call, then y (approve), e (edit, then approve) or n (reject)."""

import base64
import binascii
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from chat.client import ApiClient, ApiError
from chat.render import Renderer
from tools.email_message import body_parts

Ask = Callable[[str], str]


def preview(tool: str, arguments: dict[str, Any], sender: str | None) -> list[str]:
    """The lines that show a person what approving will do."""
    if tool != "send_email":
        return [f"  {tool}", *("  " + line for line in json.dumps(arguments, indent=2).splitlines())]
    lines = [f"  from:    {sender or '(the sender the server is configured with)'}"]
    for field in ("to", "cc", "bcc", "reply_to"):
        value = arguments.get(field)
        if value:
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            lines.append(f"  {field.replace('_', '-') + ':':<8} {shown}")
    lines.append(f"  subject: {arguments.get('subject', '')}")
    body = str(arguments.get("body", ""))
    text = body_parts(body)[0]
    lines.append("  " + "-" * 40)
    lines.extend("  " + line for line in text.rstrip("\n").splitlines())
    lines.append("  " + "-" * 40)
    for attachment in arguments.get("attachments") or []:
        lines.append(
            f"  attachment: {attachment.get('filename')} ({_size(attachment.get('content_base64'))})"
        )
    return lines


def decide(api: ApiClient, renderer: Renderer, event: dict[str, Any], *, ask: Ask) -> None:
    """Ask about one pending approval until it is decided (or found already decided)."""
    approval = api.approval(event["approval_id"])
    sender = (approval.get("preview") or {}).get("from")  # the server's SMTP_FROM
    if approval["status"] != "pending":
        return  # replayed from an earlier session: it was answered already
    renderer.line(f"approval needed for {approval['tool']} (expires {approval['expires_at']}):")
    for line in preview(approval["tool"], approval["arguments"], sender):
        renderer.line(line)
    edited: str | None = None
    while True:
        answer = ask("approve? [y]es / [e]dit / [n]o: ").strip().lower()
        body: dict[str, Any]
        if answer in ("y", "yes"):
            body = {"decision": "approve"}
        elif answer in ("n", "no"):
            reason = ask("reason (optional): ").strip()
            body = {"decision": "reject", **({"reason": reason} if reason else {})}
        elif answer in ("e", "edit"):
            edited = _edit(edited or json.dumps(approval["arguments"], indent=2, ensure_ascii=False) + "\n")
            try:
                arguments = json.loads(edited)
            except ValueError as err:
                renderer.line(f"not valid JSON ({err}); edit again or answer y/n")
                continue
            if not isinstance(arguments, dict):
                renderer.line("the arguments must be a JSON object; edit again or answer y/n")
                continue
            for line in preview(approval["tool"], arguments, sender):
                renderer.line(line)
            body = {"decision": "approve", "arguments": arguments}
        else:
            continue
        try:
            api.decide(approval["id"], body)
            return
        except ApiError as err:
            renderer.line(f"refused: {err.describe()}")
            if err.status != 422:
                return  # decided elsewhere, expired or cancelled: the stream tells the rest


def _edit(text: str) -> str:
    """`text` as changed by the person in their editor."""
    editor = os.environ.get("EDITOR") or _fallback_editor()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as file:
        file.write(text)
    try:
        subprocess.run([*shlex.split(editor), file.name], check=False)
        with open(file.name, encoding="utf-8") as edited:
            return edited.read()
    finally:
        os.unlink(file.name)


def _fallback_editor() -> str:
    return next((name for name in ("vi", "nano") if shutil.which(name)), "vi")


def _size(content_base64: Any) -> str:
    try:
        size = len(base64.b64decode(str(content_base64 or ""), validate=False))
    except (binascii.Error, ValueError):
        return "invalid base64"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"
