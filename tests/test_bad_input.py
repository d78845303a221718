"""Malformed and hostile requests: each gets the documented 4xx problem response, never a 500.

The cases are a table; every response is checked as a client would: status, the
`application/problem+json` media type, the stable `code`, `request_id` matching the
`X-Request-ID` header, and `errors[]` naming the offending field.
"""

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from core.config import Settings
from store import users
from store.db import Pool
from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn

MIB = 1 << 20
_NO_JSON = object()


@dataclass
class World:
    """One user with a conversation and a finished turn, shared by the table's cases."""

    client: httpx.AsyncClient
    base_url: str
    conv: str
    turn: str
    key_id: str


@pytest.fixture(scope="module")
async def world(pool: Pool, api_url: str, model: Any, settings: Settings) -> AsyncIterator[World]:
    # The oversize cases below are sized for the default limit.
    assert settings.max_request_bytes == MIB and settings.max_message_chars == 100_000
    owner = await users.create_user(pool, name="bad-input")
    key = await users.create_key(pool, user_id=owner.id, name="bad-input")
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=60
    ) as client:
        tag = marker()
        model.script(tag, [{"kind": "reply", "content": "fine"}])
        conv = await create_conversation(client, title="bad input")
        started = await start_turn_json(client, conv["id"], f"hello {tag}")
        assert (await wait_turn(client, started["turn"]["id"]))["status"] == "completed"
        yield World(client, api_url, conv["id"], started["turn"]["id"], key.id)


