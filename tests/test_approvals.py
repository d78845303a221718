"""The approval flow: nothing is sent before a person approves; the approved message is the
one sent, exactly once; rejections, edits, races and cancellation behave as API.md says."""

import asyncio
import json

from tests.conftest import marker
from tests.helpers import create_conversation, read_sse, start_turn_json, wait_turn
from worker import end_orphaned_turns


def email_args(tag: str, **extra):
    return {"to": "bob@example.test", "subject": f"Report {tag}", "body": "<p>Hello <b>Bob</b></p>", **extra}


def script_email(model, tag: str, arguments: dict, then: str = "All done.") -> None:
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"id": "call_mail", "name": "send_email", "arguments": arguments}],
            },
            {"kind": "reply", "content": then},
        ],
    )


async def park(user, model, tag: str, arguments: dict) -> tuple[dict, dict]:
    """Start a turn whose model asks to send an email; return (turn, approval) once it waits."""
    script_email(model, tag, arguments)
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"please mail {tag}")
    turn_id = started["turn"]["id"]
    for _ in range(30):
        turn = (await user.client.get(f"/api/v1/turns/{turn_id}", params={"wait": 10})).json()
        if turn["status"] != "running" and turn["status"] != "queued":
            break
    assert turn["status"] == "awaiting_approval", turn
    assert len(turn["pending_approvals"]) == 1
    return turn, turn["pending_approvals"][0]


async def events_of(user, turn_id: str) -> list[dict]:
    events, _ = await read_sse(user.client, "GET", f"/api/v1/turns/{turn_id}/events")
    return events


async def test_tool_catalog_lists_send_email(user):
    tools = (await user.client.get("/api/v1/tools")).json()
    assert tools["object"] == "list"
    send = next(t for t in tools["data"] if t["name"] == "send_email")
    assert send["requires_confirmation"] is True and send["source"] == "builtin" and send["healthy"] is True
    assert send["input_schema"]["type"] == "object"
    conv = await user.client.post("/api/v1/conversations", json={"tools": ["send_email"]})
    assert conv.status_code == 201 and conv.json()["tools"] == ["send_email"]


async def test_a_tool_no_worker_refreshes_is_shown_unhealthy(user, pool):
    await pool.execute(
        "INSERT INTO tool_catalog (name, description, input_schema, requires_confirmation, source,"
        " updated_at)"
        " VALUES ('ghost_tool', 'gone', $1, false, 'builtin', now() - interval '5 minutes')"
        " ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at",
        {"type": "object"},
    )
    tools = {t["name"]: t for t in (await user.client.get("/api/v1/tools")).json()["data"]}
    assert tools["ghost_tool"]["healthy"] is False
    assert tools["send_email"]["healthy"] is True


async def test_approve_sends_exactly_one_message(user, model, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag, cc=["carol@example.test"]))
    assert approval["tool"] == "send_email" and approval["status"] == "pending"
    assert approval["arguments"]["subject"] == f"Report {tag}"
    await asyncio.sleep(0.5)
    assert mail.messages(tag) == [], "nothing is sent before approval"
    listed = (await user.client.get("/api/v1/approvals", params={"status": "pending"})).json()
    assert approval["id"] in [a["id"] for a in listed["data"]]

    decided = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["status"] == "approved" and body["decided_by"] == user.id and body["decided_at"]

    done = await wait_turn(user.client, turn["id"])
    assert done["status"] == "completed" and done["output"]["content"] == "All done."
    received = mail.messages(tag)
    assert len(received) == 1
    assert sorted(received[0].rcpt_tos) == ["bob@example.test", "carol@example.test"]
    events = await events_of(user, turn["id"])
    types = [e["type"] for e in events]
    order = [types.index(t) for t in ("tool_request", "approval_required", "approval_decided", "tool_result")]
    assert order == sorted(order)
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["status"] == "ok" and result["tool_id"] == "send_email"
    assert result["result"]["message_id"] == str(received[0].message["Message-ID"])
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "awaiting_approval", "running", "completed"]
    # The model saw the tool's result in its next request.
    second = model.requests(tag)[-1].body["messages"]
    tool_message = next(m for m in second if m["role"] == "tool")
    assert tool_message["tool_call_id"] == "call_mail"
    assert json.loads(tool_message["content"])["message_id"] == result["result"]["message_id"]

    again = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert again.status_code == 200 and again.json() == body
    other = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "reject"})
    assert other.status_code == 409 and other.json()["code"] == "approval_already_decided"
    assert len(mail.messages(tag)) == 1


