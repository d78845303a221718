"""The web UI at `/`, driven in a real browser against the test stack: log-in, conversations,
streamed replies, tool cards, email approvals with their preview, the inbox, cancel, errors,
hostile model output, phone width."""

import asyncio
import os
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.async_api import expect

from api.webui import STATIC, install
from tests.browser import Browsing, open_page, poll_texts, stored_messages
from tests.conftest import ROOT, marker
from tests.helpers import create_conversation, start_turn_json, wait_turn
from tests.pageserver import Reply
from tests.test_approvals import script_email

SCREENSHOT = ROOT / "docs" / "images" / "web-ui-approval.png"


def words(count: int) -> str:
    return " ".join(f"word{i}" for i in range(count)) + "."


async def open_conversation(user, browsing: Browsing, api_url: str, title: str = "A chat") -> dict:
    conversation = await create_conversation(user.client, title=title)
    await browsing.login(api_url, user.key)
    await browsing.page.locator(f"li.conversation[data-id='{conversation['id']}']").click()
    return conversation


async def latest_turn(user, conversation_id: str) -> dict:
    turns = (await user.client.get(f"/api/v1/conversations/{conversation_id}/turns")).json()["data"]
    return turns[0]


async def test_log_in_by_url_then_out_and_back_with_a_pasted_key(user, browsing, api_url):
    page = browsing.page
    me = (await user.client.get("/api/v1/auth/me")).json()
    await browsing.login(api_url, user.key)
    await expect(page.locator("#user-name")).to_have_text(me["name"])
    assert "key=" not in page.url, "the key is taken out of the address bar"
    await page.reload()
    await expect(page.locator("#app")).to_be_visible()  # remembered
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('assistant.key')") is None
    await page.fill("#key", "sk-asst-not-a-real-key")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).not_to_be_empty()
    await expect(page.locator("#app")).to_be_hidden()
    await page.fill("#key", user.key)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#user-name")).to_have_text(me["name"])


async def test_conversations_are_created_renamed_and_deleted(user, browsing, api_url, model):
    page = browsing.page
    older = await create_conversation(user.client, title="Older")
    newer = await create_conversation(user.client, title="Newer")
    await browsing.login(api_url, user.key)
    items = page.locator("#conversation-list li.conversation")
    await expect(items.locator(".title")).to_have_text(["Newer", "Older"])  # newest first

    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "Hello there."}])
    await page.click("#new-conversation")
    await browsing.send(f"first words {tag}")
    await expect(page.locator(".msg.assistant .content").last).to_have_text("Hello there.")
    await expect(items).to_have_count(3)
    created = await items.first.get_attribute("data-id")
    assert created not in (older["id"], newer["id"])
    await expect(items.first.locator(".title")).to_contain_text("first words")

    await items.first.locator("button.rename").click()
    await page.fill("input.rename-input", "Renamed <b>safely</b>")
    await page.press("input.rename-input", "Enter")
    await expect(items.first.locator(".title")).to_have_text("Renamed <b>safely</b>")
    stored = (await user.client.get(f"/api/v1/conversations/{created}")).json()
    assert stored["title"] == "Renamed <b>safely</b>"

    doomed = page.locator(f"li.conversation[data-id='{older['id']}']")
    await doomed.locator("button.delete").click()
    await expect(doomed).to_be_visible()  # the first click only asks
    await doomed.locator("button.delete").click()
    await expect(doomed).to_have_count(0)
    assert (await user.client.get(f"/api/v1/conversations/{older['id']}")).status_code == 404
    await page.reload()
    await expect(items).to_have_count(2)


