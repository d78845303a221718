"""The web UI when the service underneath fails: the worker killed mid-reply, the API process
restarted while the page streams. These run real `assistant api` / `assistant worker` child
processes on a task queue of their own, so killing them touches nothing else of the suite."""

import asyncio
import os
import signal

import pytest
from playwright.async_api import expect

from devstack import free_port
from tests.browser import poll_texts, stored_messages
from tests.conftest import assistant_process, marker
from tests.helpers import create_conversation, wait_until_serving

pytestmark = pytest.mark.slow


def numbered(prefix: str, count: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(count)) + "."


async def wait_for_words(page, count: int) -> None:
    """Until the reply being streamed shows at least `count` words."""
    replies = page.locator(".msg.assistant .content")
    for _ in range(400):
        if await replies.count() and len((await replies.last.text_content() or "").split()) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the reply did not start streaming")


async def start_streaming(user, browsing, url: str, tag: str) -> dict:
    """Log in at `url`, open a new conversation, send `go <tag>`; return once words stream in."""
    conversation = await create_conversation(user.client, title=f"Recovery {tag}")
    await browsing.login(url, user.key)
    await browsing.page.locator(f"li.conversation[data-id='{conversation['id']}']").click()
    await browsing.send(f"go {tag}")
    await wait_for_words(browsing.page, 5)
    return conversation


async def test_the_page_ends_with_the_whole_reply_once_after_the_worker_is_killed(
    own_queue, user, model, browsing
):
    env, logs = own_queue
    tag = marker()
    text = numbered("w", 60)
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 60}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        assistant_process(["api", "--port", str(port)], env, logs / "api.log") as api,
        assistant_process(["worker"], env, logs / "worker1.log") as worker1,
    ):
        await wait_until_serving(url, api)
        conversation = await start_streaming(user, browsing, url, tag)
        page = browsing.page
        os.kill(worker1.pid, signal.SIGKILL)
        worker1.wait()
        with assistant_process(["worker"], env, logs / "worker2.log"):
            seen = await poll_texts(page, ".msg.assistant .content", until=text, within=90)
            await expect(page.locator("#cancel")).to_be_hidden()
    assert len(model.requests(tag)) == 2, "the model call was retried by the new worker"
    assert any(len(t.split()) >= 5 for t in seen[:-1]), "text was shown before the crash"
    await expect(page.locator(".msg.assistant .content")).to_have_text([text])
    stored = await stored_messages(user.client, conversation["id"])
    assert [(m["role"], m["content"]) for m in stored] == [("user", f"go {tag}"), ("assistant", text)]


async def test_the_page_reconnects_and_resumes_when_the_api_restarts(own_queue, user, model, browsing):
    env, logs = own_queue
    tag = marker()
    text = numbered("v", 80)
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 60}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with assistant_process(["worker"], env, logs / "worker.log"):
        with assistant_process(["api", "--port", str(port)], env, logs / "api1.log") as api1:
            await wait_until_serving(url, api1)
            conversation = await start_streaming(user, browsing, url, tag)
            page = browsing.page
            os.kill(api1.pid, signal.SIGKILL)
            api1.wait()
        await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        await asyncio.sleep(1)  # the turn goes on meanwhile, unseen
        with assistant_process(["api", "--port", str(port)], env, logs / "api2.log") as api2:
            await wait_until_serving(url, api2)
            await poll_texts(page, ".msg.assistant .content", until=text, within=60)
            await expect(page.locator("#status")).not_to_have_attribute("data-state", "reconnecting")
            await expect(page.locator(".msg.assistant .content")).to_have_text([text])
    stored = await stored_messages(user.client, conversation["id"])
    assert stored[-1]["content"] == text