async def test_approve_with_edited_arguments_sends_the_edit(user, model, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    edited = email_args(tag, subject=f"Edited {tag}", to=["dave@example.test"])
    bad = await user.client.post(
        f"/api/v1/approvals/{approval['id']}", json={"decision": "approve", "arguments": {"subject": 3}}
    )
    assert bad.status_code == 422 and bad.json()["code"] == "validation_failed"
    for hostile in (
        email_args(tag, subject=f"Hi {tag}\r\nBcc: eve@example.test"),
        email_args(tag, to="not-an-address"),
    ):
        refused = await user.client.post(
            f"/api/v1/approvals/{approval['id']}", json={"decision": "approve", "arguments": hostile}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"].startswith("arguments.")
    ok = await user.client.post(
        f"/api/v1/approvals/{approval['id']}", json={"decision": "approve", "arguments": edited}
    )
    assert ok.status_code == 200 and ok.json()["arguments"] == edited
    assert ok.json()["requested_arguments"]["subject"] == f"Report {tag}"
    assert (await wait_turn(user.client, turn["id"]))["status"] == "completed"
    received = mail.messages(tag)
    assert len(received) == 1
    assert received[0].message["Subject"] == f"Edited {tag}" and received[0].rcpt_tos == ["dave@example.test"]
    events = await events_of(user, turn["id"])
    decided = next(e for e in events if e["type"] == "approval_decided")
    assert (
        decided["decision"] == "approved"
        and decided["arguments"] == edited
        and decided["decided_by"] == user.id
    )
    requested = next(e for e in events if e["type"] == "tool_request")
    assert requested["arguments"]["subject"] == f"Report {tag}"


async def test_reject_sends_nothing_and_tells_the_model(user, model, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    rejected = await user.client.post(
        f"/api/v1/approvals/{approval['id']}", json={"decision": "reject", "reason": "not now"}
    )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["reason"] == "not now"
    assert (await wait_turn(user.client, turn["id"]))["status"] == "completed"
    assert mail.messages(tag) == []
    events = await events_of(user, turn["id"])
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["status"] == "rejected" and result["result"] == {"status": "rejected", "reason": "not now"}
    tool_message = next(m for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool")
    assert json.loads(tool_message["content"]) == {"status": "rejected", "reason": "not now"}
    late = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert late.status_code == 409 and late.json()["code"] == "approval_already_decided"


async def test_concurrent_decisions_have_one_effect(user, model, mail, pool):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    url = f"/api/v1/approvals/{approval['id']}"
    answers = await asyncio.gather(
        *(user.client.post(url, json={"decision": "approve" if i % 2 else "reject"}) for i in range(20))
    )
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 409}
    winner = (await user.client.get(url)).json()["status"]
    assert winner in ("approved", "rejected")
    # Every 200 reports the winning decision; every 409 is the other one.
    assert all(a.json()["status"] == winner for a in answers if a.status_code == 200)
    assert all(a.json()["code"] == "approval_already_decided" for a in answers if a.status_code == 409)
    applied = await pool.fetchval(
        "SELECT count(*) FROM approval_audit WHERE approval_id = $1 AND outcome = 'applied'", approval["id"]
    )
    assert applied == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM approval_audit WHERE approval_id = $1", approval["id"])
        == 20
    )
    assert (await wait_turn(user.client, turn["id"]))["status"] == "completed"
    assert len(mail.messages(tag)) == (1 if winner == "approved" else 0)


async def test_other_users_approval_is_not_found(user, make_user, model):
    tag = marker()
    _turn, approval = await park(user, model, tag, email_args(tag))
    stranger = await make_user("mallory")
    for response in (
        await stranger.client.get(f"/api/v1/approvals/{approval['id']}"),
        await stranger.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"}),
    ):
        assert response.status_code == 404 and response.json()["code"] == "not_found"
        assert tag not in response.text
    assert (await stranger.client.get("/api/v1/approvals")).json()["data"] == []
    assert (
        await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "reject"})
    ).status_code == 200