async def test_a_reply_streams_in_and_ends_as_the_stored_message(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    text = words(40)
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 40}])
    conversation = await open_conversation(user, browsing, api_url)
    await browsing.send(f"tell me {tag}")
    await expect(page.locator("#cancel")).to_be_visible()
    seen = await poll_texts(page, ".msg.assistant .content", until=text)
    partial = [t for t in seen if t != text]
    assert len(partial) >= 3, f"the reply should appear piece by piece, saw {seen}"
    assert all(text.startswith(t.rstrip("…").rstrip()) for t in partial), seen
    assert [len(t) for t in partial] == sorted(len(t) for t in partial), "text only grows"
    await expect(page.locator("#cancel")).to_be_hidden()
    stored = await stored_messages(user.client, conversation["id"])
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[1]["content"] == text
    await page.reload()  # the stored transcript shows the same
    await expect(page.locator(".msg.assistant .content")).to_have_text([text])


async def test_replies_render_markdown(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    reply = (
        "Here:\n\n- one\n- **two**\n\n```python\nprint('hi')\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\nSee [the docs](https://docs.example/x)."
    )
    model.script(tag, [{"kind": "reply", "content": reply}])
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"format {tag}")
    content = page.locator(".msg.assistant .content").last
    await expect(content.locator("li")).to_have_text(["one", "two"])
    await expect(content.locator("li strong")).to_have_text("two")
    await expect(content.locator("pre code")).to_have_text("print('hi')")
    await expect(content.locator("table td")).to_have_text(["1", "2"])
    link = content.locator("a")
    await expect(link).to_have_attribute("href", "https://docs.example/x")
    assert "noopener" in (await link.get_attribute("rel") or "")


async def test_a_tool_card_shows_the_call_and_its_result(user, browsing, api_url, model, shop):
    page = browsing.page
    tag = marker()
    query = "SELECT customer, total FROM orders WHERE id = $1"
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"name": "query_database", "arguments": {"query": query, "parameters": [2]}}],
            },
            {"kind": "reply", "content": "Grace spent 75.", "delay_ms": 300},
        ],
    )
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"who? {tag}")
    card = page.locator(".tool-card").last
    await expect(card.locator(".tool-name")).to_have_text("query_database")
    await expect(card.locator(".tool-args")).to_contain_text("SELECT customer, total FROM orders")
    await expect(card).to_have_attribute("data-status", "done")
    result = card.locator("details.tool-result")
    assert await result.get_attribute("open") is None, "results start collapsed"
    await result.locator("summary").click()
    await expect(result.locator("pre")).to_contain_text('"Grace"')
    await expect(page.locator(".msg.assistant .content").last).to_have_text("Grace spent 75.")
    await page.reload()  # rebuilt from the stored transcript
    await expect(page.locator(".tool-card")).to_have_attribute("data-status", "done")