def assert_problem(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """The response is the RFC 9457 problem a client expects; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"].endswith(code) and body["title"] and body["detail"], body
    request_id = response.headers["x-request-id"]
    assert request_id and body["request_id"] == request_id, (body, request_id)
    if field is not None:
        assert any(e["field"] == field for e in body.get("errors", [])), body
        for error in body["errors"]:
            assert set(error) >= {"field", "location", "message", "type"}, error
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    return body


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # `{conv}` and `{turn}` are the world's conversation and turn
    status: int
    code: str
    field: str | None = None
    json: Any = _NO_JSON
    content: bytes | None = None
    chunked: bool = False  # send `content` without Content-Length
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, str] | None = None
    auth: bool = True


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


CONVS = "/api/v1/conversations"
CONV = "/api/v1/conversations/{conv}"
MESSAGES = "/api/v1/conversations/{conv}/messages"
TURN = "/api/v1/turns/{turn}"
EVENTS = "/api/v1/turns/{turn}/events"
JSON_ACCEPT = {"Accept": "application/json"}
SSE_ACCEPT = {"Accept": "text/event-stream"}
JSON_TYPE = {"Content-Type": "application/json"}

BAD_REQUESTS: dict[str, Case] = {
    # Not JSON at all, or JSON of the wrong shape.
    "not-json": Case("POST", CONVS, 400, "invalid_json", content=b"{title: nope", headers=JSON_TYPE),
    "truncated-json": Case("POST", CONVS, 400, "invalid_json", content=b'{"title": "x"', headers=JSON_TYPE),
    "invalid-utf8": Case(
        "POST", CONVS, 400, "invalid_json", content=b'{"title": "\xff\xfe\xc3"}', headers=JSON_TYPE
    ),
    "invalid-utf8-message": Case(
        "POST", MESSAGES, 400, "invalid_json", content=b'{"content": "\xc3\x28"}', headers=JSON_TYPE
    ),
    "empty-body": Case("POST", CONVS, 422, "validation_failed", "body", content=b"", headers=JSON_TYPE),
    "array-body": Case("POST", CONVS, 422, "validation_failed", "body", json=[{"title": "x"}]),
    "string-body": Case("POST", CONVS, 422, "validation_failed", "body", json="title"),
    "array-message": Case("POST", MESSAGES, 422, "validation_failed", "body", json=["hi"]),
    "content-number": Case("POST", MESSAGES, 422, "validation_failed", "content", json={"content": 5}),
    "content-null": Case("POST", MESSAGES, 422, "validation_failed", "content", json={"content": None}),
    "content-missing": Case("POST", MESSAGES, 422, "validation_failed", "content", json={}),
    "content-empty": Case("POST", MESSAGES, 422, "validation_failed", "content", json={"content": ""}),
    "content-too-long": Case(
        "POST", MESSAGES, 422, "validation_failed", "content", json={"content": "x" * 100_001}
    ),
    "title-number": Case("POST", CONVS, 422, "validation_failed", "title", json={"title": 12}),
    "tools-string": Case("POST", CONVS, 422, "validation_failed", "tools", json={"tools": "fetch_page"}),
    "tools-numbers": Case("POST", CONVS, 422, "validation_failed", "tools.0", json={"tools": [1]}),
    "metadata-list": Case("POST", CONVS, 422, "validation_failed", "metadata", json={"metadata": [1, 2]}),
    "metadata-string": Case("POST", CONVS, 422, "validation_failed", "metadata", json={"metadata": "x"}),
    "patch-metadata-list": Case("PATCH", CONV, 422, "validation_failed", "metadata", json={"metadata": []}),
    "patch-tools-string": Case("PATCH", CONV, 422, "validation_failed", "tools", json={"tools": "all"}),
    "key-name-number": Case("POST", "/api/v1/auth/keys", 422, "validation_failed", "name", json={"name": 1}),
    # Unknown fields are refused, not ignored.
    "create-unknown-field": Case("POST", CONVS, 422, "validation_failed", "titel", json={"titel": "x"}),
    "update-unknown-field": Case("PATCH", CONV, 422, "validation_failed", "owner", json={"owner": "usr_x"}),
    "update-readonly-field": Case("PATCH", CONV, 422, "validation_failed", "id", json={"id": "conv_x"}),
    "message-role-injection": Case(
        "POST", MESSAGES, 422, "validation_failed", "role", json={"content": "hi", "role": "system"}
    ),
    "key-unknown-field": Case(
        "POST", "/api/v1/auth/keys", 422, "validation_failed", "scopes", json={"scopes": ["admin"]}
    ),
    "unknown-tool": Case("POST", CONVS, 422, "unknown_tool", "tools", json={"tools": ["no_such_tool"]}),
    "patch-unknown-tool": Case("PATCH", CONV, 422, "unknown_tool", "tools", json={"tools": ["no_such_tool"]}),
    # Too large, announced or not.
    "oversize-content-length": Case(
        "POST", CONVS, 413, "payload_too_large", content=b" " * (MIB + 1), headers=JSON_TYPE
    ),
    "oversize-chunked": Case(
        "POST", CONVS, 413, "payload_too_large", content=b" " * (MIB + 1), chunked=True, headers=JSON_TYPE
    ),
    "oversize-chunked-message": Case(
        "POST", MESSAGES, 413, "payload_too_large", content=b" " * (MIB + 1), chunked=True, headers=JSON_TYPE
    ),
    "oversize-chunked-idempotent": Case(
        "POST",
        CONVS,
        413,
        "payload_too_large",
        content=b" " * (MIB + 1),
        chunked=True,
        headers={**JSON_TYPE, "Idempotency-Key": "oversize-chunked"},
    ),
    # Hostile JSON: deep nesting, numbers JSON cannot carry, NUL characters.
    "deep-metadata-unparseable": Case(
        "POST",
        CONVS,
        400,
        "invalid_json",
        content=b'{"metadata": ' + b'{"a": ' * 100_000 + b"{}" + b"}" * 100_001,
        headers=JSON_TYPE,
    ),
    "deep-metadata-idempotent": Case(
        "POST",
        CONVS,
        400,
        "invalid_json",
        content=b'{"metadata": ' + b'{"a": ' * 100_000 + b"{}" + b"}" * 100_001,
        headers={**JSON_TYPE, "Idempotency-Key": "deep-metadata"},
    ),
    "deep-metadata": Case(
        "POST", CONVS, 422, "validation_failed", "metadata", json={"metadata": _nested(500)}
    ),
    "deep-list-metadata": Case(
        "POST",
        CONVS,
        422,
        "validation_failed",
        "metadata",
        content=b'{"metadata": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}",
        headers=JSON_TYPE,
    ),
    "infinite-number": Case(
        "POST",
        CONVS,
        422,
        "validation_failed",
        "metadata",
        content=b'{"metadata": {"n": 1e999}}',
        headers=JSON_TYPE,
    ),
    "nan-literal": Case(
        "POST",
        CONVS,
        422,
        "validation_failed",
        "metadata",
        content=b'{"metadata": {"n": NaN}}',
        headers=JSON_TYPE,
    ),
    "huge-integer": Case(
        "POST",
        CONVS,
        400,
        "invalid_json",
        content=b'{"metadata": {"n": ' + b"9" * 5000 + b"}}",
        headers=JSON_TYPE,
    ),
    "nul-title": Case("POST", CONVS, 422, "validation_failed", "title", json={"title": "a\u0000b"}),
    "nul-system-prompt": Case(
        "POST", CONVS, 422, "validation_failed", "system_prompt", json={"system_prompt": "\u0000"}
    ),
    "nul-model": Case("POST", CONVS, 422, "validation_failed", "model", json={"model": "gpt\u0000"}),
    "nul-metadata-value": Case(
        "POST", CONVS, 422, "validation_failed", "metadata", json={"metadata": {"k": ["ok", "a\u0000"]}}
    ),
    "nul-metadata-key": Case(
        "POST", CONVS, 422, "validation_failed", "metadata", json={"metadata": {"k\u0000": 1}}
    ),
    "nul-patch-title": Case("PATCH", CONV, 422, "validation_failed", "title", json={"title": "\u0000"}),
    "nul-patch-metadata": Case(
        "PATCH", CONV, 422, "validation_failed", "metadata", json={"metadata": {"x": {"y": "\u0000"}}}
    ),
    "nul-content": Case("POST", MESSAGES, 422, "validation_failed", "content", json={"content": "hi\u0000"}),
    "nul-key-name": Case(
        "POST", "/api/v1/auth/keys", 422, "validation_failed", "name", json={"name": "\u0000"}
    ),
    "nul-cursor": Case("GET", CONVS, 422, "validation_failed", "after", params={"after": "conv_\u0000"}),
    "nul-messages-cursor": Case(
        "GET", MESSAGES, 422, "validation_failed", "before", params={"before": "\u0000"}
    ),
    "bad-idempotency-key": Case(
        "POST",
        CONVS,
        422,
        "validation_failed",
        "Idempotency-Key",
        json={},
        headers={"Idempotency-Key": "k" * 256},
    ),
    "bad-idempotency-key-message": Case(
        "POST",
        MESSAGES,
        422,
        "validation_failed",
        "Idempotency-Key",
        json={"content": "hi"},
        headers={"Idempotency-Key": "a\tb"},
    ),
    # Query parameters and resume headers.
    "limit-zero": Case("GET", CONVS, 422, "validation_failed", "limit", params={"limit": "0"}),
    "limit-over-max": Case("GET", CONVS, 422, "validation_failed", "limit", params={"limit": "101"}),
    "limit-not-int": Case("GET", CONVS, 422, "validation_failed", "limit", params={"limit": "ten"}),
    "limit-huge": Case("GET", MESSAGES, 422, "validation_failed", "limit", params={"limit": "9" * 40}),
    "order-unknown": Case("GET", CONVS, 422, "validation_failed", "order", params={"order": "sideways"}),
    "after-and-before": Case(
        "GET", CONVS, 422, "validation_failed", "before", params={"after": "conv_a", "before": "conv_b"}
    ),
    "after-unknown-cursor": Case("GET", CONVS, 422, "invalid_cursor", params={"after": "conv_nope"}),
    "after-too-long": Case("GET", CONVS, 422, "validation_failed", "after", params={"after": "c" * 101}),
    "turns-order-unknown": Case(
        "GET", CONV + "/turns", 422, "validation_failed", "order", params={"order": "up"}
    ),
    "events-after-negative": Case(
        "GET", EVENTS, 422, "validation_failed", "after", params={"after": "-1"}, headers=JSON_ACCEPT
    ),
    "events-after-text": Case("GET", EVENTS, 422, "validation_failed", "after", params={"after": "abc"}),
    "events-limit-zero": Case(
        "GET", EVENTS, 422, "validation_failed", "limit", params={"limit": "0"}, headers=JSON_ACCEPT
    ),
    "last-event-id-text": Case(
        "GET",
        EVENTS,
        422,
        "validation_failed",
        "Last-Event-ID",
        headers={**SSE_ACCEPT, "Last-Event-ID": "abc"},
    ),
    "last-event-id-negative": Case(
        "GET",
        EVENTS,
        422,
        "validation_failed",
        "Last-Event-ID",
        headers={**SSE_ACCEPT, "Last-Event-ID": "-1"},
    ),
    "last-event-id-float": Case(
        "GET",
        EVENTS,
        422,
        "validation_failed",
        "Last-Event-ID",
        headers={**JSON_ACCEPT, "Last-Event-ID": "1.5"},
    ),
    "last-event-id-huge": Case(
        "GET", EVENTS, 422, "validation_failed", "Last-Event-ID", headers={"Last-Event-ID": "9" * 30}
    ),
    "wait-over-max": Case("GET", TURN, 422, "validation_failed", "wait", params={"wait": "61"}),
    "wait-negative": Case("GET", TURN, 422, "validation_failed", "wait", params={"wait": "-1"}),
    "wait-text": Case("GET", TURN, 422, "validation_failed", "wait", params={"wait": "soon"}),
    "wait-infinite": Case("GET", TURN, 422, "validation_failed", "wait", params={"wait": "inf"}),
    "wait-nan": Case("GET", TURN, 422, "validation_failed", "wait", params={"wait": "nan"}),
    # Credentials belong in the Authorization header only.
    "api-key-in-query": Case("GET", "/api/v1/auth/me", 400, "credentials_in_query", params={"api_key": "sk"}),
    "token-in-query": Case("GET", CONVS, 400, "credentials_in_query", params={"token": "sk"}),
    "key-in-query": Case("POST", CONVS, 400, "credentials_in_query", json={}, params={"key": "sk"}),
    "access-token-in-query": Case(
        "GET", "/api/v1/auth/me", 400, "credentials_in_query", params={"ACCESS_TOKEN": "sk"}, auth=False
    ),
    "encoded-key-in-query": Case("GET", "/api/v1/auth/me?api%5Fkey=sk", 400, "credentials_in_query"),
    # Authentication.
    "no-authorization": Case("GET", "/api/v1/auth/me", 401, "unauthenticated", auth=False),
    "no-authorization-post": Case("POST", CONVS, 401, "unauthenticated", json={}, auth=False),
    "no-authorization-idempotent": Case(
        "POST", CONVS, 401, "unauthenticated", json={}, headers={"Idempotency-Key": "anon"}, auth=False
    ),
    "empty-bearer": Case(
        "GET", "/api/v1/auth/me", 401, "unauthenticated", headers={"Authorization": "Bearer"}, auth=False
    ),
    "basic-scheme": Case(
        "GET", "/api/v1/auth/me", 401, "unauthenticated", headers={"Authorization": "Basic dTpw"}, auth=False
    ),
    "wrong-key": Case(
        "GET",
        CONVS,
        401,
        "unauthenticated",
        headers={"Authorization": "Bearer sk-asst-" + "x" * 40},
        auth=False,
    ),
    "wrong-key-events": Case(
        "GET", EVENTS, 401, "unauthenticated", headers={"Authorization": "Bearer nope"}, auth=False
    ),
    # Routes and methods.
    "unknown-route": Case("GET", "/api/v1/nothing-here", 404, "not_found"),
    "unknown-version": Case("GET", "/api/v2/conversations", 404, "not_found"),
    "wrong-method": Case("PUT", CONV, 405, "method_not_allowed", json={}),
    "wrong-method-collection": Case("DELETE", CONVS, 405, "method_not_allowed"),
    "wrong-method-me": Case("POST", "/api/v1/auth/me", 405, "method_not_allowed", json={}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
async def test_bad_request_gets_documented_problem(world: World, case: Case) -> None:
    url = case.path.format(conv=world.conv, turn=world.turn)
    headers = dict(case.headers)
    if not case.auth:
        headers.setdefault("Authorization", "")
    kwargs: dict[str, Any] = {"headers": headers, "params": case.params}
    if case.json is not _NO_JSON:
        kwargs["json"] = case.json
    elif case.content is not None and case.chunked:
        body = case.content

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        kwargs["content"] = chunks()
    elif case.content is not None:
        kwargs["content"] = case.content
    if case.method == "POST" and "/messages" in url:
        headers.setdefault("Accept", "application/json")
    response = await world.client.request(case.method, url, **kwargs)
    assert_problem(response, case.status, case.code, case.field)
    if case.status == 405:
        # Every method the path takes, not only those of the first route that matched it.
        allowed = {"wrong-method": "DELETE, GET, PATCH", "wrong-method-collection": "GET, POST"}
        assert response.headers["allow"] == allowed.get(_case_id(case), "GET"), response.headers


def _case_id(case: Case) -> str:
    return next(name for name, known in BAD_REQUESTS.items() if known is case)


BAD_IDS = {
    "unknown": "conv_0000000000000000000000000",
    "wrong-prefix": "usr_01hzzzzzzzzzzzzzzzzzzzzzzz",
    "garbage": "not-an-id",
    "sql": "x' OR '1'='1",
    "unicode": "конв_😀",
    "percent-nul": "%00",
    "nul-inside": "conv_%00abc",
    "invalid-utf8": "%FF%FE",
    "long": "c" * 4000,
}
ID_ROUTES = {
    "get-conversation": ("GET", "/api/v1/conversations/{id}", None),
    "patch-conversation": ("PATCH", "/api/v1/conversations/{id}", {"title": "x"}),
    "delete-conversation": ("DELETE", "/api/v1/conversations/{id}", None),
    "list-messages": ("GET", "/api/v1/conversations/{id}/messages", None),
    "post-message": ("POST", "/api/v1/conversations/{id}/messages", {"content": "hi"}),
    "list-turns": ("GET", "/api/v1/conversations/{id}/turns", None),
    "get-turn": ("GET", "/api/v1/turns/{id}", None),
    "turn-events": ("GET", "/api/v1/turns/{id}/events", None),
    "cancel-turn": ("POST", "/api/v1/turns/{id}/cancel", None),
    "delete-key": ("DELETE", "/api/v1/auth/keys/{id}", None),
}


@pytest.mark.parametrize("route", list(ID_ROUTES.values()), ids=list(ID_ROUTES))
@pytest.mark.parametrize("bad_id", list(BAD_IDS.values()), ids=list(BAD_IDS))
async def test_unknown_or_malformed_id_is_not_found(
    world: World, route: tuple[str, str, Any], bad_id: str
) -> None:
    method, template, body = route
    # Percent escapes stay as written; anything else is quoted by httpx.
    url = world.base_url + template.format(id=bad_id)
    request = world.client.build_request(method, url, json=body, headers={"Accept": "application/json"})
    response = await world.client.send(request)
    assert_problem(response, 404, "not_found")


async def test_last_event_id_with_non_ascii_digit(world: World) -> None:
    """`"²".isdigit()` is true but `int("²")` fails: the header must still give a 422."""
    response = await world.client.get(
        f"/api/v1/turns/{world.turn}/events", headers={b"Last-Event-ID": "\u00b2".encode("latin-1")}
    )
    assert_problem(response, 422, "validation_failed", "Last-Event-ID")


async def test_request_id_is_echoed(world: World) -> None:
    ok = await world.client.get("/api/v1/auth/me", headers={"X-Request-ID": "client-req.42:a_b"})
    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == "client-req.42:a_b"
    missing = await world.client.get("/api/v1/conversations/conv_nope", headers={"X-Request-ID": "trace-1"})
    body = assert_problem(missing, 404, "not_found")
    assert body["request_id"] == "trace-1"
    # Refusals made before any route runs carry it too.
    refused = await world.client.get(
        "/api/v1/auth/me", params={"api_key": "x"}, headers={"X-Request-ID": "trace-2"}
    )
    assert assert_problem(refused, 400, "credentials_in_query")["request_id"] == "trace-2"
    too_large = await world.client.post(
        "/api/v1/conversations", content=b" " * (MIB + 1), headers={**JSON_TYPE, "X-Request-ID": "trace-3"}
    )
    assert assert_problem(too_large, 413, "payload_too_large")["request_id"] == "trace-3"


async def test_request_id_generated_when_absent(world: World) -> None:
    first = await world.client.get("/api/v1/auth/me")
    second = await world.client.get("/api/v1/auth/me")
    assert first.headers["x-request-id"].startswith("req_")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    "hostile",
    [
        "has space",
        "<script>alert(1)</script>",
        "a" * 129,
        "line\tbreak",
        'quote"s',
        "\u00e9t\u00e9",
        "{jndi:ldap://x}",
    ],
    ids=["space", "html", "too-long", "tab", "quote", "non-ascii", "jndi"],
)
async def test_hostile_request_id_is_replaced(world: World, hostile: str) -> None:
    response = await world.client.get(
        "/api/v1/conversations/conv_nope", headers={b"X-Request-ID": hostile.encode()}
    )
    generated = response.headers["x-request-id"]
    assert generated != hostile and generated.startswith("req_") and generated.isascii()
    assert assert_problem(response, 404, "not_found")["request_id"] == generated


async def test_valid_input_still_accepted(world: World) -> None:
    """The limits above leave room for ordinary data: the table is not just refusing everything."""
    fine = {
        "title": "ünïcödé ✓",
        "tools": [],
        "metadata": {"nested": _nested(10), "n": 10**30, "f": 1.5, "list": [1, "two", None, True]},
    }
    created = await world.client.post("/api/v1/conversations", json=fine)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["metadata"] == fine["metadata"] and body["tools"] == []
    near_limit = await world.client.post(
        f"/api/v1/conversations/{body['id']}/messages",
        json={"content": "x" * 100_000},
        headers={"Accept": "application/json", "Idempotency-Key": "near-limit"},
    )
    assert near_limit.status_code == 202, near_limit.text
    await wait_turn(world.client, near_limit.json()["turn"]["id"])
