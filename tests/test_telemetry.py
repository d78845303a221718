"""Tracing and error tracking, on by configuration only (core/telemetry.py).

A loopback OTLP/HTTP collector records what real `assistant api` and `assistant worker`
processes export during one turn; a loopback Sentry endpoint records the envelope of an error
reported by a process set up the same way. Without the variables, or without the packages,
nothing is sent and the process runs on.
"""

import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devstack import free_port
from tests.conftest import ROOT, assistant_process, marker
from tests.helpers import create_conversation, start_turn_json, wait_turn, wait_until_serving

pytestmark = pytest.mark.slow


@dataclass
class Recorder:
    """A loopback HTTP server keeping every POST: (path, headers, decoded body)."""

    url: str
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    port = free_port()
    rec = Recorder(url=f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            rec.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ExportedSpan:
    service: str
    name: str
    kind: int


def exported_spans(rec: Recorder) -> list[ExportedSpan]:
    spans = []
    for path, headers, body in rec.posts:
        assert path == "/v1/traces", path
        assert headers["content-type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(ExportedSpan(attributes["service.name"], span.name, span.kind))
    return spans


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child process of this project, with `env` added and the telemetry
    variables of this process left out."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRY_"))} | {
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_turn_is_traced_through_the_api_and_the_worker(own_queue, user, model, recorder):
    env, logs = own_queue
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": recorder.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "Traced."}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        assistant_process(["api", "--port", str(port)], env, logs / "api.log") as api,
        assistant_process(["worker"], env, logs / "worker.log") as worker,
    ):
        await wait_until_serving(url, api)
        headers = {"Authorization": f"Bearer {user.key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            conv = await create_conversation(client)
            turn_id = (await start_turn_json(client, conv["id"], f"hello {tag}"))["turn"]["id"]
            turn = await wait_turn(client, turn_id)
            assert turn["status"] == "completed", turn
        # A clean stop flushes the spans still batched.
        for proc in (api, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (api, worker):
            assert proc.wait(timeout=60) == 0

    spans = exported_spans(recorder)
    api_spans = [s for s in spans if s.service == "assistant-api"]
    worker_spans = [s for s in spans if s.service == "assistant-worker"]
    assert {s.service for s in spans} == {"assistant-api", "assistant-worker"}
    # The API: an HTTP server span of the request that started the turn.
    assert any(
        s.kind == Span.SPAN_KIND_SERVER and s.name.startswith("POST /api/v1/conversations/")
        for s in api_spans
    ), [s.name for s in api_spans]
    # The worker: the turn's workflow and its activities.
    names = {s.name for s in worker_spans}
    assert "RunWorkflow:TurnWorkflow" in names, names
    assert any(name.startswith("RunActivity:") for name in names), names


def test_without_the_endpoint_nothing_is_exported(recorder):
    # Every other OTel variable points at the collector: only OTEL_EXPORTER_OTLP_ENDPOINT turns it on.
    done = run_python(
        """
        from opentelemetry import trace
        from core.config import Settings
        from core.telemetry import setup_tracing, temporal_interceptors
        assert setup_tracing(Settings(), "probe") is False
        assert temporal_interceptors() == []
        with trace.get_tracer("probe").start_as_current_span("a span"):
            pass
        print("ran")
        """,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{recorder.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="10",
    )
    assert done.returncode == 0, done.stderr
    assert "ran" in done.stdout
    assert recorder.posts == []


def test_configured_without_the_packages_warns_and_runs_on(recorder):
    done = run_python(
        """
        import sys
        sys.modules["opentelemetry.sdk"] = None  # as if the extra were not installed
        sys.modules["sentry_sdk"] = None
        from core.config import Settings
        from core.telemetry import setup_error_tracking, setup_tracing
        assert setup_tracing(Settings(), "probe") is False
        assert setup_error_tracking(Settings()) is False
        print("ran")
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=recorder.url,
        SENTRY_DSN=f"http://key@{recorder.url.removeprefix('http://')}/1",
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "ran" in output
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed" in output
    assert "SENTRY_DSN is set but sentry-sdk is not installed" in output
    assert "durable-assistant[observability]" in output
    assert recorder.posts == []


def test_errors_reach_sentry_when_a_dsn_is_set(recorder):
    code = """
        import sentry_sdk
        from core.config import Settings
        from core.telemetry import setup_error_tracking
        print("on" if setup_error_tracking(Settings()) else "off")
        try:
            raise RuntimeError("telemetry probe failure, key sk-asst-0123456789abcdef")
        except RuntimeError as err:
            sentry_sdk.capture_exception(err)
        sentry_sdk.flush(10)
        """
    dsn = f"http://key@{recorder.url.removeprefix('http://')}/1"
    done = run_python(code, SENTRY_DSN=dsn, ASSISTANT_ENV="development")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "on"
    envelopes = [(path, body) for path, _, body in recorder.posts if path.startswith("/api/1/envelope/")]
    assert envelopes, recorder.posts
    items = [json.loads(line) for _, body in envelopes for line in body.splitlines() if line.startswith(b"{")]
    events = [item for item in items if item.get("exception")]
    assert events, items
    event = events[0]
    assert event["environment"] == "development"
    # Secrets are redacted as in the logs.
    assert event["exception"]["values"][-1]["value"] == "telemetry probe failure, key sk-asst-[redacted]"
    assert not any(b"0123456789abcdef" in body for _, body in envelopes)
    assert "user" not in event or not event["user"].get("ip_address")

    # Without the DSN, nothing is sent.
    recorder.posts.clear()
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "off"
    assert recorder.posts == []
