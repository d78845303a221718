"""Tool use by the offline demo model, so `assistant dev` can show the tools at work.

It recognises a few plain requests, when the tool is offered:
- "email bob@example.com about …" → `send_email` (which waits for an approval);
- a message with an http(s) URL → `fetch_page`;
- "search the web for …" → `web_search`; "search my email for …" → `search_emails`;
- a message that starts with `SELECT` or `WITH` → `query_database`.
Given a tool's result, it says what happened. Anything else gets the plain demo answer.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import Any

from fakemodel.messages import last_user_text
from fakemodel.script import ReplyStep, Step, ToolCallSpec, ToolCallsStep

_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ASKS_TO_MAIL = re.compile(r"\b(e-?mail|mail|send|write)\b", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_WEB_SEARCH = re.compile(r"\bsearch (?:the )?web for\s+(.+)", re.IGNORECASE | re.DOTALL)
_MAIL_SEARCH = re.compile(
    r"\bsearch (?:my )?(?:e-?mails?|mailbox|inbox) for\s+(.+)", re.IGNORECASE | re.DOTALL
)
_SQL = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


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
    for name, draft in _DRAFTS:
        if name in offered:
            step = draft(question)
            if step is not None:
                return step
    return None


def _email(question: str) -> Step | None:
    address = _ADDRESS.search(question)
    if address is None or not _ASKS_TO_MAIL.search(question) or _MAIL_SEARCH.search(question):
        return None
    subject = " ".join(question.split())[:70]
    return _call(
        "I'll draft that email; it goes out only once you approve it.\n",
        "send_email",
        {
            "to": address.group(0),
            "subject": subject,
            "body": f"<p>{html.escape(question)}</p><p>(Drafted by the offline demo model.)</p>",
        },
    )


def _sql(question: str) -> Step | None:
    if not _SQL.match(question):
        return None
    return _call("Let me run that query.\n", "query_database", {"query": question.strip().rstrip(";")})


def _mail_search(question: str) -> Step | None:
    match = _MAIL_SEARCH.search(question)
    if match is None:
        return None
    return _call("Searching your mailbox.\n", "search_emails", {"query": _clean(match.group(1))})


def _web_search(question: str) -> Step | None:
    match = _WEB_SEARCH.search(question)
    if match is None:
        return None
    return _call("Searching the web.\n", "web_search", {"query": _clean(match.group(1))})


def _fetch(question: str) -> Step | None:
    match = _URL.search(question)
    if match is None:
        return None
    return _call("Let me read that page.\n", "fetch_page", {"url": match.group(0).rstrip(".,;:!?")})


# Most specific first: a message asking to email someone a URL is an email.
_DRAFTS: list[tuple[str, Callable[[str], Step | None]]] = [
    ("query_database", _sql),
    ("search_emails", _mail_search),
    ("send_email", _email),
    ("web_search", _web_search),
    ("fetch_page", _fetch),
]


def _clean(text: str) -> str:
    return " ".join(text.split()).strip(" .?!\"'")[:200]


def _call(preface: str, name: str, arguments: dict[str, Any]) -> Step:
    return ToolCallsStep(content=preface, tool_calls=[ToolCallSpec(name=name, arguments=arguments)])


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
    for key, report in _REPORTS.items():
        if key in result:
            return report(result)
    return "Done."


def _report_page(result: dict[str, Any]) -> str:
    title = result.get("title") or result.get("final_url") or "the page"
    excerpt = " ".join(str(result.get("content") or "").split())[:300]
    return f"**{title}** ({result.get('word_count', 0)} words): {excerpt}"


def _report_search(result: dict[str, Any]) -> str:
    lines = [f"- [{r.get('title')}]({r.get('url')}): {r.get('snippet', '')}" for r in result["results"]]
    return "Here is what I found:\n" + "\n".join(lines) if lines else "The search found nothing."


def _report_emails(result: dict[str, Any]) -> str:
    lines = [f"- {e.get('date')}: **{e.get('subject')}** from {e.get('from')}" for e in result["emails"]]
    return "Matching emails, newest first:\n" + "\n".join(lines) if lines else "No email matches."


def _report_rows(result: dict[str, Any]) -> str:
    columns = [str(c) for c in result.get("columns") or []]
    rows = result.get("rows") or []
    if not columns:
        return "The query returned no columns."
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(json.dumps(v, ensure_ascii=False) for v in row) + " |" for row in rows[:20]]
    more = " (more rows were left out)" if result.get("truncated") or len(rows) > 20 else ""
    return f"{result.get('row_count', len(rows))} rows{more}:\n\n" + "\n".join(table)


_REPORTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "final_url": _report_page,
    "results": _report_search,
    "emails": _report_emails,
    "rows": _report_rows,
}
