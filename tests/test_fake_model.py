"""Tests of the built-in fake model, driven through the official openai client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fakemodel import FakeModelServer, ScriptBook, demo_answer
from fakemodel.chunks import tokenize

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModelServer]:
    with FakeModelServer(token_delay=0.0) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeModelServer) -> None:
    fake.reset()


@pytest.fixture
async def client(fake: FakeModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    yield c
    await c.close()


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def collect(stream: openai.AsyncStream[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_tokenize_round_trips() -> None:
    for text in ["", "a", "  lead and trail  ", "line\n\nbreak\t tab\n", "日本語 テキスト"]:
        assert "".join(tokenize(text)) == text
    assert tokenize("hello big world") == ["hello", " big", " world"]


async def test_stream_reconstructs_content_and_chunk_shapes(
    fake: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    content = "Hello there,\n\nthis is **scripted** text.  Bye!\n"
    fake.script("shape-test", [{"kind": "reply", "content": content}])
    stream = await client.chat.completions.create(
        model="my-model", messages=user("please shape-test"), stream=True
    )
    chunks = await collect(stream)
    assert text_of(chunks) == content
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert last.choices[0].finish_reason == "stop"
    assert last.choices[0].delta.content is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {first.id} and first.id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"my-model"}
    assert all(c.object == "chat.completion.chunk" and c.system_fingerprint for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert len(chunks) == len(tokenize(content)) + 2


async def test_usage_chunk_only_with_include_usage(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("usage-test", [{"kind": "reply", "content": "one two three"}])
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "usage-test now"},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 3, 7)
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_raw_wire_format(fake: FakeModelServer) -> None:
    fake.script("wire-test", [{"kind": "reply", "content": "a b"}])
    body = {"model": MODEL, "messages": user("wire-test"), "stream": True}
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        resp = await http.post("/chat/completions", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": "", "refusal": None},
        "logprobs": None,
        "finish_reason": None,
    }


async def test_demo_answer_echoes_question(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=user("What is the *capital* of France?"), stream=True
    )
    text = text_of(await collect(stream))
    assert "built-in offline model" in text
    assert "> What is the \\*capital\\* of France?" in text
    assert "OPENAI_BASE_URL" in text and "OPENAI_API_KEY" in text
    assert text == demo_answer("What is the *capital* of France?")


def test_demo_answer_is_sanitized_and_deterministic() -> None:
    question = "```python\n" + "word " * 200 + "\n# heading [link](x) <b>"
    answer = demo_answer(question)
    assert answer == demo_answer(question)
    quoted = next(line for line in answer.splitlines() if line.startswith("> "))
    assert len(quoted) < 260 and quoted.endswith("…")
    assert "```" not in quoted.replace("\\`", "")
    assert answer.count("```") == 0
    assert "*(an empty message)*" in demo_answer("   ")


async def test_non_streaming_reply(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("plain-test", [{"kind": "reply", "content": "Just one answer."}])
    completion = await client.chat.completions.create(model=MODEL, messages=user("plain-test"))
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Just one answer."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_tool_call_deltas_split_and_reassemble(
    fake: FakeModelServer, client: openai.AsyncOpenAI
) -> None:
    args = {"city": "Paris", "units": "metric", "days": [1, 2, 3]}
    fake.script(
        "tool-test",
        [
            {
                "kind": "tool_calls",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "call_given", "name": "get_weather", "arguments": args},
                    {"name": "echo", "arguments": '{"text": "raw string"}'},
                ],
            }
        ],
    )
    stream = await client.chat.completions.create(model=MODEL, messages=user("tool-test"), stream=True)
    chunks = await collect(stream)
    assert text_of(chunks) == "Let me check."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    calls: dict[int, dict] = {}
    pieces: dict[int, int] = {}
    for chunk in chunks:
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.id is not None:
                assert tc.type == "function" and tc.function.arguments == ""
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments
                pieces[tc.index] = pieces.get(tc.index, 0) + 1
    assert calls[0]["id"] == "call_given" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == args
    assert calls[1]["id"].startswith("call_") and calls[1]["name"] == "echo"
    assert calls[1]["arguments"] == '{"text": "raw string"}'
    assert pieces[0] > 2 and pieces[1] > 2


async def test_tool_calls_non_streaming(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("tool-plain", [{"kind": "tool_calls", "tool_calls": [{"name": "noop"}]}])
    completion = await client.chat.completions.create(model=MODEL, messages=user("tool-plain"))
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == ("noop", "{}")


async def test_rate_limit_error_with_retry_after(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("rl-test", [{"kind": "error", "status": 429, "message": "slow", "retry_after": 1}])
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=user("rl-test"), stream=True)
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.message.endswith("slow")


async def test_server_and_bad_request_errors(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("boom-500", [{"kind": "error", "status": 500, "message": "oops"}])
    fake.script(
        "too-long",
        [
            {
                "kind": "error",
                "status": 400,
                "message": "This model's maximum context length is 128000 tokens.",
                "code": "context_length_exceeded",
            }
        ],
    )
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=user("boom-500"), stream=True)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=user("too-long"))
    assert info.value.code == "context_length_exceeded"
    assert info.value.type == "invalid_request_error"


async def test_scripted_401(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("auth-test", [{"kind": "error", "status": 401, "code": "invalid_api_key"}])
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=user("auth-test"))


async def test_api_key_enforced() -> None:
    with FakeModelServer(api_key="sekret") as server:
        bad = openai.AsyncOpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
        good = openai.AsyncOpenAI(base_url=server.base_url, api_key="sekret", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.chat.completions.create(model=MODEL, messages=user("hi"))
        assert info.value.code == "invalid_api_key"
        completion = await good.chat.completions.create(model=MODEL, messages=user("hi"))
        assert "offline model" in (completion.choices[0].message.content or "")
        await bad.close()
        await good.close()


async def test_break_aborts_mid_stream(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("break-test", [{"kind": "break", "content": "a b c d e f g", "after_chunks": 3}])
    stream = await client.chat.completions.create(model=MODEL, messages=user("break-test"), stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as info:
        async for chunk in stream:
            assert chunk.choices[0].finish_reason is None
            if chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["a", " b", " c"]
    assert "incomplete" in str(info.value.__cause__)


async def test_break_non_streaming(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("break-plain", [{"kind": "break", "content": "x y z", "after_chunks": 1}])
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=user("break-plain"))


async def test_steps_in_order_then_last_repeats(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script(
        "order-test",
        [
            {"kind": "error", "status": 503, "message": "warming up"},
            {"kind": "reply", "content": "first"},
            {"kind": "reply", "content": "second"},
        ],
    )
    fake.script("order-test", [{"kind": "reply", "content": "newer script never wins"}])
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=user("order-test"))
    answers = []
    for _ in range(3):
        c = await client.chat.completions.create(model=MODEL, messages=user("order-test"))
        answers.append(c.choices[0].message.content)
    assert answers == ["first", "second", "second"]


async def test_recorded_requests_and_content_parts(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    script_id = fake.script("parts-test", [{"kind": "reply", "content": "ok"}])
    messages: list[Any] = [
        {"role": "user", "content": "earlier parts-test question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": "now parts-test as parts"}]},
    ]
    before = time.time()
    completion = await client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.choices[0].message.content == "ok"
    await client.chat.completions.create(model=MODEL, messages=user("unscripted"))
    recorded = fake.requests()
    assert [r.script_id for r in recorded] == [script_id, None]
    assert recorded[0].body["messages"] == messages and recorded[0].body["model"] == MODEL
    assert recorded[0].received_at >= before
    assert [r.body["messages"][-1]["content"] for r in fake.requests("unscripted")] == ["unscripted"]


async def test_http_scripting_endpoints(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    root = fake.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root) as http:
        resp = await http.post(
            "/_fake/scripts",
            json={"match": "remote-test", "steps": [{"kind": "reply", "content": "from afar"}]},
        )
        script_id = resp.json()["id"]
        completion = await client.chat.completions.create(model=MODEL, messages=user("remote-test"))
        assert completion.choices[0].message.content == "from afar"
        recorded = (await http.get("/_fake/requests", params={"match": "remote"})).json()
        assert len(recorded) == 1 and recorded[0]["script_id"] == script_id
        assert set(recorded[0]) == {"received_at", "script_id", "body"}
        assert (await http.delete("/_fake/scripts")).status_code == 200
        bad = await http.post("/_fake/scripts", json={"match": "x", "steps": [{"kind": "nope"}]})
        assert bad.status_code == 422
    completion = await client.chat.completions.create(model=MODEL, messages=user("remote-test"))
    assert "offline model" in (completion.choices[0].message.content or "")


async def test_malformed_body_is_400(fake: FakeModelServer) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        not_json = await http.post("/chat/completions", content=b"{nope")
        no_messages = await http.post("/chat/completions", json={"model": MODEL})
    for resp in (not_json, no_messages):
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids and len(ids) >= 2
    assert all(m.owned_by == "assistant-fake" for m in models.data)


async def test_delay_paces_stream(fake: FakeModelServer, client: openai.AsyncOpenAI) -> None:
    fake.script("slow-test", [{"kind": "reply", "content": "a b c d e", "delay_ms": 40}])
    start = time.monotonic()
    stream = await client.chat.completions.create(model=MODEL, messages=user("slow-test"), stream=True)
    assert text_of(await collect(stream)) == "a b c d e"
    assert time.monotonic() - start >= 0.18


async def test_serves_while_caller_loop_is_blocked(fake: FakeModelServer) -> None:
    # A sync client inside an async test blocks this loop; the server thread must still answer.
    fake.script("sync-test", [{"kind": "reply", "content": "still here"}])
    sync_client = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    completion = sync_client.chat.completions.create(model=MODEL, messages=user("sync-test"))
    assert completion.choices[0].message.content == "still here"
    sync_client.close()


def test_script_book_validates_steps() -> None:
    book = ScriptBook()
    with pytest.raises(ValueError):
        book.add("x", [])
    with pytest.raises(ValueError):
        book.add("x", [{"kind": "reply"}])


async def test_stop_ends_in_flight_slow_stream_quickly() -> None:
    server = FakeModelServer().start()
    server.script("forever", [{"kind": "reply", "content": "a b c", "delay_ms": 60_000}])
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model=MODEL, messages=user("forever"), stream=True)
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 2
    with pytest.raises(openai.APIConnectionError):
        await stream.__anext__()
    await client.close()


def _offered(*names: str) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]


ALL_TOOLS = ("send_email", "search_emails", "query_database", "web_search", "fetch_page")


@pytest.mark.parametrize(
    ("question", "tool", "arguments"),
    [
        ("email bob@example.test about lunch", "send_email", {"to": "bob@example.test"}),
        ("search my email for invoice 42?", "search_emails", {"query": "invoice 42"}),
        ("SELECT count(*) FROM orders;", "query_database", {"query": "SELECT count(*) FROM orders"}),
        ("search the web for durable workflows", "web_search", {"query": "durable workflows"}),
        ("what does https://example.test/a?b=1. say", "fetch_page", {"url": "https://example.test/a?b=1"}),
    ],
)
def test_demo_model_calls_the_offered_tool_a_request_names(
    question: str, tool: str, arguments: dict[str, Any]
) -> None:
    from fakemodel.demo_tools import demo_step
    from fakemodel.script import ToolCallsStep

    step = demo_step({"messages": user(question), "tools": _offered(*ALL_TOOLS)})
    assert isinstance(step, ToolCallsStep)
    (call,) = step.tool_calls
    assert call.name == tool
    assert isinstance(call.arguments, dict)
    assert {k: call.arguments[k] for k in arguments} == arguments
    # A tool that is not offered is never called: the plain demo answer instead.
    others = [n for n in ALL_TOOLS if n != tool]
    assert demo_step({"messages": user(question), "tools": _offered(*others)}) is None


def test_demo_model_reports_reading_tool_results() -> None:
    from fakemodel.demo_tools import demo_step
    from fakemodel.script import ReplyStep

    def report(result: dict[str, Any]) -> str:
        messages = [*user("q"), {"role": "tool", "tool_call_id": "c", "content": json.dumps(result)}]
        step = demo_step({"messages": messages})
        assert isinstance(step, ReplyStep) and step.content
        return step.content

    page = {"final_url": "https://x.test/", "title": "Home", "content": "Hello there", "word_count": 2}
    assert "**Home** (2 words): Hello there" in report(page)
    assert "[T](https://x.test/)" in report(
        {"results": [{"title": "T", "url": "https://x.test/", "snippet": ""}]}
    )
    assert "**Hi** from Ann <a@x.test>" in report(
        {"emails": [{"date": "2026-01-01", "subject": "Hi", "from": "Ann <a@x.test>"}]}
    )
    assert "| n |" in report({"columns": ["n"], "rows": [[1]], "row_count": 1, "truncated": False})
