"""search_emails against a real Dovecot on loopback (tests/imapserver.py).

`alice` has Dovecot's full feature set (SORT, SPECIAL-USE, LITERAL+) and special-use Sent,
Drafts and Trash; `legacy` is offered only IMAP4rev1 after login and keeps its mail in
"Sent Items" and "Deleted Items", as older or other servers do: her searches go through the
fallbacks (client-side ordering, folders found by name). Messages are appended with arrival
times (INTERNALDATE) in an order unlike their UIDs.
"""

import asyncio
import base64
import bz2
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
import structlog.testing
from pydantic import SecretStr

import tools.imap
from core.config import Settings
from core.errors import ConfigurationError
from devstack import free_port
from tests.imapserver import DovecotServer, ImapUser
from tools.base import SchemaCheck, ToolContext, ToolFailed, ToolTemporarilyFailed
from tools.imap import ImapSession
from tools.mail_parse import Structure, parse_records, read_structure
from tools.search_emails import SearchEmailsTool

CONTEXT = ToolContext(turn_id="turn", tool_call_id="call", user_id="user", idempotency_key="key")
ALICE = ImapUser("alice", "alice-secret")
LEGACY = ImapUser("legacy", "legacy-secret", capability="IMAP4rev1")
# Mailboxes of their own for tests that add mail as they go or fill a mailbox with odd mail.
MALLORY = ImapUser("mallory", "mallory-secret")
BULK = ImapUser("bulk", "bulk-secret")
RACER = ImapUser("racer", "racer-secret")
OLD_RACER = ImapUser("old_racer", "old-racer-secret", capability="IMAP4rev1")
PDF_PAYLOAD = b"%PDF-1.4 ATTACHEDPAYLOADTEXT " * 50


