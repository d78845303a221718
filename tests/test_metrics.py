"""Prometheus metrics: the API's /metrics and the worker's metrics port move as a turn runs,
label requests by route template (never ids), honour METRICS_TOKEN, and cover every process
under `dev`; the Grafana dashboard queries only metrics that exist."""

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.app import create_app
from core import metrics as worker_metrics
from devstack import free_port
from tests.conftest import _serve, assistant_process, marker
from tests.helpers import create_conversation, read_sse, start_turn_json, wait_turn
from tests.test_approvals import email_args, script_email
from tests.test_dev_command import _start_dev, _stop_dev, _stream_reply

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def names_in(text: str) -> set[str]:
    """Every series name an exposition offers a query, families without samples included."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def api_metrics(api_url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api_url) as client:
        return await client.get("/metrics", headers=headers)


def worker_samples() -> Samples:
    """The session worker runs in this process: its registry is what its port would serve."""
    return parse(generate_latest(worker_metrics.REGISTRY).decode())


async def test_a_turn_moves_the_api_and_worker_metrics(user, model, api_url, monkeypatch):
    tag = marker()
    model_name = f"metrics-{uuid.uuid4().hex[:8]}"  # a label no other test's turn touches
    monkeypatch.setattr(worker_metrics, "_models_seen", set())  # room for its own series
    script_email(model, tag, email_args(tag), then="Sent.")
    api_before = parse((await api_metrics(api_url)).text)
    worker_before = worker_samples()

    conv = await create_conversation(user.client, model=model_name)
    turn_id = (await start_turn_json(user.client, conv["id"], f"mail bob {tag}"))["turn"]["id"]
    parked = await wait_turn(user.client, turn_id, until=("awaiting_approval",))
    assert parked["status"] == "awaiting_approval", parked
    approval = parked["pending_approvals"][0]
    decided = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    done = await wait_turn(user.client, turn_id)
    assert done["status"] == "completed", done

    response = await api_metrics(api_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    api_after = parse(response.text)
    # The finish activity counts once its commit returns, a moment after the API can see it.
    for _ in range(100):
        worker_after = worker_samples()
        if value(worker_after, "turn_duration_seconds_count") > value(
            worker_before, "turn_duration_seconds_count"
        ):
            break
        await asyncio.sleep(0.05)

    def api_delta(name: str, **labels: str) -> float:
        return value(api_after, name, **labels) - value(api_before, name, **labels)

    def worker_delta(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    # The API: requests by route template, with their status; no id in any label.
    turn_route = "/api/v1/turns/{turn_id}"
    assert api_delta("app_requests_total", method="GET", route=turn_route, status="200") >= 2
    assert (
        api_delta(
            "app_requests_total",
            method="POST",
            route="/api/v1/conversations/{conversation_id}/messages",
            status="202",
        )
        == 1
    )
    assert (
        api_delta("app_requests_total", method="POST", route="/api/v1/approvals/{approval_id}", status="200")
        == 1
    )
    assert api_delta("app_request_duration_seconds_count", method="GET", route=turn_route) >= 2
    assert value(api_after, "app_active_requests") >= 1  # this scrape itself
    for (name, labels), _ in api_after.items():
        for _label, label_value in labels:
            assert not re.search(r"(conv|turn|apr|msg|usr|key)_[0-9A-Za-z]{6,}", label_value), (name, labels)

    # The worker: a turn started and completed, two model calls with their tokens, a tool
    # call approved and run.
    usage = done["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert worker_delta("openai_tokens_total", model=model_name, kind="prompt") == usage["prompt_tokens"]
    assert (
        worker_delta("openai_tokens_total", model=model_name, kind="completion") == usage["completion_tokens"]
    )
    assert worker_delta("turns_started_total") >= 1
    assert worker_delta("turns_finished_total", status="completed") >= 1
    assert worker_delta("turn_duration_seconds_count") >= 1
    assert worker_delta("time_to_first_token_seconds_count") >= 2
    assert worker_delta("tool_calls_total", tool="send_email", outcome="ok") >= 1
    assert worker_delta("tool_call_duration_seconds_count", tool="send_email") >= 1
    assert worker_delta("approvals_decided_total", decision="approved") >= 1
    assert worker_delta("approval_wait_seconds_count") >= 1


async def test_unmatched_paths_are_one_series(api_url):
    before = parse((await api_metrics(api_url)).text)
    async with httpx.AsyncClient(base_url=api_url) as client:
        for _ in range(3):
            assert (await client.get(f"/no-such-page-{uuid.uuid4().hex}")).status_code == 404
    after = parse((await api_metrics(api_url)).text)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "app_requests_total", **labels) - value(before, "app_requests_total", **labels) == 3
    assert not any("no-such-page" in v for (_, ls) in after for _, v in ls)


async def test_sse_clients_are_gauged_while_a_stream_is_open(user, model, api_url):
    tag = marker()
    script_email(model, tag, email_args(tag), then="Not sent.")
    conv = await create_conversation(user.client)
    turn_id = (await start_turn_json(user.client, conv["id"], tag))["turn"]["id"]
    parked = await wait_turn(user.client, turn_id, until=("awaiting_approval",))
    assert parked["status"] == "awaiting_approval", parked  # its stream stays open while it waits
    before = value(parse((await api_metrics(api_url)).text), "sse_clients_connected")
    async with user.client.stream("GET", f"/api/v1/turns/{turn_id}/events") as stream:
        assert stream.status_code == 200
        during = value(parse((await api_metrics(api_url)).text), "sse_clients_connected")
        assert during == before + 1
    for _ in range(100):  # the server notices the client left just after it did
        after = value(parse((await api_metrics(api_url)).text), "sse_clients_connected")
        if after == before:
            break
        await asyncio.sleep(0.05)
    assert after == before
    assert (await user.client.post(f"/api/v1/turns/{turn_id}/cancel")).status_code == 202
    assert (await wait_turn(user.client, turn_id))["status"] == "cancelled"


async def test_a_rejection_is_counted_with_its_wait(user, model):
    tag = marker()
    script_email(model, tag, email_args(tag), then="Not sent.")
    before = worker_samples()
    conv = await create_conversation(user.client)
    turn_id = (await start_turn_json(user.client, conv["id"], tag))["turn"]["id"]
    parked = await wait_turn(user.client, turn_id, until=("awaiting_approval",))
    approval = parked["pending_approvals"][0]
    rejected = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "reject"})
    assert rejected.status_code == 200, rejected.text
    assert (await wait_turn(user.client, turn_id))["status"] == "completed"
    after = worker_samples()  # the rejection is recorded before the turn's next model step

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Exact where only this test can count (an expiry elsewhere also records a rejected call).
    assert delta("approvals_decided_total", decision="rejected") == 1
    assert delta("approval_wait_seconds_count") >= 1
    assert delta("tool_calls_total", tool="send_email", outcome="rejected") >= 1


async def test_metrics_token_is_required_when_set(settings, pool, worker):
    token = f"metrics-{uuid.uuid4().hex}"
    port = free_port()
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(token)}))
    server, task = await _serve(app, port)
    try:
        url = f"http://127.0.0.1:{port}"
        missing = await api_metrics(url)
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["code"] == "unauthenticated"
        wrong = await api_metrics(url, Authorization="Bearer not-the-token")
        assert wrong.status_code == 401
        right = await api_metrics(url, Authorization=f"Bearer {token}")
        assert right.status_code == 200 and "app_requests_total" in right.text
        # An API key is not the metrics token: /metrics does not take one.
        assert (await api_metrics(url, Authorization="Bearer sk-asst-whatever")).status_code == 401
    finally:
        server.should_exit = True
        await task


async def _scrape_until(url: str, proc, *wanted: str) -> str:
    """The exposition at `url` once it names all of `wanted` (the process must not exit first)."""
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            assert proc.poll() is None, "the worker exited early"
            try:
                response = await client.get(url)
                if response.status_code == 200 and all(w in response.text for w in wanted):
                    return response.text
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never served {wanted}")


async def test_worker_metrics_port_and_the_dev_api_cover_every_process(settings, pool, worker, own_queue):
    env, logs = own_queue
    port = free_port()
    with assistant_process(["worker", "--metrics-port", str(port)], env, logs / "worker.log") as proc:
        worker_url = f"http://127.0.0.1:{port}/metrics"
        # The worker's own metrics, and the Temporal SDK's (reported as its pollers start).
        sdk_metrics = sorted(
            n for n in _queried_metrics(json.loads(DASHBOARD.read_text())) if "temporal" in n
        )
        assert sdk_metrics, "the dashboard shows the Temporal SDK's metrics"
        text = await _scrape_until(worker_url, proc, *sdk_metrics)
        names = names_in(text)
        assert {"turns_started_total", "openai_tokens_total", "tool_calls_total"} <= names
        assert {"approval_wait_seconds_bucket", "time_to_first_token_seconds_bucket"} <= names
        assert "app_requests_total" not in names  # each process serves its own

        # Under `dev` the API appends the worker's exposition (development only).
        api_port = free_port()
        app = create_app(settings.model_copy(update={"worker_metrics_url": worker_url}))
        server, task = await _serve(app, api_port)
        try:
            combined = (await api_metrics(f"http://127.0.0.1:{api_port}")).text
            combined_names = names_in(combined)  # parses: no family appears twice
            assert {"app_requests_total", "sse_clients_connected", "turns_started_total"} <= combined_names
            assert any(n.startswith("temporal_") for n in combined_names)

            # The dashboard queries only metrics these processes expose.
            dashboard = json.loads(DASHBOARD.read_text())
            queried = _queried_metrics(dashboard)
            assert queried, "the dashboard queries no metric"
            missing = queried - combined_names
            assert not missing, f"the dashboard queries metrics nobody exposes: {sorted(missing)}"
        finally:
            server.should_exit = True
            await task


def _queried_metrics(dashboard: dict) -> set[str]:
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(dashboard)
    prefixes = ("app_", "sse_", "openai_", "turn", "time_to_", "tool_", "approval", "temporal_")
    found: set[str] = set()
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}", "", expr)
        without_by = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_labels)
        found.update(t for t in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_by) if t.startswith(prefixes))
    return found


@pytest.mark.slow
def test_dev_metrics_cover_the_api_and_the_worker(tmp_path):
    """`assistant dev`: one scrape of the API shows a turn counted by the worker process."""
    with open(tmp_path / "dev.log", "w") as log:
        proc, base, key, _ = _start_dev(tmp_path / "data", free_port(), log)
        try:
            headers = {"Authorization": f"Bearer {key}"}
            conv = httpx.post(f"{base}/api/v1/conversations", json={}, headers=headers).json()
            events = _stream_reply(base, key, conv["id"], "What are you?")
            assert events[-1]["type"] == "complete"
            for _ in range(100):  # the worker counts the end just after the API can show it
                samples = parse(httpx.get(f"{base}/metrics").text)
                if value(samples, "turns_finished_total", status="completed") == 1:
                    break
                time.sleep(0.05)
            assert value(samples, "turns_finished_total", status="completed") == 1
            assert value(samples, "turns_started_total") == 1
            usage = {
                kind: value(samples, "openai_tokens_total", model="gpt-4o-mini", kind=kind)
                for kind in ("prompt", "completion")
            }
            assert usage["prompt"] > 0 and usage["completion"] > 0
            route = "/api/v1/conversations/{conversation_id}/messages"
            assert value(samples, "app_requests_total", method="POST", route=route, status="200") == 1
            assert any(name.startswith("temporal_") for name, _ in samples)
        finally:
            alive = _stop_dev(proc)
        assert alive == []


def test_model_names_chosen_by_users_cannot_grow_the_series_without_bound(monkeypatch):
    monkeypatch.setattr(worker_metrics, "_models_seen", set())
    labels = [worker_metrics.model_label(f"model-{i}") for i in range(worker_metrics.MAX_MODEL_LABELS + 5)]
    assert labels[: worker_metrics.MAX_MODEL_LABELS] == [f"model-{i}" for i in range(20)]
    assert set(labels[worker_metrics.MAX_MODEL_LABELS :]) == {worker_metrics.OTHER_MODEL}
    assert worker_metrics.model_label("model-3") == "model-3", "a known model keeps its series"


async def test_events_sent_live_are_timed_from_their_write(user, model, api_url):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": " ".join(f"w{i}" for i in range(20)), "delay_ms": 20}])
    conv = await create_conversation(user.client)
    before = parse((await api_metrics(api_url)).text)
    events, _ = await read_sse(
        user.client, "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": tag}
    )
    after = parse((await api_metrics(api_url)).text)
    observed = value(after, "event_log_lag_seconds_count") - value(before, "event_log_lag_seconds_count")
    total = value(after, "event_log_lag_seconds_sum") - value(before, "event_log_lag_seconds_sum")
    # Other tests' streams may add to it too; this stream's live events are most of its events.
    assert observed >= len(events) // 2, (observed, len(events))
    assert 0 < total / observed < 1.0, "a live event reaches its stream well within a second"