async def test_cancel_while_waiting_cancels_the_approval(user, model, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    cancelled = await user.client.post(f"/api/v1/turns/{turn['id']}/cancel")
    assert cancelled.status_code == 202
    # At once, not when the workflow gets round to it: no decision can slip in between.
    assert cancelled.json()["pending_approvals"] == []
    assert (await user.client.get(f"/api/v1/approvals/{approval['id']}")).json()["status"] == "cancelled"
    done = await wait_turn(user.client, turn["id"])
    assert done["status"] == "cancelled" and done["pending_approvals"] == []
    state = (await user.client.get(f"/api/v1/approvals/{approval['id']}")).json()
    assert state["status"] == "cancelled"
    late = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert late.status_code == 409 and late.json()["code"] == "approval_cancelled"
    events = await events_of(user, turn["id"])
    decided = next(e for e in events if e["type"] == "approval_decided")
    assert decided["decision"] == "cancelled" and decided["decided_by"] is None
    assert events[-1]["type"] == "cancelled"
    assert mail.messages(tag) == []


async def test_invalid_arguments_and_unknown_tools_go_back_to_the_model(user, model, mail):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {"id": "call_bad", "name": "send_email", "arguments": {"subject": f"No recipient {tag}"}},
                    {
                        "id": "call_crlf",
                        "name": "send_email",
                        "arguments": email_args(tag, subject=f"Hi {tag}\r\nBcc: eve@example.test"),
                    },
                    {"id": "call_json", "name": "send_email", "arguments": "{not json"},
                    {
                        "id": "call_nul",
                        "name": "send_email",
                        "arguments": email_args(tag, subject="a\u0000b"),
                    },
                    {
                        "id": "call_surrogate",
                        "name": "send_email",
                        "arguments": '{"to": "a@example.test", "subject": "\\ud800", "body": "x"}',
                    },
                    {"id": "call_nope", "name": "launch_rockets", "arguments": {}},
                ],
            },
            {"kind": "reply", "content": "I could not do that."},
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"go {tag}")
    done = await wait_turn(user.client, started["turn"]["id"])
    assert done["status"] == "completed" and done["output"]["content"] == "I could not do that."
    events = await events_of(user, started["turn"]["id"])
    assert not any(e["type"] == "approval_required" for e in events)
    results = {e["tool_call_id"]: e for e in events if e["type"] == "tool_result"}
    assert (
        results["call_bad"]["status"] == "error"
        and results["call_bad"]["error"]["code"] == "invalid_arguments"
    )
    assert any("to" in m for m in results["call_bad"]["error"]["errors"])
    assert results["call_crlf"]["error"]["code"] == "invalid_arguments"
    assert results["call_json"]["error"]["code"] == "invalid_arguments"
    assert results["call_nul"]["error"]["code"] == "invalid_arguments"
    assert results["call_surrogate"]["error"]["code"] == "invalid_arguments"
    assert results["call_nope"]["error"]["code"] == "unknown_tool"
    tool_messages = [m for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool"]
    assert {m["tool_call_id"] for m in tool_messages} == set(results)
    assert mail.messages(tag) == []


async def test_smtp_refusal_is_a_tool_error_and_the_turn_goes_on(user, model, mail):
    tag = marker()
    mail.handler.refuse_rcpt.add(f"nobody-{tag[3:-1]}@example.test")
    turn, approval = await park(user, model, tag, email_args(tag, to=f"nobody-{tag[3:-1]}@example.test"))
    await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert (await wait_turn(user.client, turn["id"]))["status"] == "completed"
    result = next(e for e in await events_of(user, turn["id"]) if e["type"] == "tool_result")
    assert result["status"] == "error" and result["error"]["code"] == "email_rejected"
    assert mail.messages(tag) == []


async def test_two_calls_wait_together_and_both_run(user, model, mail):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {"id": "call_a", "name": "send_email", "arguments": email_args(tag, subject=f"A {tag}")},
                    {"id": "call_b", "name": "send_email", "arguments": email_args(tag, subject=f"B {tag}")},
                ],
            },
            {"kind": "reply", "content": "Both sent."},
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"two mails {tag}")
    turn_id = started["turn"]["id"]
    turn = (await user.client.get(f"/api/v1/turns/{turn_id}", params={"wait": 20})).json()
    assert turn["status"] == "awaiting_approval"
    pending = turn["pending_approvals"]
    assert sorted(a["tool_call_id"] for a in pending) == ["call_a", "call_b"]
    first = await user.client.post(f"/api/v1/approvals/{pending[0]['id']}", json={"decision": "approve"})
    assert first.status_code == 200
    first_subject = f"{'A' if pending[0]['tool_call_id'] == 'call_a' else 'B'} {tag}"
    for _ in range(100):  # the approved call goes out without waiting for its sibling
        if mail.messages(tag):
            break
        await asyncio.sleep(0.05)
    assert [str(m.message["Subject"]) for m in mail.messages(tag)] == [first_subject]
    still = (await user.client.get(f"/api/v1/turns/{turn_id}")).json()
    assert still["status"] == "awaiting_approval" and len(still["pending_approvals"]) == 1
    await user.client.post(f"/api/v1/approvals/{pending[1]['id']}", json={"decision": "approve"})
    done = await wait_turn(user.client, turn_id)
    assert done["status"] == "completed" and done["output"]["content"] == "Both sent."
    assert sorted(str(m.message["Subject"]) for m in mail.messages(tag)) == [f"A {tag}", f"B {tag}"]


