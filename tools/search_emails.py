"""`search_emails`: full-text search of the configured mailbox over IMAP, newest first.

A search is EXAMINE (read-only), `UID SORT (REVERSE ARRIVAL)` or `UID SEARCH` with `TEXT`
(or `ALL` for an empty query), then two FETCHes with BODY.PEEK, which never sets \\Seen:
headers and BODYSTRUCTURE, then the first bytes of each message's text part (mail_parse).
"Newest" is the arrival time (INTERNALDATE), which a forged Date header cannot move.

An email's `id` is `<mailbox>:<UIDVALIDITY>:<UID>` (the mailbox's name on the server): it
names one message in the account for as long as the server keeps the mailbox's
UIDVALIDITY, unlike a Message-ID, which copies share and some messages lack.
"""

import json
from typing import Any

import structlog

from core.config import Settings
from tools.base import ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.imap import ImapClient, ImapConfig, ImapError, ImapSession
from tools.mail_parse import (
    ADDRESSES_PER_FIELD,
    HEADER_FIELDS,
    Structure,
    decode_part,
    header_block,
    header_fetch_items,
    parse_headers,
    parse_internaldate,
    read_structure,
    snippet,
)

log = structlog.get_logger(__name__)

# Without server-side SORT, the newest are picked among this many most recently added matches.
CLIENT_SORT_WINDOW = 5000
# The result's JSON stays under this many characters (the activity cuts at 100,000).
RESULT_BUDGET = 90_000

SEARCH_EMAILS_DESCRIPTION = (
    "Search the user's mailbox for emails containing some text in their headers (sender, "
    "recipients, subject) or body. Returns the newest matches first, each with sender, "
    "recipients, subject, date, a short plain-text snippet and whether it has attachments."
)

SEARCH_EMAILS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["query"],
    "properties": {
        "query": {
            "type": "string",
            "maxLength": 1000,
            "description": (
                "Text to look for, case-insensitively, in the emails' sender, recipients, subject and "
                "body; a phrase matches where it appears as written. One distinctive word or name "
                "works best. An empty string lists the newest emails."
            ),
        },
        "folder": {
            "type": "string",
            "enum": ["inbox", "sent", "drafts", "trash"],
            "default": "inbox",
            "description": "The folder to search.",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 10,
            "description": "How many emails to return at most.",
        },
    },
}


class SearchEmailsTool:
    """Searches one IMAP mailbox (IMAP_* settings) over a kept-open connection."""

    spec = ToolSpec(
        name="search_emails",
        description=SEARCH_EMAILS_DESCRIPTION,
        input_schema=SEARCH_EMAILS_SCHEMA,
    )

    def __init__(self, config: ImapConfig) -> None:
        self._client = ImapClient(config)

    @classmethod
    def from_settings(cls, settings: Settings) -> "SearchEmailsTool | None":
        config = ImapConfig.from_settings(settings)
        return cls(config) if config is not None else None

    def check(self, arguments: dict[str, Any]) -> None:
        """The schema covers every argument."""

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        # Line breaks and runs of spaces mean nothing to a TEXT search: one space each.
        query = " ".join(str(arguments["query"]).split())
        folder = str(arguments.get("folder", "inbox"))
        limit = int(arguments.get("limit", 10))

        async def search(session: ImapSession) -> list[dict[str, Any]]:
            return await _search(session, folder=folder, query=query, limit=limit)

        try:
            emails = await self._client.run(search)
        except ImapError as err:
            log.warning(
                "search_emails failed", code=err.code, error=err.message, tool_call_id=context.tool_call_id
            )
            if err.retryable:
                raise ToolTemporarilyFailed(err.message) from None
            raise ToolFailed(err.code, err.message) from None
        log.info("search_emails done", folder=folder, found=len(emails), tool_call_id=context.tool_call_id)
        return {"emails": _fit(emails)}


async def _search(session: ImapSession, *, folder: str, query: str, limit: int) -> list[dict[str, Any]]:
    mailbox = await session.mailbox_for(folder)
    uidvalidity = await session.examine(mailbox)
    uids = await session.newest(query, limit=limit, window=CLIENT_SORT_WINDOW)
    if not uids:
        return []
    summaries = await session.fetch(uids, f"(UID INTERNALDATE BODYSTRUCTURE {header_fetch_items()})")
    structures = {uid: read_structure(item.get("BODYSTRUCTURE")) for uid, item in summaries.items()}
    texts = await _fetch_texts(session, structures)
    emails = []
    for uid in uids:
        if uid not in summaries:
            continue  # expunged since the search
        item, structure = summaries[uid], structures[uid]
        headers = parse_headers(
            header_block([_bytes(_item(item, f"BODY[HEADER.FIELDS ({name})]")) for name in HEADER_FIELDS])
        )
        date = headers.date or parse_internaldate(item.get("INTERNALDATE"))
        part = structure.body
        emails.append(
            {
                "id": f"{mailbox}:{uidvalidity}:{uid}",
                "from": headers.sender,
                "to": headers.to,
                "cc": headers.cc,
                "subject": headers.subject,
                "date": date.isoformat() if date else None,
                "snippet": snippet(decode_part(texts[uid], part), html=part.html)
                if part and uid in texts
                else "",
                "folder": folder,
                "has_attachments": structure.has_attachments,
            }
        )
    return emails


async def _fetch_texts(session: ImapSession, structures: dict[int, Structure]) -> dict[int, bytes]:
    """The first bytes of each message's text part, one FETCH per distinct part and size."""
    groups: dict[tuple[str, int], list[int]] = {}
    for uid, structure in structures.items():
        if structure.body is not None:
            groups.setdefault((structure.body.section, structure.body.window), []).append(uid)
    texts: dict[int, bytes] = {}
    for (section, window), uids in groups.items():
        found = await session.fetch(uids, f"(UID BODY.PEEK[{section}]<0.{window}>)", batch=20)
        for uid, item in found.items():
            texts[uid] = _bytes(_item(item, f"BODY[{section}]"))
    return texts


def _item(attributes: dict[str, Any], prefix: str) -> Any:
    """The FETCH attribute whose name starts with `prefix` (servers echo sections their way)."""
    return next((value for name, value in attributes.items() if name.startswith(prefix)), None)


def _bytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, bytes | bytearray) else b""


def _fit(emails: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the result within RESULT_BUDGET: long recipient lists are cut shorter first, then
    the oldest emails are left out."""
    for keep in (ADDRESSES_PER_FIELD, 3, 1):
        if _json_chars(emails) <= RESULT_BUDGET:
            return emails
        for email in emails:
            email["to"], email["cc"] = email["to"][:keep], email["cc"][:keep]
    sizes = [_json_chars(email) + 2 for email in emails]  # ", " between them
    while emails and sum(sizes) > RESULT_BUDGET:
        emails.pop()
        sizes.pop()
    return emails


def _json_chars(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))
