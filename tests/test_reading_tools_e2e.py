"""Each reading tool once through a whole turn: the built-in model, scripted to call the tool,
gets the real result (from a real page server, search backend, database and IMAP server) and
answers; the client sees `tool_request` and `tool_result`, and the transcript keeps the result."""

import json
from datetime import UTC, datetime
from email.header import Header
from typing import Any

from tests.conftest import marker
from tests.helpers import create_conversation, read_sse


async def run_tool_turn(user: Any, model: Any, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One turn where the model calls `tool` once, then answers; its events, transcript, requests."""
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "tool_calls", "tool_calls": [{"id": "call_1", "name": tool, "arguments": arguments}]},
            {"kind": "reply", "content": f"Here is what {tool} found."},
        ],
    )
    conversation = await create_conversation(user.client)
    events, response = await read_sse(
        user.client, "POST", f"/api/v1/conversations/{conversation['id']}/messages", json={"content": tag}
    )
    assert response.status_code == 200
    transcript = await user.client.get(f"/api/v1/conversations/{conversation['id']}/messages")
    assert transcript.status_code == 200, transcript.text
    return {
        "events": events,
        "types": [e["type"] for e in events],
        "messages": transcript.json()["data"],
        "model_saw": model.requests(tag)[-1].body["messages"],
    }


def tool_result_of(turn: dict[str, Any], tool: str) -> Any:
    """The ok result of the turn's one call, checked against the request, transcript and model."""
    assert turn["types"][-1] == "complete", turn["types"]
    request = next(e for e in turn["events"] if e["type"] == "tool_request")
    assert request["tool_id"] == tool and request["requires_confirmation"] is False
    outcome = next(e for e in turn["events"] if e["type"] == "tool_result")
    assert outcome["tool_id"] == tool and outcome["tool_call_id"] == request["tool_call_id"]
    assert outcome["status"] == "ok", outcome
    stored = next(m for m in turn["messages"] if m["role"] == "tool")
    assert json.loads(stored["content"]) == outcome["result"]
    told = next(m for m in turn["model_saw"] if m["role"] == "tool")
    assert json.loads(told["content"]) == outcome["result"], "the model got the same result"
    assert turn["events"][-1]["content"] == f"Here is what {tool} found."
    return outcome["result"]


async def test_fetch_page_in_a_turn(user, model, pages):
    pages.page(
        "/e2e/article",
        "<html><head><title>Durable turns</title><meta name='description' content='Why turns survive'>"
        "</head><body><nav>Home | About</nav><article><h1>Durable turns</h1><p>"
        + "A turn is a workflow, so a crash loses nothing of what the assistant already did. " * 8
        + "</p></article><footer>© example</footer></body></html>",
    )
    turn = await run_tool_turn(user, model, "fetch_page", {"url": pages.url("/e2e/article")})
    result = tool_result_of(turn, "fetch_page")
    assert result["title"] == "Durable turns" and result["description"] == "Why turns survive"
    assert result["status"] == 200 and result["final_url"] == pages.url("/e2e/article")
    assert "a crash loses nothing" in result["content"] and result["word_count"] > 100
    assert result["truncated"] is False


async def test_web_search_in_a_turn(user, model, search):
    turn = await run_tool_turn(user, model, "web_search", {"query": "temporal workflows", "num_results": 3})
    result = tool_result_of(turn, "web_search")
    assert 1 <= len(result["results"]) <= 3
    for item in result["results"]:
        assert item["title"] and item["url"].startswith(("http://", "https://"))
    asked = [r for r in search.received if r.query.get("q") == "temporal workflows"]
    assert asked and asked[-1].query["format"] == "json"


async def test_query_database_in_a_turn(user, model):
    turn = await run_tool_turn(
        user,
        model,
        "query_database",
        {
            "query": "SELECT customer, sum(total) AS spent FROM orders WHERE customer = $1 GROUP BY customer",
            "parameters": ["Ada"],
        },
    )
    result = tool_result_of(turn, "query_database")
    assert result == {
        "columns": ["customer", "spent"],
        "rows": [["Ada", "130.49"]],
        "row_count": 1,
        "truncated": False,
    }


async def test_query_database_write_is_a_tool_error_and_the_turn_goes_on(user, model, shop):
    turn = await run_tool_turn(user, model, "query_database", {"query": "DELETE FROM orders"})
    outcome = next(e for e in turn["events"] if e["type"] == "tool_result")
    assert outcome["status"] == "error" and outcome["error"]["code"] == "query_not_read_only"
    assert turn["types"][-1] == "complete"
    again = await run_tool_turn(user, model, "query_database", {"query": "SELECT count(*) FROM orders"})
    assert tool_result_of(again, "query_database")["rows"] == [[3]]


async def test_search_emails_in_a_turn(user, model, mailbox):
    tag = marker()
    for day, subject in ((3, "Réunion budget"), (5, "Budget approuvé")):
        mailbox.deliver(
            "assistant",
            "INBOX",
            (
                f"From: =?utf-8?q?Am=C3=A9lie?= <amelie@example.test>\r\nTo: me@example.test\r\n"
                f"Subject: {Header(subject, 'utf-8').encode()}\r\n"
                f"Date: {day} Nov 2026 09:00:00 +0000\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n\r\nLe budget {tag} est prêt.\r\n"
            ).encode(),
            date=datetime(2026, 11, day, 9, tzinfo=UTC),
        )
    turn = await run_tool_turn(user, model, "search_emails", {"query": tag, "limit": 5})
    emails = tool_result_of(turn, "search_emails")["emails"]
    assert [e["subject"] for e in emails] == ["Budget approuvé", "Réunion budget"], "newest first"
    assert emails[0]["from"] == "Amélie <amelie@example.test>" and emails[0]["folder"] == "inbox"
    assert f"Le budget {tag} est prêt." in emails[0]["snippet"]