async def test_a_model_that_never_stops_calling_tools_hits_the_step_limit(user, model, settings):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"id": "call_loop", "name": "no_such_tool", "arguments": {}}],
            }
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"loop {tag}")
    done = await wait_turn(user.client, started["turn"]["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "max_steps_exceeded" and done["error"]["retryable"] is False
    assert len(model.requests(tag)) == settings.max_steps
    events = await events_of(user, started["turn"]["id"])
    assert events[-1]["type"] == "error" and events[-1]["code"] == "max_steps_exceeded"
    # The model reused one call id every step: each step's call is still answered on its own.
    results = [e for e in events if e["type"] == "tool_result"]
    assert len(results) == settings.max_steps
    last_request = model.requests(tag)[-1].body["messages"]
    assert sum(m["role"] == "tool" for m in last_request) == settings.max_steps - 1


async def test_calls_sharing_an_id_in_one_reply_are_each_answered(user, model):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {"id": "call_0", "name": "first_missing_tool", "arguments": {}},
                    {"id": "call_0", "name": "second_missing_tool", "arguments": {}},
                ],
            },
            {"kind": "reply", "content": "ok"},
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"dup {tag}")
    assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"
    events = await events_of(user, started["turn"]["id"])
    results = [e for e in events if e["type"] == "tool_result"]
    assert [r["tool_id"] for r in results] == ["first_missing_tool", "second_missing_tool"]
    assert len({r["tool_call_id"] for r in results}) == 2
    sent = model.requests(tag)[-1].body["messages"]
    calls = next(m for m in sent if m["role"] == "assistant")["tool_calls"]
    answered = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert sorted(answered) == sorted(c["id"] for c in calls)


