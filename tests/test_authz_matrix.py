"""The authorisation matrix, generated from the running API's OpenAPI schema, so that a new
route is covered (or fails this test until it is) without anyone remembering to add it.

For every operation under /api/v1: user B calls it with user A's ids (and a valid body,
built from the schema) and gets exactly what an id that never existed gets (404
`not_found`; 403 `admin_required` on admin routes), with nothing of A's in the answer or
its headers; operations without ids answer B with nothing of A's. A's objects are
unchanged afterwards.
"""

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn
from tests.test_approvals import script_email
from tests.test_isolation import SECRET_TITLE, Owner, assert_hidden, owner_with_a_turn

# What each path parameter names; a route with a parameter not listed here fails the test,
# so whoever adds it decides which object it is.
OBJECT_OF_PARAMETER = {
    "conversation_id": "conv",
    "turn_id": "turn",
    "approval_id": "approval",
    "key_id": "key",
    "user_id": "user",
}
UNKNOWN_IDS = {
    "conv": "conv_00000000000000000000000000",
    "turn": "turn_00000000000000000000000000",
    "approval": "apr_00000000000000000000000000",
    "key": "key_00000000000000000000000000",
    "user": "usr_00000000000000000000000000",
}
ADMIN_PREFIX = "/api/v1/users"


class Matrix:
    """User A with one object of every kind (and an approval waiting), and user B."""

    def __init__(self, owner: Owner, ids: dict[str, str], b: Any, spec: dict[str, Any]) -> None:
        self.owner, self.ids, self.b, self.spec = owner, ids, b, spec


@pytest.fixture
async def matrix(make_user: Any, model: Any, api_url: str) -> AsyncIterator[Matrix]:
    a, b = await make_user("alice"), await make_user("bob")
    owner = await owner_with_a_turn(a, model)
    # A second conversation whose turn waits on an approval, so approval routes have a target.
    mail_tag = marker()
    script_email(model, mail_tag, {"to": "bob@example.test", "subject": f"A's mail {mail_tag}", "body": "x"})
    waiting_conv = await create_conversation(a.client, title=SECRET_TITLE)
    waiting = await start_turn_json(a.client, waiting_conv["id"], f"mail it {mail_tag}")
    parked = await wait_turn(a.client, waiting["turn"]["id"], until=("awaiting_approval",))
    (approval,) = parked["pending_approvals"]
    owner.secrets.append(mail_tag)
    me = (await a.client.get("/api/v1/auth/me")).json()
    ids = {"conv": owner.conv, "turn": owner.turn, "approval": approval["id"]}
    ids |= {"key": owner.key_id, "user": me["id"]}
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
    yield Matrix(owner, ids, b, spec)
    await a.client.post(f"/api/v1/turns/{waiting['turn']['id']}/cancel")  # not left parked


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def example(schema: dict[str, Any], spec: dict[str, Any], depth: int = 0) -> Any:
    """A small valid instance of `schema` (required fields only), to get past body validation."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example(spec["components"]["schemas"][name], spec, depth + 1)
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in schema:
            options = [s for s in schema[combined] if s.get("type") != "null"]
            return example(options[0], spec, depth + 1)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = str(schema.get("type"))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return {name: example(properties[name], spec, depth + 1) for name in schema.get("required", [])}
    return {"string": "x", "integer": 1, "number": 1, "boolean": False, "array": []}.get(kind, "x")


def request_for(operation: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    return {"json": example(body["schema"], spec)} if body else {}


def test_every_path_parameter_names_a_known_object(matrix: Matrix) -> None:
    for _, path, _ in operations(matrix.spec):
        for name in re.findall(r"{(\w+)}", path):
            assert name in OBJECT_OF_PARAMETER, f"{path}: which object does {{{name}}} name?"


async def test_b_with_as_ids_gets_what_an_unknown_id_gets_on_every_route(matrix: Matrix) -> None:
    owner, b = matrix.owner, matrix.b
    checked = []
    for method, path, operation in operations(matrix.spec):
        names = re.findall(r"{(\w+)}", path)
        if not names:
            continue
        kwargs = request_for(operation, matrix.spec)
        a_url = path.format(**{n: matrix.ids[OBJECT_OF_PARAMETER[n]] for n in names})
        unknown_url = path.format(**{n: UNKNOWN_IDS[OBJECT_OF_PARAMETER[n]] for n in names})
        status, code = (403, "admin_required") if path.startswith(ADMIN_PREFIX) else (404, "not_found")
        for accept in ("application/json", "text/event-stream"):
            headers = {"Accept": accept}
            response = await b.client.request(method, a_url, headers=headers, **kwargs)
            assert_hidden(response, owner, status=status, code=code)
            unknown = await b.client.request(method, unknown_url, headers=headers, **kwargs)
            assert (unknown.status_code, unknown.json()["code"]) == (status, code), (method, path)
            assert set(unknown.headers) == set(response.headers), (method, path)
        checked.append(f"{method} {path}")
    assert len(checked) >= 13, checked  # every id route of API.md, at least
    await assert_a_unchanged(matrix)


async def test_routes_without_ids_show_b_nothing_of_as(matrix: Matrix) -> None:
    owner, b = matrix.owner, matrix.b
    for method, path, _ in operations(matrix.spec):
        if method != "GET" or "{" in path:
            continue
        response = await b.client.get(path)
        expected = 403 if path.startswith(ADMIN_PREFIX) else 200
        assert response.status_code == expected, (path, response.text)
        for secret in [*owner.secrets, *matrix.ids.values()]:
            if secret == matrix.ids["user"] and path == "/api/v1/auth/me":
                continue
            assert secret not in response.text, (path, secret)


async def assert_a_unchanged(matrix: Matrix) -> None:
    a = matrix.owner.client
    conv = await a.get(f"/api/v1/conversations/{matrix.ids['conv']}")
    assert conv.status_code == 200 and conv.json()["title"] == SECRET_TITLE
    approval = (await a.get(f"/api/v1/approvals/{matrix.ids['approval']}")).json()
    assert approval["status"] == "pending"
    turn = (await a.get(f"/api/v1/turns/{approval['turn_id']}")).json()
    assert turn["status"] == "awaiting_approval"
    keys = (await a.get("/api/v1/auth/keys")).json()["data"]
    assert [k["id"] for k in keys] == [matrix.ids["key"]]
    assert (await a.get("/api/v1/auth/me")).status_code == 200
