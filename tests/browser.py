"""A real browser for the web UI tests: Debian's chromium driven by Playwright.

The browser is kept on loopback twice over: its resolver maps every name but `localhost` to
"not found", and each page's requests pass a route that aborts (and records) any request
for a host that is not a loopback one. So a test can assert that model output made the page
ask for nothing remote, and no test can send traffic off this machine.
"""

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from tools.netguard import is_loopback_host

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Long enough for a turn on a busy 2-core machine; the UI itself reacts in milliseconds.
expect.set_options(timeout=20_000)


@dataclass
class Browsing:
    """One browser context (fresh storage) and its page, with what the page did."""

    context: BrowserContext
    page: Page
    blocked: list[str] = field(default_factory=list)  # requests for non-loopback hosts, aborted
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    async def login(self, base_url: str, key: str) -> None:
        await self.page.goto(f"{base_url}/#key={key}")
        await expect(self.page.locator("#app")).to_be_visible()

    async def send(self, text: str) -> None:
        await self.page.fill("#message", text)
        await self.page.press("#message", "Enter")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"],
        )
        yield launched
        await launched.close()


async def open_page(browser: Browser, *, width: int = 1280, height: int = 800) -> Browsing:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    browsing = Browsing(context, page)

    async def keep_on_loopback(route: Route) -> None:
        url = route.request.url
        browsing.requests.append(url)
        host = urlsplit(url).hostname
        if url.startswith(("data:", "blob:", "about:")) or (host and is_loopback_host(host)):
            await route.continue_()
        else:
            browsing.blocked.append(url)
            await route.abort()

    await context.route("**/*", keep_on_loopback)
    page.on("pageerror", lambda error: browsing.errors.append(str(error)))
    return browsing


@pytest.fixture
async def browsing(browser: Browser) -> AsyncIterator[Browsing]:
    opened = await open_page(browser)
    yield opened
    await opened.context.close()
    assert not opened.errors, f"the page raised: {opened.errors}"
    assert not opened.blocked, f"the page asked for remote hosts: {opened.blocked}"


async def poll_texts(page: Page, selector: str, until: str, within: float = 30) -> list[str]:
    """Every distinct text the last element matching `selector` showed until it read `until`."""
    seen: list[str] = []
    locator = page.locator(selector).last
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        text = await locator.text_content() if await locator.count() else None
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text == until:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"{selector} never read {until!r}; it read {seen[-3:]!r}")


async def stored_messages(client: Any, conversation_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/conversations/{conversation_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data