async def test_an_email_is_previewed_edited_and_approved(user, browsing, api_url, model, mail, settings):
    page = browsing.page
    tag = marker()
    attachment = {"filename": "plan.txt", "content_type": "text/plain", "content_base64": "cGxhbg=="}
    arguments = {
        "to": ["bob@example.test"],
        "cc": ["carol@example.test"],
        "subject": f"Plan {tag}",
        "body": "<p>Hello <b>Bob</b>, here is the plan.</p>",
        "attachments": [attachment],
    }
    script_email(model, tag, arguments, then="Sent it.")
    conversation = await open_conversation(user, browsing, api_url, title="Quarterly plan")
    await browsing.send(f"mail the plan {tag}")
    card = page.locator(".approval-card").last
    await expect(card).to_have_attribute("data-status", "pending")
    await expect(page.locator(".tool-card").last).to_have_attribute("data-status", "awaiting_approval")
    preview = card.locator(".email-preview")
    await expect(preview.locator(".from")).to_contain_text("assistant@example.test")
    await expect(preview.locator(".to")).to_contain_text("bob@example.test")
    await expect(preview.locator(".cc")).to_contain_text("carol@example.test")
    await expect(preview.locator(".subject")).to_have_text(f"Plan {tag}")
    body = page.frame_locator(".approval-card iframe.email-body").last.locator("body")
    await expect(body).to_contain_text("Hello Bob, here is the plan.")
    await expect(body.locator("b")).to_have_text("Bob")  # rendered, not shown as markup
    assert await card.locator("iframe.email-body").get_attribute("sandbox") == ""
    await expect(preview.locator("ul.attachments li")).to_contain_text("plan.txt")
    await expect(card.locator(".expires")).not_to_be_empty()
    await expect(page.locator("#inbox-count")).to_have_text("1")

    await card.locator("button.edit").click()
    form = card.locator("form.edit-form")
    await form.locator("[name=subject]").fill(f"Edited plan {tag}")
    await form.locator("button.save-approve").click()
    await expect(card).to_have_attribute("data-status", "approved")
    await expect(card.locator(".decision")).to_contain_text("Approved")
    await expect(page.locator(".tool-card").last).to_have_attribute("data-status", "done")
    await expect(page.locator(".msg.assistant .content").last).to_have_text("Sent it.")
    await expect(page.locator("#inbox-count")).to_be_hidden()

    received = mail.messages(tag)
    assert len(received) == 1, "exactly one message"
    sent = received[0]
    assert sent.message["Subject"] == f"Edited plan {tag}"
    assert sorted(sent.rcpt_tos) == ["bob@example.test", "carol@example.test"]
    assert sent.message["From"] == settings.smtp_from
    html = sent.message.get_body(preferencelist=("html",)).get_content()
    assert "Hello <b>Bob</b>, here is the plan." in html
    assert [part.get_filename() for part in sent.message.iter_attachments()] == ["plan.txt"]
    # The reply shows before the turn's last events are written: wait for the end.
    turn = await wait_turn(user.client, (await latest_turn(user, conversation["id"]))["id"])
    assert turn["status"] == "completed"


async def test_a_conversation_with_a_query_and_an_email_to_approve(
    user, browsing, api_url, model, shop, settings
):
    """The scene of the README's screenshot: a tool call, its answer, then an email waiting."""
    page = browsing.page
    # Plain phrases rather than markers, for the picture; unique enough within the suite.
    ask, mail_tag = "Who are our best customers this month?", "Thank Ada by email, please."
    model.script(
        ask,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {
                        "name": "query_database",
                        "arguments": {
                            "query": "SELECT customer, sum(total) AS spent FROM orders GROUP BY customer "
                            "ORDER BY spent DESC"
                        },
                    }
                ],
            },
            {
                "kind": "reply",
                "content": "Two customers ordered this month:\n\n| Customer | Spent |\n|---|---|\n"
                "| Ada | 130.49 |\n| Grace | 75.00 |\n\nAda is the **top customer**.",
            },
        ],
    )
    body = (
        "<p>Hi Ada,</p><p>Thank you for your two orders this month (<b>130.49</b> in all).</p>"
        "<p>Best regards,<br>The shop</p>"
    )
    script_email(model, mail_tag, {"to": "ada@example.test", "subject": "Thank you, Ada", "body": body})
    await open_conversation(user, browsing, api_url, title="November customers")
    await browsing.send(ask)
    await expect(page.locator(".msg.assistant table td")).to_have_text(["Ada", "130.49", "Grace", "75.00"])
    await browsing.send(mail_tag)
    card = page.locator(".approval-card")
    await expect(card.locator(".email-preview .subject")).to_have_text("Thank you, Ada")
    await expect(page.locator(".tool-card")).to_have_count(2)
    await expect(page.locator("#inbox-count")).to_have_text("1")
    await save_screenshot(browsing)


