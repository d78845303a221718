"""A small synchronous client of the public API (API.md), for the terminal chat.

The SSE parser is ours rather than httpx-sse's because httpx-sse is only a development dependency
of the project; the stream format we read is the small subset API.md fixes (id, event, data,
`: ping` comments). A turn's stream is resumed with `Last-Event-ID` whenever the connection drops
or the caller interrupts it, so a reader never sees an event twice or misses one.
"""

import json
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import httpx

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
_STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)  # pings come every 15 s; silence means a dead link
_RECONNECT_FOR = 60.0


class ChatError(Exception):
    """Anything that stops a request of the chat client."""


class Unreachable(ChatError):
    """The API did not answer at its URL."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach the API at {url} ({type(cause).__name__}: {cause})")
        self.url = url


class Unauthorized(ChatError):
    """The API refused the key (401)."""

    def __init__(self) -> None:
        super().__init__("the key was refused (401): check --key, ASSISTANT_API_KEY or the dev login key")


class ApiError(ChatError):
    """An RFC 9457 problem answered by the API."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.code: str = problem.get("code") or f"http_{status}"
        self.detail: str = problem.get("detail") or problem.get("title") or ""
        self.errors: list[dict[str, Any]] = problem.get("errors") or []
        self.problem = problem
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"{self.code}: {self.detail}" if self.detail else self.code]
        for error in self.errors:
            where = ".".join(str(part) for part in error.get("loc", []) if part != "body")
            lines.append(f"  {where or '-'}: {error.get('msg') or error.get('message') or error}")
        return "\n".join(lines)


class ApiClient:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(30.0)
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise Unreachable(self.url, err) from None
        _raise_for_problem(response)
        return response.json() if response.content else None

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/api/v1/auth/me")
        return result

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/conversations/{conversation_id}")
        return result

    def create_conversation(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/conversations", json={})
        return result

    def approval(self, approval_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/approvals/{approval_id}")
        return result

    def decide(self, approval_id: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/api/v1/approvals/{approval_id}", json=body)
        return result

    def cancel(self, turn_id: str) -> None:
        self.request("POST", f"/api/v1/turns/{turn_id}/cancel")

    def send_message(self, conversation_id: str, content: str) -> "TurnStream":
        """Post a user message; its reply is the turn's event stream."""
        request = self._http.build_request(
            "POST",
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"content": content},
            # A retried POST (after a timeout) must not start a second turn.
            headers={"Accept": "text/event-stream", "Idempotency-Key": uuid.uuid4().hex},
            timeout=_STREAM_TIMEOUT,
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as err:
            raise Unreachable(self.url, err) from None
        if response.status_code != 200:
            response.read()
            response.close()
            _raise_for_problem(response)
        return TurnStream(self, response.headers["X-Turn-ID"], response)

    def follow(self, turn_id: str, after: int = 0) -> "TurnStream":
        return TurnStream(self, turn_id, None, last_seq=after)

    def _open_events(self, turn_id: str, after: int) -> httpx.Response | None:
        """The turn's stream after `after`, or None when nothing is left (204)."""
        request = self._http.build_request(
            "GET",
            f"/api/v1/turns/{turn_id}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(after)},
            timeout=_STREAM_TIMEOUT,
        )
        response = self._http.send(request, stream=True)
        if response.status_code == 204:
            response.close()
            return None
        if response.status_code != 200:
            response.read()
            response.close()
            _raise_for_problem(response)
        return response


class TurnStream:
    """The events of one turn, in order, once each, across reconnects.

    Close an interrupted iterator and iterate again to resume from the last event seen.
    """

    def __init__(
        self, api: ApiClient, turn_id: str, response: httpx.Response | None, last_seq: int = 0
    ) -> None:
        self.api = api
        self.turn_id = turn_id
        self.last_seq = last_seq
        self.ended = False
        self._response = response

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def events(self) -> Generator[dict[str, Any], None, None]:
        failing_since: float | None = None
        while not self.ended:
            response, self._response = self._response, None  # this pass owns (and closes) it
            try:
                if response is None:
                    response = self.api._open_events(self.turn_id, self.last_seq)
                    if response is None:
                        self.ended = True
                        return
                for event in _parse_sse(response):
                    failing_since = None
                    if event["seq"] <= self.last_seq:
                        continue
                    self.last_seq = event["seq"]
                    self.ended = event["type"] in TERMINAL_EVENTS
                    yield event
                    if self.ended:
                        return
            except httpx.TransportError as err:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > _RECONNECT_FOR:
                    raise Unreachable(self.api.url, err) from None
                time.sleep(1.0)
            finally:
                if response is not None:
                    response.close()


def _parse_sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    if response.status_code == 401:
        raise Unauthorized()
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:200]}
    raise ApiError(response.status_code, problem if isinstance(problem, dict) else {})
