"""List envelopes and keyset cursors (API.md "Conventions": `limit`, `after`, `before`, `order`)."""

from typing import Any

import httpx
import pytest

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn

CONVERSATIONS = "/api/v1/conversations"


async def get_page(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    assert page["object"] == "list"
    ids = [item["id"] for item in page["data"]]
    assert page["first_id"] == (ids[0] if ids else None)
    assert page["last_id"] == (ids[-1] if ids else None)
    return page


async def walk(
    client: httpx.AsyncClient, path: str, *, cursor: str, start: str | None = None, **params: Any
) -> list[str]:
    """Every id, following `cursor` (`after` from last_id, `before` from first_id) to the end."""
    ids: list[str] = []
    position = start
    pages = 0
    while True:
        page = await get_page(client, path, **params, **({cursor: position} if position else {}))
        batch = [item["id"] for item in page["data"]]
        assert len(batch) <= params.get("limit", 20)
        ids = ids + batch if cursor == "after" else batch + ids
        pages += 1
        assert pages < 50, "the walk does not end"
        if not page["has_more"]:
            return ids
        assert batch, "has_more with an empty page"
        position = batch[-1] if cursor == "after" else batch[0]


@pytest.fixture
async def seven(user: Any) -> tuple[Any, list[str]]:
    """A user with seven conversations; their ids in creation order."""
    created = [(await create_conversation(user.client, title=f"c{i}"))["id"] for i in range(7)]
    return user, created


async def test_conversations_newest_first(seven: tuple[Any, list[str]]) -> None:
    user, created = seven
    page = await get_page(user.client, CONVERSATIONS)
    assert [c["id"] for c in page["data"]] == created[::-1]
    assert [c["title"] for c in page["data"]] == [f"c{i}" for i in range(6, -1, -1)]
    assert page["has_more"] is False


async def test_limit_and_has_more(seven: tuple[Any, list[str]]) -> None:
    user, created = seven
    page = await get_page(user.client, CONVERSATIONS, limit=3)
    assert [c["id"] for c in page["data"]] == created[:-4:-1]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (created[6], created[4])
    exact = await get_page(user.client, CONVERSATIONS, limit=7)
    assert len(exact["data"]) == 7 and exact["has_more"] is False
    assert (await get_page(user.client, CONVERSATIONS, limit=100))["has_more"] is False
    assert len((await get_page(user.client, CONVERSATIONS, limit=1))["data"]) == 1


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
async def test_after_walks_everything_once(seven: tuple[Any, list[str]], limit: int) -> None:
    user, created = seven
    assert await walk(user.client, CONVERSATIONS, cursor="after", limit=limit) == created[::-1]
    assert await walk(user.client, CONVERSATIONS, cursor="after", limit=limit, order="asc") == created


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_before_walks_back_from_the_end(seven: tuple[Any, list[str]], limit: int) -> None:
    """`before` pages toward the start of the list; each page is still in list order."""
    user, created = seven
    oldest = created[0]  # last item of the default (newest first) list
    newer = await walk(user.client, CONVERSATIONS, cursor="before", start=oldest, limit=limit)
    assert newer == created[:0:-1]  # everything listed before the oldest, newest first
    page = await get_page(user.client, CONVERSATIONS, before=created[3], limit=2)
    assert [c["id"] for c in page["data"]] == [created[5], created[4]]
    assert page["has_more"] is True
    asc = await walk(user.client, CONVERSATIONS, cursor="before", start=created[-1], limit=limit, order="asc")
    assert asc == created[:-1]


async def test_cursor_pages_meet_without_overlap(seven: tuple[Any, list[str]]) -> None:
    user, created = seven
    first = await get_page(user.client, CONVERSATIONS, limit=4)
    rest = await get_page(user.client, CONVERSATIONS, limit=4, after=first["last_id"])
    assert [c["id"] for c in first["data"] + rest["data"]] == created[::-1]
    assert rest["has_more"] is False
    back = await get_page(user.client, CONVERSATIONS, limit=4, before=rest["first_id"])
    assert back["data"] == first["data"] and back["has_more"] is False
    # After the last item: an empty page, not an error.
    end = await get_page(user.client, CONVERSATIONS, after=created[0])
    assert end["data"] == [] and end["has_more"] is False
    assert end["first_id"] is None and end["last_id"] is None


async def test_new_items_do_not_shift_a_walk(seven: tuple[Any, list[str]]) -> None:
    """Keyset cursors: an item created mid-walk does not repeat or skip older ones."""
    user, created = seven
    first = await get_page(user.client, CONVERSATIONS, limit=3)
    await create_conversation(user.client, title="late")
    rest = await walk(user.client, CONVERSATIONS, cursor="after", start=first["last_id"], limit=3)
    assert [c["id"] for c in first["data"]] + rest == created[::-1]


async def test_order_asc(seven: tuple[Any, list[str]]) -> None:
    user, created = seven
    page = await get_page(user.client, CONVERSATIONS, order="asc", limit=5)
    assert [c["id"] for c in page["data"]] == created[:5] and page["has_more"] is True
    desc = await get_page(user.client, CONVERSATIONS, order="desc")
    assert [c["id"] for c in desc["data"]] == created[::-1]


async def test_empty_list(user: Any) -> None:
    page = await get_page(user.client, CONVERSATIONS)
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


async def test_messages_oldest_first_and_turns_newest_first(user: Any, model: Any) -> None:
    tag, tag2 = marker(), marker()
    model.script(tag, [{"kind": "reply", "content": "first answer"}])
    model.script(tag2, [{"kind": "reply", "content": "second answer"}])
    conv = await create_conversation(user.client)
    turns = []
    for content in (f"first question {tag}", f"second question {tag2}"):
        started = await start_turn_json(user.client, conv["id"], content)
        assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"
        turns.append(started["turn"]["id"])

    path = f"/api/v1/conversations/{conv['id']}/messages"
    page = await get_page(user.client, path)
    contents = [m["content"] for m in page["data"]]
    assert contents == [f"first question {tag}", "first answer", f"second question {tag2}", "second answer"]
    assert [m["role"] for m in page["data"]] == ["user", "assistant", "user", "assistant"]
    ids = [m["id"] for m in page["data"]]
    assert await walk(user.client, path, cursor="after", limit=1) == ids
    assert await walk(user.client, path, cursor="after", limit=3, order="desc") == ids[::-1]
    assert await walk(user.client, path, cursor="before", start=ids[-1], limit=1) == ids[:-1]
    desc = await get_page(user.client, path, order="desc", limit=2)
    assert [m["id"] for m in desc["data"]] == ids[:1:-1] and desc["has_more"] is True

    turns_path = f"/api/v1/conversations/{conv['id']}/turns"
    listed = await get_page(user.client, turns_path)
    assert [t["id"] for t in listed["data"]] == turns[::-1]
    assert await walk(user.client, turns_path, cursor="after", limit=1) == turns[::-1]
    assert await walk(user.client, turns_path, cursor="after", limit=1, order="asc") == turns