async def save_screenshot(browsing: Browsing) -> None:
    """The README's picture of the UI, refreshed when UPDATE_SCREENSHOTS=1 (then committed)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await browsing.page.set_viewport_size({"width": 1280, "height": 1100})
        await browsing.page.locator("#transcript").evaluate("node => node.scrollTo(0, node.scrollHeight)")
        await browsing.page.screenshot(path=str(SCREENSHOT))


async def test_an_invalid_edit_is_refused_in_the_form(user, browsing, api_url, model, mail):
    page = browsing.page
    tag = marker()
    script_email(model, tag, {"to": "bob@example.test", "subject": f"S {tag}", "body": "Hi"})
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"mail {tag}")
    card = page.locator(".approval-card").last
    await card.locator("button.edit").click()
    form = card.locator("form.edit-form")
    await form.locator("[name=to]").fill("")
    await form.locator("button.save-approve").click()
    await expect(form.locator(".form-error")).not_to_be_empty()
    await expect(card).to_have_attribute("data-status", "pending")
    assert mail.messages(tag) == []


async def test_a_rejection_carries_its_reason_and_sends_nothing(user, browsing, api_url, model, mail):
    page = browsing.page
    tag = marker()
    script_email(
        model, tag, {"to": "bob@example.test", "subject": f"S {tag}", "body": "Hi"}, then="Understood."
    )
    conversation = await open_conversation(user, browsing, api_url)
    await browsing.send(f"mail {tag}")
    card = page.locator(".approval-card").last
    await expect(page.locator("#inbox-count")).to_have_text("1")
    await card.locator("button.reject").click()
    await card.locator("textarea.reject-reason").fill("not to Bob")
    await card.locator("button.confirm-reject").click()
    await expect(card).to_have_attribute("data-status", "rejected")
    await expect(card.locator(".decision")).to_contain_text("not to Bob")
    await expect(page.locator(".tool-card").last).to_have_attribute("data-status", "rejected")
    await expect(page.locator(".msg.assistant .content").last).to_have_text("Understood.")
    await expect(page.locator("#inbox-count")).to_be_hidden()
    assert mail.messages(tag) == []
    approvals = (await user.client.get("/api/v1/approvals")).json()["data"]
    assert approvals[0]["status"] == "rejected" and approvals[0]["reason"] == "not to Bob"
    assert approvals[0]["conversation_id"] == conversation["id"]


async def test_the_inbox_gathers_pending_approvals_across_conversations(user, browsing, api_url, model, mail):
    page = browsing.page
    tags = [marker(), marker()]
    conversations = []
    for tag in tags:
        script_email(model, tag, {"to": "bob@example.test", "subject": f"S {tag}", "body": "Hi"})
        conversation = await create_conversation(user.client, title=f"About {tag}")
        conversations.append(conversation)
        started = await start_turn_json(user.client, conversation["id"], f"mail {tag}")
        await wait_turn(user.client, started["turn"]["id"], until=("awaiting_approval",))
    await browsing.login(api_url, user.key)
    await expect(page.locator("#inbox-count")).to_have_text("2")
    await page.click("#inbox-button")
    items = page.locator("#inbox .inbox-item")
    await expect(items).to_have_count(2)
    first = items.filter(has_text=f"About {tags[0]}")
    await first.locator("button.approve").click()
    await expect(page.locator("#inbox-count")).to_have_text("1")
    await expect(items).to_have_count(1)
    assert await _arrives(mail, tags[0]) and len(mail.messages(tags[0])) == 1
    await items.first.locator("a.open-conversation").click()
    await expect(page.locator("#inbox")).to_be_hidden()
    current = page.locator("li.conversation[aria-current='page']")
    await expect(current).to_have_attribute("data-id", conversations[1]["id"])
    await expect(page.locator(".approval-card").last).to_have_attribute("data-status", "pending")


async def _arrives(mail, tag: str) -> bool:
    for _ in range(100):
        if mail.messages(tag):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_cancel_stops_a_running_turn(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": words(200), "delay_ms": 100}])
    conversation = await open_conversation(user, browsing, api_url)
    await browsing.send(f"go on {tag}")
    await expect(page.locator(".msg.assistant.streaming")).to_be_visible()
    await page.click("#cancel")
    await expect(page.locator(".turn-cancelled")).to_be_visible()
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#message")).to_be_enabled()
    assert (await wait_turn(user.client, (await latest_turn(user, conversation["id"]))["id"]))[
        "status"
    ] == "cancelled"


async def test_a_failed_turn_says_why_and_whether_retrying_helps(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    model.script(tag, [{"kind": "error", "status": 400, "message": f"Bad request {tag}"}])
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"fail {tag}")
    error = page.locator(".turn-error").last
    await expect(error.locator(".error-code")).to_contain_text("model_bad_request")
    await expect(error.locator(".error-message")).not_to_be_empty()
    await expect(error.locator(".error-retryable")).to_contain_text("not")
    await expect(error.locator("button.retry")).to_have_count(0)


async def test_a_retried_model_call_replaces_its_partial_text(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "break", "content": "Broken start that should vanish", "after_chunks": 3},
            {"kind": "reply", "content": "The whole answer."},
        ],
    )
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"retry {tag}")
    await expect(page.locator(".msg.assistant .content")).to_have_text(["The whole answer."])
    assert "Broken" not in await page.locator("#transcript").inner_text()


async def test_enter_sends_and_shift_enter_breaks_the_line(user, browsing, api_url, model):
    page = browsing.page
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "Two lines received."}])
    conversation = await open_conversation(user, browsing, api_url)
    await page.fill("#message", f"line one {tag}")
    await page.press("#message", "Shift+Enter")
    await page.type("#message", "line two")
    assert await page.input_value("#message") == f"line one {tag}\nline two"
    await page.press("#message", "Enter")
    await expect(page.locator(".msg.assistant .content").last).to_have_text("Two lines received.")
    stored = await stored_messages(user.client, conversation["id"])
    assert stored[0]["content"] == f"line one {tag}\nline two"
    assert await page.input_value("#message") == ""


async def test_at_phone_width_nothing_overflows(user, browser, api_url, model):
    phone = await open_page(browser, width=375, height=740)
    try:
        page = phone.page
        tag = marker()
        wide = "| " + " | ".join(f"column{i}" for i in range(12)) + " |\n|" + "---|" * 12
        model.script(tag, [{"kind": "reply", "content": f"{wide}\n\n```\n{'x' * 300}\n```"}])
        await create_conversation(user.client, title="Phone")
        await phone.login(api_url, user.key)
        await page.click("#menu")
        await page.locator("li.conversation").first.click()
        await phone.send(f"wide {tag}")
        await expect(page.locator(".msg.assistant table")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width}px wide at a 375px viewport"
        await expect(page.locator("#send")).to_be_in_viewport()
    finally:
        await phone.context.close()
    assert not phone.errors and not phone.blocked


def test_the_page_is_served_with_a_strict_content_security_policy():
    assert (STATIC / "index.html").exists()
    app = FastAPI()
    install(app)
    response = TestClient(app).get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-eval" not in policy and "'unsafe-inline'" not in re.sub(r"style-src[^;]*", "", policy)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_readme_shows_the_ui_screenshot():
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size > 10_000
    assert "docs/images/web-ui-approval.png" in (ROOT / "README.md").read_text()


def hostile_markup(tag: str, tracker: str) -> str:
    """Model output that would run script or load images if the UI let it through."""
    return (
        f"Careful {tag} <script>window.__xss = 'script'</script>\n\n"
        "<img src=x onerror=\"window.__xss = 'img'\">\n\n"
        "[click me](javascript:window.__xss='link') and "
        "<a href=\"javascript:window.__xss='anchor'\">raw link</a>\n\n"
        "<svg onload=\"window.__xss = 'svg'\"></svg>"
        "<iframe src=\"javascript:window.__xss='frame'\"></iframe>\n\n"
        f"![tracker]({tracker})\n\n![remote](https://remote.example/pixel.png)\n"
    )


async def test_hostile_model_output_and_tool_results_run_nothing_and_load_nothing(
    user, browsing, api_url, model, pages, shop
):
    page = browsing.page
    tag = marker()
    tracker_path = f"/xss/{tag.strip('[]')}.png"
    pages.page(tracker_path, b"\x89PNG\r\n\x1a\n", content_type="image/png")
    tracker = pages.url(tracker_path)
    payload = hostile_markup(tag, tracker)
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {
                        "name": "query_database",
                        "arguments": {"query": "SELECT $1::text AS payload", "parameters": [payload]},
                    }
                ],
            },
            {"kind": "reply", "content": payload},
        ],
    )
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"show me {tag}")
    card = page.locator(".tool-card").last
    await expect(card).to_have_attribute("data-status", "done")
    await card.locator("details.tool-result summary").click()
    await expect(card.locator("details.tool-result pre")).to_contain_text("<script>window.__xss")
    reply = page.locator(".msg.assistant .content").last
    await expect(reply).to_contain_text(f"Careful {tag}")
    await expect(reply.locator("button.image-consent")).to_have_count(2)
    for name in ("click me", "raw link"):
        await reply.get_by_text(name).click()
    await page.reload()  # the stored transcript is rendered the same way
    await expect(page.locator(".msg.assistant .content").last).to_contain_text(f"Careful {tag}")
    await asyncio.sleep(0.5)
    assert await page.evaluate("window.__xss") is None, "model output ran script"
    assert await page.locator("#transcript script, #transcript iframe, #transcript svg").count() == 0
    assert tracker_path not in pages.paths, "an image loaded without consent"
    assert not [url for url in browsing.requests if "remote.example" in url]

    consent = page.locator(".msg.assistant .content").last.locator("button.image-consent").first
    await expect(consent).to_contain_text("127.0.0.1")
    await consent.click()  # with consent, the image is fetched
    for _ in range(100):
        if tracker_path in pages.paths:
            break
        await asyncio.sleep(0.05)
    assert tracker_path in pages.paths


async def test_a_hostile_email_body_runs_nothing_in_its_preview(user, browsing, api_url, model, pages):
    page = browsing.page
    tag = marker()
    tracker_path = f"/xss-mail/{tag.strip('[]')}.png"
    pages.page(tracker_path, b"\x89PNG\r\n\x1a\n", content_type="image/png")
    body = (
        f"<p>Quarterly {tag}</p><script>parent.__xss = 'mail'; window.__inner = 1</script>"
        f'<img src="{pages.url(tracker_path)}" onerror="parent.__xss = \'mail-img\'">'
    )
    script_email(model, tag, {"to": "bob@example.test", "subject": f"S {tag}", "body": body})
    await open_conversation(user, browsing, api_url)
    await browsing.send(f"mail {tag}")
    frame = page.frame_locator(".approval-card iframe.email-body").last
    await expect(frame.locator("body")).to_contain_text(f"Quarterly {tag}")
    await asyncio.sleep(0.5)
    assert await page.evaluate("window.__xss") is None
    inner = next(f for f in page.frames if f != page.main_frame)
    assert await inner.evaluate("1 + 1") == 2  # the frame is there and readable by the test…
    assert await inner.evaluate("window.__inner") is None, "…but its scripts never ran"
    assert tracker_path not in pages.paths, "a remote image in the email loaded"


async def saved_key(browsing: Browsing) -> str | None:
    key: str | None = await browsing.page.evaluate("localStorage.getItem('assistant.key')")
    return key


async def follow_link(browsing: Browsing, url: str) -> None:
    """Opens `url` as a new page load (not a same-page fragment change)."""
    await browsing.page.goto("about:blank")
    await browsing.page.goto(url)


async def test_a_link_with_a_refused_key_replaces_no_saved_key(user, browsing, api_url):
    page = browsing.page
    await browsing.login(api_url, user.key)
    name = await page.locator("#user-name").text_content()
    await follow_link(browsing, f"{api_url}/#key=sk-asst-not-a-real-key")
    await expect(page.locator("#notice")).to_contain_text("refused")
    await expect(page.locator("#app")).to_be_visible()  # still logged in with the saved key
    await expect(page.locator("#user-name")).to_have_text(name or "")
    assert "key=" not in page.url
    assert await saved_key(browsing) == user.key
    await page.reload()
    await expect(page.locator("#user-name")).to_have_text(name or "")


async def test_a_link_with_another_users_key_asks_before_replacing_the_saved_one(
    user, make_user, browsing, api_url
):
    page = browsing.page
    other = await make_user("someone-else")
    await browsing.login(api_url, user.key)
    mine = await page.locator("#user-name").text_content()
    await follow_link(browsing, f"{api_url}/#key={other.key}")
    choice = page.locator("#key-choice")
    await expect(choice).to_be_visible()
    await expect(choice).to_contain_text("someone-else")
    await expect(page.locator("#app")).to_be_hidden()
    assert await saved_key(browsing) == user.key, "nothing replaced before the user says so"
    await page.click("#keep-key")
    await expect(page.locator("#user-name")).to_have_text(mine or "")
    assert await saved_key(browsing) == user.key

    await follow_link(browsing, f"{api_url}/#key={other.key}")
    await page.click("#use-new-key")
    await expect(page.locator("#user-name")).to_have_text("someone-else")
    assert await saved_key(browsing) == other.key
    await page.reload()
    await expect(page.locator("#user-name")).to_have_text("someone-else")


async def test_a_malformed_link_shows_the_login_screen_with_an_error(user, browsing, api_url):
    page = browsing.page
    await page.goto(f"{api_url}/#key=%E0")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("could not be read")
    await expect(page.locator("#app")).to_be_hidden()
    assert await saved_key(browsing) is None
    # A malformed conversation in the fragment opens none; the key beside it still logs in.
    await follow_link(browsing, f"{api_url}/#key={user.key}&c=%E0")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("li.conversation[aria-current='page']")).to_have_count(0)
    # (the browsing fixture fails the test on any uncaught page error)


async def test_a_double_click_on_new_conversation_creates_one(user, browsing, api_url):
    page = browsing.page
    await browsing.login(api_url, user.key)
    await page.dblclick("#new-conversation")
    items = page.locator("#conversation-list li.conversation")
    await expect(items).to_have_count(1)
    await expect(page.locator("#new-conversation")).to_be_enabled()
    await asyncio.sleep(0.5)  # time for a second creation, were one under way
    listed = (await user.client.get("/api/v1/conversations")).json()["data"]
    assert len(listed) == 1, listed
    await expect(items).to_have_count(1)


async def test_cancelling_during_a_tool_call_settles_its_card(user, browsing, api_url, model, pages):
    """The tool's page answers 503, so fetch_page waits to try again (1 s, then 2 s): cancelled
    in that wait, the call never gets a result, and its card, still running as the turn ends
    cancelled, must say so rather than spin on."""
    page = browsing.page
    tag = marker()
    path = f"/busy/{tag.strip('[]')}"
    pages.route(path, Reply(503, {"Content-Type": "text/plain"}, b"busy"))
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"name": "fetch_page", "arguments": {"url": pages.url(path)}}],
            },
            {"kind": "reply", "content": "Never shown."},
        ],
    )
    conversation = await open_conversation(user, browsing, api_url)
    await browsing.send(f"fetch {tag}")
    card = page.locator(".tool-card").last
    await expect(card.locator(".tool-name")).to_have_text("fetch_page")
    await expect(card).to_have_attribute("data-status", "running")
    for _ in range(400):  # the second attempt failed: 2 s until the third
        if pages.paths.count(path) >= 2:
            break
        await asyncio.sleep(0.02)
    assert pages.paths.count(path) == 2, pages.paths.count(path)
    await asyncio.sleep(0.3)
    await page.click("#cancel")
    await expect(page.locator(".turn-cancelled")).to_be_visible()
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(card).not_to_have_attribute("data-status", "running")
    await expect(card.locator(".tool-state")).to_contain_text("cancelled")
    assert pages.paths.count(path) == 2, "no attempt after the cancel"
    turn = await wait_turn(user.client, (await latest_turn(user, conversation["id"]))["id"])
    assert turn["status"] == "cancelled"
    await page.reload()  # the stored transcript says the same
    await expect(page.locator(".tool-card").last.locator(".tool-state")).to_contain_text("cancelled")