async def test_the_offline_demo_model_drafts_an_email_for_approval(user, mail):
    """`assistant dev` without a real model still shows the approval flow end to end."""
    tag = marker()
    conv = await create_conversation(user.client)
    started = await start_turn_json(
        user.client, conv["id"], f"Please email alice@example.test about lunch {tag}"
    )
    turn = (await user.client.get(f"/api/v1/turns/{started['turn']['id']}", params={"wait": 20})).json()
    assert turn["status"] == "awaiting_approval"
    [approval] = turn["pending_approvals"]
    assert approval["arguments"]["to"] == "alice@example.test" and tag in approval["arguments"]["subject"]
    await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    done = await wait_turn(user.client, turn["id"])
    assert done["status"] == "completed"
    [received] = mail.messages(tag)
    assert received.rcpt_tos == ["alice@example.test"]
    assert done["output"]["content"].startswith("Done: the email was accepted for alice@example.test")
    assert str(received.message["Message-ID"]) in done["output"]["content"]


async def test_a_turn_whose_workflow_was_terminated_is_ended(user, model, temporal, pool):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    await temporal.get_workflow_handle(turn["id"]).terminate(reason="operator")
    assert await end_orphaned_turns(temporal, pool, older_than_seconds=0) >= 1
    done = (await user.client.get(f"/api/v1/turns/{turn['id']}")).json()
    assert done["status"] == "failed" and done["error"]["code"] == "internal_error"
    assert (await user.client.get(f"/api/v1/approvals/{approval['id']}")).json()["status"] == "cancelled"
    conv = (await user.client.get(f"/api/v1/conversations/{turn['conversation_id']}")).json()
    assert conv["active_turn_id"] is None
    events = await events_of(user, turn["id"])
    assert events[-1]["type"] == "error" and events[-2]["status"] == "failed"


async def test_wait_after_the_last_decision_waits_for_the_outcome(user, model, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    # One call: it must not answer "awaiting_approval" with nothing pending left to decide.
    after = (await user.client.get(f"/api/v1/turns/{turn['id']}", params={"wait": 20})).json()
    assert after["status"] == "completed", after


async def test_a_decision_past_expiry_is_refused_and_the_row_says_expired(user, model, pool, mail):
    tag = marker()
    turn, approval = await park(user, model, tag, email_args(tag))
    await pool.execute(
        "UPDATE approvals SET expires_at = now() - interval '1 second' WHERE id = $1", approval["id"]
    )
    late = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert late.status_code == 409 and late.json()["code"] == "approval_expired"
    assert (await user.client.get(f"/api/v1/approvals/{approval['id']}")).json()["status"] == "expired"
    pending = (await user.client.get("/api/v1/approvals", params={"status": "pending"})).json()["data"]
    assert approval["id"] not in [a["id"] for a in pending]
    # The workflow hears of it at once (not when its own 24 h timer fires) and tells the model.
    done = await wait_turn(user.client, turn["id"], within=20)
    assert done["status"] == "completed"
    result = next(e for e in await events_of(user, turn["id"]) if e["type"] == "tool_result")
    assert result["result"] == {"status": "rejected", "reason": "approval expired"}
    assert mail.messages(tag) == []


async def test_an_email_approval_previews_the_message_that_approving_sends(user, model, mail, settings):
    tag = marker()
    attachment = {"filename": "notes.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}
    arguments = email_args(tag, cc=["carol@example.test"], attachments=[attachment])
    turn, approval = await park(user, model, tag, arguments)
    preview = (await user.client.get(f"/api/v1/approvals/{approval['id']}")).json()["preview"]
    assert approval["preview"] == preview, "the turn's pending approval carries the same preview"
    assert preview["from"] == settings.smtp_from
    assert (preview["to"], preview["cc"], preview["bcc"]) == (
        ["bob@example.test"],
        ["carol@example.test"],
        [],
    )
    assert preview["subject"] == f"Report {tag}" and preview["html"] == arguments["body"]
    assert preview["attachments"] == [{"filename": "notes.txt", "content_type": "text/plain", "size": 5}]
    ok = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert ok.json()["preview"] == preview
    assert (await wait_turn(user.client, turn["id"]))["status"] == "completed"
    sent = mail.messages(tag)[0].message
    assert sent["From"] == preview["from"] and sent["Subject"] == preview["subject"]
    assert sent.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n") == preview["text"]
    assert sent.get_body(preferencelist=("html",)).get_content().strip() == preview["html"]