def at(day: int, hour: int = 9, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def message(
    subject: str,
    *,
    date: datetime,
    sender: str = "Sam Sender <sam@example.com>",
    to: str = "Alice Martin <alice@example.com>",
    cc: str | None = None,
    text: str | None = None,
    html: str | None = None,
) -> EmailMessage:
    """A message as a mail client writes it (non-ASCII headers become RFC 2047 words)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    if cc:
        msg["Cc"] = cc
    msg["Date"] = date.strftime("%a, %d %b %Y %H:%M:%S +0000")
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    return msg


def raw(headers: list[str], body: bytes) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def japanese() -> bytes:
    def word(text: str) -> str:
        return "=?ISO-2022-JP?B?" + base64.b64encode(text.encode("iso2022_jp")).decode() + "?="

    return raw(
        [
            f"From: {word('山田太郎')} <taro@example.jp>",
            "To: alice@example.com",
            f"Subject: {word('会議の議題')}",
            "Date: Sat, 03 Jan 2026 09:00:00 +0000",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=ISO-2022-JP",
            "Content-Transfer-Encoding: 7bit",
        ],
        "来週の会議について相談させてください。".encode("iso2022_jp") + b"\r\n",
    )


def latin1() -> bytes:
    return raw(
        [
            "From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.fr>",
            "To: alice@example.com",
            "Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=",
            "Date: Thu, 01 Jan 2026 10:00:00 +0000",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=ISO-8859-1",
            "Content-Transfer-Encoding: quoted-printable",
        ],
        b"Un caf=E9 cr=E8me au menu, s'il vous pla=EEt.\r\n",
    )


def with_attachment(
    subject: str, *, date: datetime, text: str, payload: bytes, filename: str
) -> EmailMessage:
    msg = message(subject, date=date, text=text)
    msg.add_attachment(payload, maintype="application", subtype="pdf", filename=filename)
    return msg


def invoice() -> EmailMessage:
    """The usual shape: mixed(alternative(plain in base64, html in quoted-printable), file)."""
    msg = message("Invoice 42", date=at(2, 15))
    msg.set_content("Invoice 42 is attached. Total: 1 200 €.", cte="base64")
    msg.add_alternative("<p>Invoice <b>42</b> is attached.</p>", subtype="html", cte="quoted-printable")
    msg.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice-42.pdf")
    return msg


def forward() -> EmailMessage:
    msg = message("Fwd: minutes", date=at(2, 16), text="Forwarding the minutes below.")
    msg.add_attachment(message("Minutes", date=at(1, 16), text="Inner minutes text"))  # message/rfc822
    return msg


def html_with_inline_logo() -> EmailMessage:
    msg = message("Brand update", date=at(2, 12), html="<p>Our new logo:</p><img src='cid:logo@example.com'>")
    msg.add_related(
        b"\x89PNG\r\n\x1a\n" + b"\0" * 64, maintype="image", subtype="png", cid="<logo@example.com>"
    )
    return msg


HTML_NEWSLETTER = (
    "<html><head><title>Budget letter title</title><style>.x { color: red }</style></head>"
    "<body><script>document.write('SCRIPTTEXT')</script><div>Hello <b>Alice</b>,</div>"
    "<p>The budget is&nbsp;approved.</p><!-- COMMENTTEXT --></body></html>"
)

# (mailbox, message, arrival) in the order appended: UIDs follow this order, arrivals do not.
ALICE_MAIL: list[tuple[str, bytes, datetime]] = [
    ("INBOX", bytes(message("Newsletter", date=at(6), html=HTML_NEWSLETTER)), at(6)),
    (
        "INBOX",
        bytes(message("Quarterly numbers", date=at(7), text="Please review the budget before Friday.")),
        at(7),
    ),
    (
        "INBOX",
        bytes(
            message(
                "Réunion budget 2026 — état",
                date=at(5),
                sender="René Dupont <rene@example.com>",
                cc='Zoë Weiß <zoe@example.com>, "Doe, John" <john@example.com>',
                text="Ordre du jour : le budget trimestriel.",
            )
        ),
        at(5),
    ),
    # A forged Date header far in the future, but it arrived first: it must not come first.
    (
        "INBOX",
        bytes(message("Budget forecast", date=datetime(2031, 1, 1, tzinfo=UTC), text="Win big")),
        at(1, month=12, year=2025),
    ),
    ("INBOX", japanese(), at(3)),
    ("INBOX", latin1(), at(1, 10)),
    (
        "INBOX",
        bytes(message("Lunch", date=at(4), text="Plain version: lunch at noon.", html="<p>HTML version</p>")),
        at(4),
    ),
    (
        "INBOX",
        bytes(
            with_attachment(
                "Report attached",
                date=at(2),
                text="See the attached report.",
                payload=PDF_PAYLOAD,
                filename="report.pdf",
            )
        ),
        at(2),
    ),
    ("INBOX", bytes(html_with_inline_logo()), at(2, 12)),
    ("INBOX", bytes(invoice()), at(2, 15)),
    ("INBOX", bytes(forward()), at(2, 16)),
    (
        "INBOX",
        bytes(
            message(
                "All hands",
                date=at(8),
                to=", ".join(f"Person {i} <p{i}@example.com>" for i in range(30)),
                text="Everyone is invited. " * 200,
            )
        ),
        at(8),
    ),
    (
        "INBOX",
        raw(
            [
                "From: sam@example.com",
                "Subject: =?utf-8?q?Hello=E2=80=AEevil=07bell?=",
                "Date: Fri, 09 Jan 2026 09:00:00 +0000",
            ],
            b"Control characters\r\n",
        ),
        at(9),
    ),
    ("Sent", bytes(message("Proposal sent", date=at(10), text="Our proposal, as promised.")), at(10)),
    ("Sent", bytes(message("Proposal follow-up", date=at(12), text="Any news on the proposal?")), at(12)),
    ("Drafts", bytes(message("Proposal v2", date=at(11), text="Draft of the proposal")), at(11)),
    ("Trash", bytes(message("Old proposal", date=at(1), text="Outdated proposal")), at(1)),
]

INBOX_SIZE = sum(mailbox == "INBOX" for mailbox, _, _ in ALICE_MAIL)

LEGACY_MAIL: list[tuple[str, bytes, datetime]] = [
    ("INBOX", bytes(message("Ticket 2", date=at(2), text="ticket")), at(2)),
    ("INBOX", bytes(message("Ticket 3", date=at(3), text="ticket")), at(3)),
    ("INBOX", bytes(message("Ticket 1", date=at(1), text="ticket")), at(1)),
    ("INBOX", bytes(message("Réunion du lundi", date=at(4), text="ordre du jour")), at(4)),
    ("Sent Items", bytes(message("Ticket answered", date=at(5), text="ticket")), at(5)),
    ("Deleted Items", bytes(message("Ticket spam", date=at(6), text="ticket")), at(6)),
]


@pytest.fixture(scope="module")
def server() -> Iterator[DovecotServer]:
    dovecot = DovecotServer([ALICE, LEGACY, MALLORY, BULK, RACER, OLD_RACER]).start()
    try:
        for user, mail in (("alice", ALICE_MAIL), ("legacy", LEGACY_MAIL)):
            for mailbox, data, arrival in mail:
                dovecot.deliver(user, mailbox, data, date=arrival)
        yield dovecot
    finally:
        dovecot.stop()


def make_tool(server: DovecotServer, user: str = "alice", **overrides: Any) -> SearchEmailsTool:
    values = {**server.imap_settings(user), "imap_timeout": timedelta(seconds=10), **overrides}
    tool = SearchEmailsTool.from_settings(Settings(**values))
    assert tool is not None
    return tool


@pytest.fixture(scope="module")
async def alice(server: DovecotServer) -> AsyncIterator[SearchEmailsTool]:
    tool = make_tool(server)
    try:
        yield tool
    finally:
        await tool.aclose()


async def search(tool: SearchEmailsTool, query: str, **arguments: Any) -> list[dict[str, Any]]:
    result = await tool.run({"query": query, **arguments}, CONTEXT)
    assert set(result) == {"emails"}
    emails: list[dict[str, Any]] = result["emails"]
    return emails


def subjects(emails: list[dict[str, Any]]) -> list[str]:
    return [email["subject"] for email in emails]


async def test_matches_in_subject_and_body_come_newest_first_with_decoded_headers(
    alice: SearchEmailsTool,
) -> None:
    emails = await search(alice, "budget")
    # By arrival, not UID (appended Newsletter, Quarterly, Réunion) nor the forged Date header.
    assert subjects(emails) == [
        "Quarterly numbers",
        "Newsletter",
        "Réunion budget 2026 — état",
        "Budget forecast",
    ]
    reunion = emails[2]
    assert reunion == {
        "id": reunion["id"],
        "from": "René Dupont <rene@example.com>",
        "to": ["Alice Martin <alice@example.com>"],
        "cc": ["Zoë Weiß <zoe@example.com>", '"Doe, John" <john@example.com>'],
        "subject": "Réunion budget 2026 — état",
        "date": "2026-01-05T09:00:00+00:00",
        "snippet": "Ordre du jour : le budget trimestriel.",
        "folder": "inbox",
        "has_attachments": False,
    }
    assert re.fullmatch(r"INBOX:\d+:\d+", reunion["id"])
    assert len({email["id"] for email in emails}) == 4
    assert emails[3]["date"] == "2031-01-01T00:00:00+00:00"  # the Date header, as written
    assert [e["id"] for e in await search(alice, "budget")] == [e["id"] for e in emails]  # stable


async def test_limit_keeps_the_newest(alice: SearchEmailsTool) -> None:
    assert subjects(await search(alice, "budget", limit=2)) == ["Quarterly numbers", "Newsletter"]
    assert len(await search(alice, "", limit=100)) == INBOX_SIZE  # an empty query lists the whole inbox
    assert subjects(await search(alice, "", limit=1)) == [
        "Helloevil bell"  # the newest; its U+202E and BEL are gone
    ]


@pytest.mark.parametrize(
    ("query", "subject"),
    [
        ("Réunion", "Réunion budget 2026 — état"),  # RFC 2047 subject, searched as UTF-8
        ("Zoë", "Réunion budget 2026 — état"),  # a Cc display name
        ("rene@example.com", "Réunion budget 2026 — état"),  # an address
        ("会議", "会議の議題"),  # ISO-2022-JP subject and body
        ("crème", "Café crème"),  # ISO-8859-1, quoted-printable
        ("lunch at noon", "Lunch"),  # a phrase in the body
    ],
)
async def test_non_ascii_and_header_queries(alice: SearchEmailsTool, query: str, subject: str) -> None:
    assert subjects(await search(alice, query)) == [subject]


async def test_decodes_other_charsets(alice: SearchEmailsTool) -> None:
    (jp,) = await search(alice, "会議")
    assert jp["from"] == "山田太郎 <taro@example.jp>"
    assert jp["snippet"] == "来週の会議について相談させてください。"
    (cafe,) = await search(alice, "crème")
    assert cafe["from"] == "André <andre@example.fr>"
    assert cafe["snippet"] == "Un café crème au menu, s'il vous plaît."


async def test_snippets_are_plain_text(alice: SearchEmailsTool) -> None:
    (newsletter,) = await search(alice, "Newsletter")
    assert newsletter["snippet"] == "Hello Alice, The budget is approved."
    (lunch,) = await search(alice, "Lunch")
    assert lunch["snippet"] == "Plain version: lunch at noon."  # the text/plain alternative
    (everyone,) = await search(alice, "All hands")
    assert len(everyone["snippet"]) <= 200 and everyone["snippet"].endswith("…")
    assert everyone["snippet"].startswith("Everyone is invited. Everyone is invited.")
    assert len(everyone["to"]) == 10 and everyone["to"][0] == "Person 0 <p0@example.com>"


async def test_attachments(alice: SearchEmailsTool) -> None:
    (report,) = await search(alice, "Report attached")
    assert report["has_attachments"] is True
    assert report["snippet"] == "See the attached report."
    (brand,) = await search(alice, "Brand update")
    assert brand["has_attachments"] is False  # an inline image of the HTML body is no attachment
    assert brand["snippet"] == "Our new logo:"
    assert all(not e["has_attachments"] for e in await search(alice, "budget"))


async def test_the_usual_mime_shapes(alice: SearchEmailsTool) -> None:
    (bill,) = await search(alice, "Invoice 42")
    assert bill["snippet"] == "Invoice 42 is attached. Total: 1 200 €." and bill["has_attachments"] is True
    (forwarded,) = await search(alice, "Fwd: minutes")
    assert forwarded["snippet"] == "Forwarding the minutes below." and forwarded["has_attachments"] is True


async def test_a_query_matching_nothing_gives_an_empty_list(alice: SearchEmailsTool) -> None:
    assert await alice.run({"query": "no such words anywhere"}, CONTEXT) == {"emails": []}


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("sent", ["Proposal follow-up", "Proposal sent"]),
        ("drafts", ["Proposal v2"]),
        ("trash", ["Old proposal"]),
        ("inbox", []),
    ],
)
async def test_folders(alice: SearchEmailsTool, folder: str, expected: list[str]) -> None:
    emails = await search(alice, "proposal", folder=folder)
    assert subjects(emails) == expected
    assert all(email["folder"] == folder for email in emails)
    mailbox = {"sent": "Sent", "drafts": "Drafts", "trash": "Trash"}.get(folder)
    assert all(email["id"].startswith(f"{mailbox}:") for email in emails)


async def test_hostile_queries_cannot_run_commands(alice: SearchEmailsTool, server: DovecotServer) -> None:
    before = server.flags("alice", "INBOX")
    for query in (
        'foo" ) UID STORE 1:* +FLAGS (\\Deleted',
        "x\r\nA1 UID STORE 1:* +FLAGS (\\Deleted)\r\nA2 EXPUNGE",
        '") ALL (OR "',
        "{5}\r\nhello",
    ):
        assert await search(alice, query) == []
    after = server.flags("alice", "INBOX")
    assert after == before and len(after) == INBOX_SIZE
    assert not any("\\Deleted" in flags for flags in after.values())


async def test_searching_does_not_mark_messages_read(alice: SearchEmailsTool, server: DovecotServer) -> None:
    assert len(await search(alice, "", limit=100)) == INBOX_SIZE
    assert all("\\Seen" not in flags for flags in server.flags("alice", "INBOX").values())


async def eventually(condition: Any, *, seconds: float = 5.0) -> None:
    """Wait for Dovecot's log (written by its log process, a little later) to show something."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "Dovecot's log did not show it in time"
        await asyncio.sleep(0.05)


async def test_a_big_attachment_is_never_downloaded(server: DovecotServer) -> None:
    archive = with_attachment(
        "Quarterly archive",
        date=at(13),
        text="The archive is attached.",
        payload=b"Z" * (3 << 20),
        filename="archive.pdf",
    )
    server.deliver("alice", "Trash", bytes(archive), date=at(13))
    tool = make_tool(server)
    (found,) = await search(tool, "Quarterly archive", folder="trash")
    await tool.aclose()
    assert found["has_attachments"] is True and found["snippet"] == "The archive is attached."
    session = server.logins("alice")[-1].session  # the tool's: deliver's login came before
    await eventually(lambda: server.bytes_sent(session) is not None)
    sent = server.bytes_sent(session)
    assert sent is not None and sent < 50_000  # of a message of more than 4 MB


@pytest.mark.parametrize("tls", ["ssl", "starttls", "none"])
async def test_tls_modes(server: DovecotServer, tls: str) -> None:
    before = len(server.logins("alice"))
    tool = make_tool(server, **server.imap_settings("alice", tls=tls))
    try:
        assert subjects(await search(tool, "Réunion")) == ["Réunion budget 2026 — état"]
    finally:
        await tool.aclose()
    await eventually(lambda: len(server.logins("alice")) == before + 1)
    assert server.logins("alice")[-1].tls is (tls != "none")


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
async def test_an_untrusted_certificate_is_refused(server: DovecotServer, tls: str) -> None:
    tool = make_tool(server, **{**server.imap_settings("alice", tls=tls), "imap_ca_file": None})
    with pytest.raises(ToolFailed) as failed:
        await search(tool, "budget")
    assert failed.value.code == "imap_tls_failed"
    assert "certificate" in failed.value.message and "not trusted" in failed.value.message


async def test_wrong_password_fails_fast_and_for_good(server: DovecotServer) -> None:
    tool = make_tool(server, imap_password=SecretStr("not-the-password"))
    started = time.monotonic()
    with pytest.raises(ToolFailed) as failed:
        await search(tool, "budget")
    assert time.monotonic() - started < 5
    assert failed.value.code == "imap_auth_failed"
    assert "alice" in failed.value.message and "Authentication failed" in failed.value.message
    assert "not-the-password" not in failed.value.message


async def test_a_dead_server_is_a_temporary_failure(server: DovecotServer) -> None:
    tool = make_tool(server, imap_port=free_port())
    with pytest.raises(ToolTemporarilyFailed, match=r"cannot connect to the IMAP server at 127\.0\.0\.1"):
        await search(tool, "budget")


@pytest.mark.parametrize("tls", ["ssl", "none"])
async def test_a_server_that_never_answers_times_out(server: DovecotServer, tls: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connections complete in the kernel; nobody ever speaks
        tool = make_tool(
            server, imap_port=silent.getsockname()[1], imap_tls=tls, imap_timeout=timedelta(seconds=1)
        )
        started = time.monotonic()
        with pytest.raises(ToolTemporarilyFailed, match="did not answer"):
            await search(tool, "budget")
        assert time.monotonic() - started < 5


async def test_one_login_serves_many_searches(server: DovecotServer) -> None:
    tool = make_tool(server)
    before = len(server.logins("alice"))
    try:
        await search(tool, "budget")
        await search(tool, "proposal", folder="sent")
        results = await asyncio.gather(*(search(tool, "Lunch") for _ in range(3)))
    finally:
        await tool.aclose()
    assert [subjects(r) for r in results] == [["Lunch"]] * 3
    await asyncio.sleep(0.5)  # time for the log to show any further login
    assert len(server.logins("alice")) == before + 1


async def test_reconnects_after_being_disconnected(server: DovecotServer) -> None:
    tool = make_tool(server)
    before = len(server.logins("alice"))
    retried = "kept IMAP session lost; retrying on a new one"
    try:
        assert len(await search(tool, "budget")) == 4
        with structlog.testing.capture_logs() as kicked:
            server.kick("alice")
            await asyncio.sleep(0.5)  # the disconnection is seen before the next search
            assert len(await search(tool, "budget")) == 4
        assert retried not in [entry["event"] for entry in kicked]
        # A restart not yet noticed when the next search starts (the loop was blocked): that
        # search finds its kept connection gone mid-command and runs again on a new one.
        with structlog.testing.capture_logs() as restarted:
            server.restart()
            assert len(await search(tool, "budget")) == 4
        assert retried in [entry["event"] for entry in restarted]
    finally:
        await tool.aclose()
    await eventually(lambda: len(server.logins("alice")) >= before + 3)
    await asyncio.sleep(0.5)
    assert len(server.logins("alice")) == before + 3


async def test_a_silently_dead_connection_is_replaced(server: DovecotServer, monkeypatch: Any) -> None:
    # As if the kept connection had been idle for long: it is probed with NOOP before use.
    monkeypatch.setattr(tools.imap, "_PROBE_AFTER_IDLE", 0.0)
    monkeypatch.setattr(tools.imap, "_PROBE_TIMEOUT", 0.5)
    tool = make_tool(server)
    before = len(server.logins("alice"))
    try:
        assert len(await search(tool, "budget")) == 4
        await eventually(lambda: len(server.logins("alice")) == before + 1)
        frozen = server.logins("alice")[-1].pid
        os.kill(frozen, signal.SIGSTOP)  # the TCP connection stays up; nothing answers on it
        try:
            started = time.monotonic()
            assert len(await search(tool, "budget")) == 4
            assert time.monotonic() - started < 3  # the probe's 0.5 s, not the 10 s command timeout
        finally:
            os.kill(frozen, signal.SIGCONT)
    finally:
        await tool.aclose()
    await eventually(lambda: len(server.logins("alice")) == before + 2)  # a new session took over


async def test_legacy_server_order_and_non_ascii_query(server: DovecotServer) -> None:
    tool = make_tool(server, "legacy")
    try:
        assert subjects(await search(tool, "ticket")) == ["Ticket 3", "Ticket 2", "Ticket 1"]
        assert subjects(await search(tool, "ticket", limit=1)) == ["Ticket 3"]
        assert subjects(await search(tool, "Réunion")) == ["Réunion du lundi"]
    finally:
        await tool.aclose()


async def test_legacy_folders_found_by_name(server: DovecotServer) -> None:
    tool = make_tool(server, "legacy")
    try:
        (sent,) = await search(tool, "ticket", folder="sent")
        assert sent["subject"] == "Ticket answered" and sent["id"].startswith("Sent Items:")
        (trash,) = await search(tool, "ticket", folder="trash")
        assert trash["subject"] == "Ticket spam" and trash["id"].startswith("Deleted Items:")
        with pytest.raises(ToolFailed) as failed:
            await search(tool, "ticket", folder="drafts")
        assert failed.value.code == "folder_not_found"
        assert "drafts" in failed.value.message and "Drafts" in failed.value.message
        assert len(await search(tool, "ticket")) == 3  # the session survived the refusal
        # A folder created later is found by the same session.
        logins = len(server.logins("legacy"))
        server.deliver(
            "legacy", "Drafts", bytes(message("Ticket draft", date=at(7), text="ticket")), date=at(7)
        )
        assert subjects(await search(tool, "ticket", folder="drafts")) == ["Ticket draft"]
        await eventually(lambda: len(server.logins("legacy")) >= logins + 1)
        await asyncio.sleep(0.3)
        assert len(server.logins("legacy")) == logins + 1  # deliver's own login, no new one for the tool
    finally:
        await tool.aclose()


async def test_an_account_with_thousands_of_folders(server: DovecotServer) -> None:
    # Over plain TCP one read can hold the whole LIST answer (2,000 lines): aioimaplib's own
    # line loop, one recursion level per line, would overflow there and drop the connection.
    server.make_folders("legacy", [f"Project {i:04d}" for i in range(2000)])
    tool = make_tool(server, **server.imap_settings("legacy", tls="none"))
    try:
        assert subjects(await search(tool, "ticket", folder="trash")) == ["Ticket spam"]
    finally:
        await tool.aclose()


def hostile_mail() -> list[tuple[str, bytes]]:
    """(subject, message) of mail strangers can send: each broke every search that found it."""
    head = ["From: Sam <sam@example.com>", "To: mallory@example.com", "MIME-Version: 1.0"]
    dated = [*head, "Date: Sat, 10 Jan 2026 09:00:00 +0000"]

    def plain(subject: str, charset: str, body: bytes, *, cte: str = "7bit") -> bytes:
        headers = [f"Content-Type: text/plain; charset={charset}", f"Content-Transfer-Encoding: {cte}"]
        return raw([*dated, f"Subject: {subject}", *headers], body)

    bomb = base64.encodebytes(bz2.compress(b"A" * 50_000_000))  # a few hundred bytes
    return [
        ("Charset undefined", plain("Charset undefined", "undefined", b"Plain words undefined\r\n")),
        ("Charset idna", plain("Charset idna", "idna", b"Plain words idna\r\n")),
        ("Charset rot13", plain("Charset rot13", "rot13", b"Plain words rot13\r\n")),
        ("Charset bz2", plain("Charset bz2", "bz2", bomb, cte="base64")),
        (
            "Control characters in HTML",
            raw(
                [*dated, "Subject: Control characters in HTML", "Content-Type: text/html; charset=utf-8"],
                b"<p>Hello\x0cthere\x01friend</p>\r\n",
            ),
        ),
        (
            "Nested comments",
            raw(
                [
                    *dated[1:],
                    "From: " + "(" * 400 + "x" + ")" * 400 + " <deep@example.com>",
                    "Subject: Nested comments",
                ],
                b"Deep sender\r\n",
            ),
        ),
        (
            "Year too large",
            raw(
                [*head, "Date: Mon, 01 Jan 99999999999999999999 00:00:00 +0000", "Subject: Year too large"],
                b"Odd date\r\n",
            ),
        ),
        (
            "Broken encoded words",
            raw(
                [
                    *dated,
                    "Subject: =?unknown-8bit?q?caf=E9?= =?utf-8?b?!!!?= =?bz2?b?QlpoOTFBWSZTWQ==?= Broken",
                ],
                b"Garbled subject\r\n",
            ),
        ),
    ]


async def test_hostile_mail_never_breaks_a_search(server: DovecotServer) -> None:
    mail = hostile_mail()
    server.deliver_many("mallory", "INBOX", [(data, at(10, hour)) for hour, (_, data) in enumerate(mail)])
    tool = make_tool(server, "mallory")
    try:
        emails = {email["subject"]: email for email in await search(tool, "", limit=100)}
    finally:
        await tool.aclose()
    assert len(emails) == len(mail)
    assert emails["Charset undefined"]["snippet"] == "Plain words undefined"  # read as UTF-8
    assert emails["Charset idna"]["snippet"] == "Plain words idna"
    assert emails["Charset rot13"]["snippet"] == "Plain words rot13"
    assert len(emails["Charset bz2"]["snippet"]) <= 200  # never decompressed
    assert emails["Control characters in HTML"]["snippet"] == "Hello there friend"
    assert "deep@example.com" in emails["Nested comments"]["from"]
    assert emails["Year too large"]["date"] == at(10, 6).isoformat()  # the arrival time instead
    assert any(subject.endswith("Broken") for subject in emails)
    for email in emails.values():
        assert set(email) == {
            "id",
            "from",
            "to",
            "cc",
            "subject",
            "date",
            "snippet",
            "folder",
            "has_attachments",
        }
        text = json.dumps(email, ensure_ascii=False)
        text.encode()  # no lone surrogates
        assert "\x00" not in text


async def test_huge_headers_are_neither_downloaded_nor_parsed_whole(server: DovecotServer) -> None:
    """30,000 recipients and a 200 KB subject of encoded words: the email package takes
    seconds over such headers, holding up the worker; only their start is needed."""
    recipients = ", ".join(f"Person {i} <p{i}@example.com>" for i in range(30_000))
    subject = "Header bomb " + " ".join(["=?utf-8?q?caf=C3=A9?="] * 10_000)
    data = raw(
        [
            "From: Sam <sam@example.com>",
            f"To: {recipients}",
            f"Subject: {subject}",
            "Date: Sat, 10 Jan 2026 09:00:00 +0000",
        ],
        b"Small body\r\n",
    )
    server.deliver("mallory", "Trash", data, date=at(11))
    tool = make_tool(server, "mallory")
    try:
        started = time.monotonic()
        (found,) = await search(tool, "", folder="trash")
        elapsed = time.monotonic() - started
    finally:
        await tool.aclose()
    assert elapsed < 1.5, f"the search took {elapsed:.1f} s"
    # Adjacent encoded words join without the space between them (RFC 2047).
    assert found["subject"].startswith("Header bomb cafécafé") and len(found["subject"]) <= 300
    assert found["to"][:2] == ["Person 0 <p0@example.com>", "Person 1 <p1@example.com>"]
    assert found["snippet"] == "Small body"
    session = server.logins("mallory")[-1].session
    await eventually(lambda: server.bytes_sent(session) is not None)
    sent = server.bytes_sent(session)
    assert sent is not None and sent < 150_000, sent  # of headers over 1 MB


async def test_a_full_result_fits_a_tool_result(server: DovecotServer) -> None:
    """100 emails with long subjects, names and snippets: the JSON stays under the 100,000
    characters where the activity would cut it mid-value."""
    long_name = "Quinn Alexandra Montgomery-Fitzgerald of the Department of Extremely Long Names"
    mail = [
        (
            bytes(
                message(
                    f"{n:03d} " + "Quarterly planning and budget review for every team " * 6,
                    date=at(1, month=2) + timedelta(minutes=n),
                    sender=f'"{long_name} {n}" <q{n}.{"x" * 40}@example.com>',
                    to=", ".join(f'"{long_name} {i}" <r{i}@example.com>' for i in range(10)),
                    cc=", ".join(f'"{long_name} {i}" <c{i}@example.com>' for i in range(10)),
                    text="Please read the attached plan before Friday's meeting. " * 10,
                )
            ),
            at(1, month=2) + timedelta(minutes=n),
        )
        for n in range(100)
    ]
    server.deliver_many("bulk", "INBOX", mail)
    tool = make_tool(server, "bulk")
    try:
        result = await tool.run({"query": "", "limit": 100}, CONTEXT)
    finally:
        await tool.aclose()
    assert len(json.dumps(result, ensure_ascii=False)) < 100_000
    emails = result["emails"]
    assert len(emails) >= 50 and emails[0]["subject"].startswith("099 Quarterly")  # the newest first
    assert emails[0]["from"].startswith(f"{long_name} 99 <q99.")


@pytest.mark.parametrize("user", ["racer", "old_racer"])
async def test_mail_arriving_during_a_search_is_not_taken_for_a_match(
    server: DovecotServer, user: str, monkeypatch: Any
) -> None:
    """New mail makes the server announce `* N EXISTS` (and `* N RECENT`) with the next
    command's answer; those counts are not UIDs of matches."""
    server.deliver_many(
        user,
        "INBOX",
        [
            (bytes(message("Alpha report", date=at(1), text="first")), at(1)),
            (bytes(message("Beta notes", date=at(2), text="second")), at(2)),
            (bytes(message("Gamma report", date=at(3), text="third")), at(3)),
        ],
    )
    examine = ImapSession.examine

    async def examine_then_deliver(session: ImapSession, mailbox: str) -> int:
        uidvalidity = await examine(session, mailbox)
        arrival = bytes(message("Delta unrelated", date=at(4), text="fourth"))
        await asyncio.to_thread(server.deliver, user, "INBOX", arrival, date=at(4))
        return uidvalidity

    monkeypatch.setattr(ImapSession, "examine", examine_then_deliver)
    tool = make_tool(server, user)
    try:
        assert subjects(await search(tool, "report")) == ["Gamma report", "Alpha report"]
    finally:
        await tool.aclose()


async def test_a_search_ends_within_its_deadline(server: DovecotServer, monkeypatch: Any) -> None:
    """Each command has its own timeout; the search as a whole has one too, so a server that
    stalls cannot keep the tool busy past the activity's own limit."""
    monkeypatch.setattr(tools.imap, "SEARCH_DEADLINE", 1.0)
    tool = make_tool(server)
    before = len(server.logins("alice"))
    try:
        assert len(await search(tool, "budget")) == 4
        await eventually(lambda: len(server.logins("alice")) == before + 1)
        frozen = server.logins("alice")[-1].pid
        os.kill(frozen, signal.SIGSTOP)  # the kept session's server process stops answering
        try:
            started = time.monotonic()
            with pytest.raises(ToolTemporarilyFailed, match="took longer than 1s"):
                await search(tool, "budget")
            assert time.monotonic() - started < 3  # not the 10 s command timeout
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert len(await search(tool, "budget")) == 4  # a new session serves the next search
    finally:
        await tool.aclose()


class FloodingImapServer:
    """A loopback IMAP server that logs anyone in and answers SEARCH with `flood` bytes."""

    def __init__(self, flood: bytes) -> None:
        self.flood = flood
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "FloodingImapServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1] flooding server ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                literal = re.search(rb"\{(\d+)\}$", rest)
                if literal:  # the password
                    writer.write(b"+ go on\r\n")
                    await reader.readexactly(int(literal.group(1)) + 2)
                command = rest.split(b" ")[0].upper()
                if command == b"CAPABILITY":
                    writer.write(b"* CAPABILITY IMAP4rev1\r\n")
                elif command == b"EXAMINE":
                    writer.write(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")
                elif command == b"UID" and b"SEARCH" in rest:
                    writer.write(self.flood)
                elif command not in (b"LOGIN", b"LOGOUT", b"NOOP"):
                    writer.write(tag + b" BAD not here\r\n")
                    continue
                writer.write(tag + b" OK done\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize(
    "flood",
    [
        b"* SEARCH " + b"1 " * 10_000_000 + b"\r\n",  # one 20 MB line
        b"* SEARCH {20000000}\r\n" + b"1 " * 10_000_000 + b"\r\n",  # a 20 MB literal
    ],
    ids=["line", "literal"],
)
async def test_an_oversized_answer_is_refused(server: DovecotServer, flood: bytes) -> None:
    async with FloodingImapServer(flood) as flooding:
        tool = make_tool(server, imap_port=flooding.port, imap_tls="none")
        try:
            started = time.monotonic()
            with pytest.raises(ToolFailed) as failed:
                await search(tool, "")
            assert time.monotonic() - started < 5
        finally:
            await tool.aclose()
    assert failed.value.code == "imap_response_too_large"
    assert "MiB" in failed.value.message


def test_hostile_server_data_is_read_without_raising() -> None:
    """What Dovecot never sends: NUL bytes in a line, a BODYSTRUCTURE thousands of levels deep."""
    assert parse_records([b"* 1 FETCH (UID 5 X\x00abc FLAGS (\x001\x00))"]) == [
        ["1", "FETCH", ["UID", "5", "Xabc", "FLAGS", ["1"]]]
    ]
    deep: list[Any] = ["text", "plain", None, None, None, "7bit", "1"]
    for _ in range(5000):
        deep = [deep, "mixed"]
    assert read_structure(deep) == Structure(None, False)


def test_schema() -> None:
    check = SchemaCheck(SearchEmailsTool.spec.input_schema)
    assert check.errors({"query": "x"}) == []
    assert check.errors({"query": "x", "folder": "trash", "limit": 100}) == []
    for bad in (
        {},
        {"query": "x", "limit": 0},
        {"query": "x", "limit": 101},
        {"query": "x", "folder": "spam"},
        {"query": "x", "other": 1},
        {"query": "x" * 1001},
    ):
        assert check.errors(bad), bad
    assert SearchEmailsTool.spec.requires_confirmation is False
    json.dumps(SearchEmailsTool.spec.openai_function())


def test_configuration() -> None:
    base: dict[str, Any] = {"imap_host": "imap.example.com", "imap_user": "me", "imap_password": "pw"}
    assert SearchEmailsTool.from_settings(Settings(**{**base, "imap_host": None})) is None
    assert SearchEmailsTool.from_settings(Settings(**{**base, "imap_user": None})) is None
    assert SearchEmailsTool.from_settings(Settings(**{**base, "imap_password": None})) is None
    from tools.imap import ImapConfig

    ports = {tls: ImapConfig.from_settings(Settings(**base, imap_tls=tls)) for tls in ("ssl", "starttls")}
    assert {tls: c.port for tls, c in ports.items() if c} == {"ssl": 993, "starttls": 143}
    with pytest.raises(ConfigurationError, match="in clear"):
        ImapConfig.from_settings(Settings(**base, imap_tls="none", assistant_env="production"))
    local = ImapConfig.from_settings(Settings(**{**base, "imap_host": "127.0.0.1"}, imap_tls="none"))
    assert local is not None and local.port == 143 and "pw" not in repr(local)
