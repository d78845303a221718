"""Turn latency: what the assistant adds to a model's first token and to the token stream.

Run with `make bench` (or `.venv/bin/python bench/turn_latency.py --turns 30`). It starts
the whole stack on this machine: embedded PostgreSQL, the Temporal dev server (in memory),
the built-in fake model, one worker and one API, each a child process of this one, talking
only over 127.0.0.1. It is a measurement, not a test: it exits 0 whatever the figures are,
and non-zero only when the run itself fails.

Method
------
The fake model is scripted to answer every benchmark message with the same reply: 40 word
tokens, each preceded by a fixed pause (default 20 ms). Two kinds of runs stream that reply,
alternately (order swapped every pair, ABBA, so drifting machine noise hits both alike),
each on a fresh message (and, for the assistant, a fresh conversation), after warm-up runs.
Each run starts after an idle pause (`--settle-ms`, 200 ms), like a person's pause between
messages (it also kept the baseline honest while the fake model lacked TCP_NODELAY).

* direct: the official `openai.AsyncOpenAI` client (max_retries=0) streams a chat completion
  straight from the fake model. Time to first token = request start -> first content delta.
* assistant: `POST /api/v1/conversations/{id}/messages` (SSE response). Time to first token =
  request start -> first `token` event. The first-token overhead is the paired difference
  assistant - direct of the two runs of a pair (so both include the same 20 ms model pause).

Relay lag (how late each piece of text reaches an assistant client compared with a direct
client) needs the time the model emitted each token. The fake model records when it
received each request (`GET /_fake/requests`, wall clock, same host). The direct runs give
the stream's profile: P(k) = median over direct runs of (arrival of token k - model
receipt of the request). In an assistant run the worker's `openai` client sees token k at
E(k) = receipt of the worker's request + P(k), so for a `token` event arriving at time A
and carrying tokens a..b (the relay batches deltas):

* relay lag per token = A - E(k) for every k in a..b: what a user sees, batching included.
  It splits at the row's insert time I (the event's `timestamp`, `clock_timestamp()`):
  worker = I - E(k) (wait for the batch, flush) and API = A - I (commit, NOTIFY, LISTEN,
  read, SSE).

Comparing with the measured direct profile, instead of an ideal k * pause schedule, cancels
the model's own pacing jitter and the cost of the HTTP/SSE client itself. All cross-process
times are wall-clock (`time.time()`, PostgreSQL `clock_timestamp()`, Temporal event times):
one host, one clock.

Breakdown: for each assistant run the bench also collects the event log's insert times
(`timestamp` of each event), the Temporal history (workflow and activity task times) and
the model's request receipt, and prints the median time of each step since the POST.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import openai
from httpx_sse import aconnect_sse
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from devstack import EmbeddedPostgres, EmbeddedTemporal, free_port, spawn, stop_process, wait_for_port
from fakemodel.chunks import tokenize

MATCH = "[bench-latency]"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "it", "streams")
TARGET_OVERHEAD_MS = 25.0
RUN_TIMEOUT = 60.0
TERMINAL = ("complete", "error", "cancelled")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --------------------------------------------------------------------------- the stack


class Stack:
    """PostgreSQL, Temporal, the fake model, a worker and an API, all children of this process."""

    def __init__(self, data_dir: Path, *, temporal_on_disk: bool = False) -> None:
        self.dir = data_dir
        # On disk (SQLite) is what `assistant dev` runs; in memory is the SDK tests' server.
        self.temporal_on_disk = temporal_on_disk
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self.model_url = ""
        self.api_url = ""
        self.api_key = ""
        self.temporal_address = ""
        self.logs: list[Path] = []

    def start(self) -> None:
        pg = EmbeddedPostgres(self.dir)
        self._stops.append(("postgres", pg.stop))
        self.logs.append(pg.log)
        dsn = pg.start()
        temporal = EmbeddedTemporal(self.dir, persistent=self.temporal_on_disk)
        self._stops.append(("temporal", temporal.stop))
        self.logs.append(temporal.log)
        self.temporal_address = temporal.start()
        model_port, api_port = free_port(), free_port()
        self.model_url = f"http://127.0.0.1:{model_port}"
        self.api_url = f"http://127.0.0.1:{api_port}"
        env = dict(
            os.environ,
            DATABASE_URL=dsn,
            TEMPORAL_ADDRESS=self.temporal_address,
            OPENAI_BASE_URL=f"{self.model_url}/v1",
            OPENAI_API_KEY="x",
            TEMPORAL_TASK_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
            LOG_LEVEL="WARNING",
            ASSISTANT_DATA_DIR=str(self.dir),
            NO_PROXY="127.0.0.1,localhost",
        )
        self._child("fake-model", ["fake-model", "--port", str(model_port)], env, port=model_port)
        self._cli(["migrate"], env)
        created = json.loads(self._cli(["users", "create", "bench", "--json"], env))
        self.api_key = created["api_key"]
        self._child("worker", ["worker"], env)
        self._child("api", ["api", "--port", str(api_port)], env, port=api_port)

    def _child(self, name: str, args: list[str], env: dict[str, str], *, port: int | None = None) -> None:
        log = self.dir / f"{name}.log"
        self.logs.append(log)
        proc = spawn([sys.executable, "-m", "cli", *args], env=env, log_path=log)
        self._stops.append((name, lambda: stop_process(proc)))
        if port is not None:
            wait_for_port(port, proc, timeout=60, what=name, log=log)

    def _cli(self, args: list[str], env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`assistant {' '.join(args)}` failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        """Stop every child started so far, newest first; never raises."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as err:
                print(f"bench: stopping {name} failed: {err}", file=sys.stderr)

    def print_log_tails(self, lines: int = 20) -> None:
        for log in self.logs:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    print(f"--- {log.name} (last {len(tail)} lines)", file=sys.stderr)
                    print("\n".join(tail), file=sys.stderr)


# --------------------------------------------------------------------------- samples


@dataclass
class DirectSample:
    first_token: float  # request start -> first content delta, seconds
    gaps: list[float]  # between consecutive content deltas
    since_receipt: list[float]  # arrival of token k - model's receipt of the request


@dataclass
class TokenEvent:
    arrival: float  # wall clock at the client
    inserted: float  # wall clock of the row insert (the event's `timestamp`)
    index: int
    content: str


@dataclass
class AssistantSample:
    turn_id: str
    start: float  # wall clock of the POST
    first_token: float  # POST -> first token event, seconds
    tokens: list[TokenEvent]
    deliveries: list[float]  # client arrival - row insert, for events written after the POST began
    model_receipt: float
    milestones: dict[str, float] = field(default_factory=dict)  # name -> wall clock


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _model_receipt(http: httpx.AsyncClient, marker: str) -> float:
    response = await http.get("/_fake/requests", params={"match": marker})
    response.raise_for_status()
    recorded = response.json()
    if len(recorded) != 1:
        raise RuntimeError(f"expected one model request for {marker}, found {len(recorded)}")
    return float(recorded[0]["received_at"])


async def run_direct(model: openai.AsyncOpenAI, fake: httpx.AsyncClient, n_tokens: int) -> DirectSample:
    marker = f"{MATCH} direct {uuid.uuid4().hex[:12]}"
    arrivals: list[float] = []
    start = time.perf_counter()
    stream = await model.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": marker}], stream=True
    )
    first_wall = 0.0
    async with stream:
        async for chunk in stream:
            if any(choice.delta.content for choice in chunk.choices):
                arrivals.append(time.perf_counter())
                if not first_wall:
                    first_wall = time.time()
    if len(arrivals) != n_tokens:
        raise RuntimeError(f"direct stream had {len(arrivals)} content deltas, expected {n_tokens}")
    receipt = await _model_receipt(fake, marker)
    # Wall time of token k = first_wall + (arrival_k - arrival_0), on the precise clock.
    since_receipt = [first_wall + (a - arrivals[0]) - receipt for a in arrivals]
    return DirectSample(
        first_token=arrivals[0] - start,
        gaps=[b - a for a, b in itertools.pairwise(arrivals)],
        since_receipt=since_receipt,
    )


async def run_assistant(api: httpx.AsyncClient, fake: httpx.AsyncClient, text: str) -> AssistantSample:
    created = await api.post("/api/v1/conversations", json={"title": "bench"})
    if created.status_code != 201:
        raise RuntimeError(f"creating a conversation failed: {created.status_code} {created.text}")
    conversation_id = created.json()["id"]
    marker = f"{MATCH} assistant {uuid.uuid4().hex[:12]}"
    tokens: list[TokenEvent] = []
    deliveries: list[float] = []
    milestones: dict[str, float] = {}
    turn_id = ""
    start_wall, start = time.time(), time.perf_counter()
    first_token = 0.0
    terminal = ""
    async with aconnect_sse(
        api, "POST", f"/api/v1/conversations/{conversation_id}/messages", json={"content": marker}
    ) as source:
        milestones["API response headers"] = start_wall + (time.perf_counter() - start)
        if source.response.status_code != 200:
            await source.response.aread()
            raise RuntimeError(f"POST message: {source.response.status_code} {source.response.text}")
        turn_id = source.response.headers["X-Turn-ID"]
        async for sse in source.aiter_sse():
            arrival = start_wall + (time.perf_counter() - start)
            event = json.loads(sse.data)
            inserted = _ts(event["timestamp"])
            if inserted >= start_wall:
                deliveries.append(arrival - inserted)
            kind = event["type"]
            if kind == "status":
                milestones[f"'{event['status']}' event inserted"] = inserted
            elif kind == "token":
                if not tokens:
                    first_token = arrival - start_wall
                    milestones["first token event inserted"] = inserted
                    milestones["first token event at client"] = arrival
                tokens.append(TokenEvent(arrival, inserted, event["index"], event["content"]))
            if kind in TERMINAL:
                terminal = kind
                break
    if terminal != "complete":
        raise RuntimeError(f"turn {turn_id} ended with {terminal or 'no terminal event'}")
    rebuilt = "".join(t.content for t in tokens)
    if rebuilt != text:
        raise RuntimeError(f"turn {turn_id} streamed {rebuilt!r}, expected the scripted reply")
    receipt = await _model_receipt(fake, marker)
    milestones["model request received"] = receipt
    return AssistantSample(turn_id, start_wall, first_token, tokens, deliveries, receipt, milestones)


async def temporal_milestones(client: Client, turn_id: str) -> dict[str, float]:
    """Times of the first workflow and activity tasks of a turn, from its Temporal history."""
    history = await client.get_workflow_handle(turn_id).fetch_history()
    found: dict[str, float] = {}
    activity_of: dict[int, str] = {}
    workflow_tasks = 0
    for ev in history.events:
        name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_")
        at = ev.event_time.seconds + ev.event_time.nanos / 1e9
        if name == "WORKFLOW_EXECUTION_STARTED":
            found["workflow started"] = at
        elif name == "WORKFLOW_TASK_STARTED":
            workflow_tasks += 1
            if workflow_tasks <= 2:
                found.setdefault(f"workflow task {workflow_tasks} started", at)
        elif name == "WORKFLOW_TASK_COMPLETED" and workflow_tasks <= 2:
            found.setdefault(f"workflow task {workflow_tasks} completed", at)
        elif name == "ACTIVITY_TASK_SCHEDULED":
            activity = ev.activity_task_scheduled_event_attributes.activity_type.name
            activity_of[ev.event_id] = activity
            found.setdefault(f"{activity} scheduled", at)
        elif name == "ACTIVITY_TASK_STARTED":
            activity = activity_of.get(ev.activity_task_started_event_attributes.scheduled_event_id, "?")
            found.setdefault(f"{activity} started", at)
        elif name == "ACTIVITY_TASK_COMPLETED":
            activity = activity_of.get(ev.activity_task_completed_event_attributes.scheduled_event_id, "?")
            found.setdefault(f"{activity} completed", at)
    return found


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    direct: list[DirectSample]
    assistant: list[AssistantSample]
    overheads: list[float]  # paired assistant - direct first token, seconds
    tokens: list[str]
    delay_ms: float


async def measure(
    stack: Stack, *, turns: int, warmup: int, n_tokens: int, delay_ms: float, settle_ms: float
) -> Results:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(n_tokens))
    tokens = tokenize(text)
    assert len(tokens) == n_tokens
    async with (
        httpx.AsyncClient(base_url=stack.model_url, timeout=30, trust_env=False) as fake,
        httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=RUN_TIMEOUT,
            trust_env=False,
        ) as api,
    ):
        model = openai.AsyncOpenAI(
            base_url=f"{stack.model_url}/v1",
            api_key="x",
            max_retries=0,
            timeout=RUN_TIMEOUT,
            http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
        )
        temporal = await Client.connect(stack.temporal_address)
        await _wait_ready(api)
        script = {"match": MATCH, "steps": [{"kind": "reply", "content": text, "delay_ms": delay_ms}]}
        (await fake.post("/_fake/scripts", json=script)).raise_for_status()

        direct: list[DirectSample] = []
        assistant: list[AssistantSample] = []
        overheads: list[float] = []
        for i in range(warmup + turns):
            measured = i >= warmup
            label = f"turn {i - warmup + 1}/{turns}" if measured else f"warm-up {i + 1}/{warmup}"
            pair: dict[str, Any] = {}
            for kind in ("direct", "assistant") if i % 2 == 0 else ("assistant", "direct"):
                await asyncio.sleep(settle_ms / 1000)
                async with asyncio.timeout(RUN_TIMEOUT):
                    if kind == "direct":
                        pair[kind] = await run_direct(model, fake, n_tokens)
                    else:
                        pair[kind] = await run_assistant(api, fake, text)
            d: DirectSample = pair["direct"]
            a: AssistantSample = pair["assistant"]
            print(
                f"  {label}: direct {d.first_token * 1000:6.1f} ms, assistant {a.first_token * 1000:6.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            if measured:
                a.milestones.update(await temporal_milestones(temporal, a.turn_id))
                direct.append(d)
                assistant.append(a)
                overheads.append(a.first_token - d.first_token)
        await model.close()
    return Results(direct, assistant, overheads, tokens, delay_ms)


async def _wait_ready(api: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await api.get("/readyz")).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not become ready within 60 s")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- analysis and report


@dataclass
class Row:
    name: str
    values: list[float]  # milliseconds


def token_ends(tokens: Sequence[str]) -> list[int]:
    """Code-point offset just past each token in the reply."""
    ends, total = [], 0
    for token in tokens:
        total += len(token)
        ends.append(total)
    return ends


def analyse(r: Results) -> list[Row]:
    n = len(r.tokens)
    ends = token_ends(r.tokens)
    # When an openai client sees token k, counted from the model's receipt of the request.
    profile = [median([d.since_receipt[k] for d in r.direct]) for k in range(n)]
    per_token: list[float] = []
    in_worker: list[float] = []
    delivery: list[float] = []
    event_gaps: list[float] = []
    for a in r.assistant:
        for ev in a.tokens:
            carried = [k for k in range(n) if ev.index < ends[k] <= ev.index + len(ev.content)]
            for k in carried:
                emitted = a.model_receipt + profile[k]
                per_token.append(ev.arrival - emitted)
                in_worker.append(ev.inserted - emitted)
                delivery.append(ev.arrival - ev.inserted)
        event_gaps += [b.arrival - x.arrival for x, b in itertools.pairwise(a.tokens)]

    def ms(values: Sequence[float]) -> list[float]:
        return [v * 1000 for v in values]

    return [
        Row("direct: first token (request -> first delta)", ms([d.first_token for d in r.direct])),
        Row("direct: gap between deltas", ms([g for d in r.direct for g in d.gaps])),
        Row(
            "direct: request -> model has the request",
            ms([d.first_token - d.since_receipt[0] for d in r.direct]),
        ),
        Row("assistant: first token (POST -> first token event)", ms([a.first_token for a in r.assistant])),
        Row("assistant: POST -> model has the request", ms([a.model_receipt - a.start for a in r.assistant])),
        Row("first-token overhead (assistant - direct, paired)", ms(r.overheads)),
        Row("relay lag per token (arrival - model emission)", ms(per_token)),
        Row("  of which worker: emission -> row insert", ms(in_worker)),
        Row("  of which API: row insert -> client", ms(delivery)),
        Row(
            "event delivery, all event types (insert -> client)",
            ms([x for a in r.assistant for x in a.deliveries]),
        ),
        Row("assistant: gap between token events", ms(event_gaps)),
    ]


def breakdown(samples: Sequence[AssistantSample]) -> list[tuple[str, float, float]]:
    """(step, median ms since the POST, median ms since the previous step), in time order."""
    names = set.intersection(*(set(s.milestones) for s in samples)) if samples else set()
    since = {name: [(s.milestones[name] - s.start) * 1000 for s in samples] for name in names}
    ordered = sorted(names, key=lambda name: median(since[name]))
    steps = []
    previous: str | None = None
    for name in ordered:
        if previous is None:
            delta = since[name]
        else:
            delta = [(s.milestones[name] - s.milestones[previous]) * 1000 for s in samples]
        steps.append((name, median(since[name]), median(delta)))
        previous = name
    return steps


def machine() -> str:
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} CPUs{memory}, {platform.platform()}, Python {platform.python_version()}, "
        f"{datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
    )


def _batch_interval() -> str:
    """The token batch interval the worker runs with (its settings read the same environment)."""
    from core.config import Settings

    millis = Settings().token_batch_interval.total_seconds() * 1000
    return f"{millis:g} ms" + ("" if "TOKEN_BATCH_INTERVAL" in os.environ else " (default)")


def report(
    r: Results, rows: list[Row], steps: list[tuple[str, float, float]], elapsed: float, temporal: str = ""
) -> str:
    n = len(r.assistant)
    lines = [
        f"Turn latency: {n} turns (+ warm-up), reply of {len(r.tokens)} tokens at {r.delay_ms:g} ms each",
        f"Token batch interval: {_batch_interval()}; Temporal dev server {temporal}".rstrip("; "),
        f"Machine: {machine()}; run took {elapsed:.0f} s",
        "",
        f"{'metric':<54} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}",
    ]
    for row in rows:
        p99 = f"{percentile(row.values, 99):8.1f}" if len(row.values) >= 100 else f"{'-':>8}"
        lines.append(
            f"{row.name:<54} {len(row.values):>5} {percentile(row.values, 50):8.1f}"
            f" {percentile(row.values, 95):8.1f} {p99}"
        )
    overhead = percentile(next(row for row in rows if row.name.startswith("first-token")).values, 50)
    verdict = "MET" if overhead <= TARGET_OVERHEAD_MS else "NOT MET"
    lines += [
        "",
        f"Target: first-token overhead <= {TARGET_OVERHEAD_MS:g} ms p50: {verdict} (p50 = {overhead:.1f} ms)",
        "",
        "Where the assistant's first token goes"
        " (medians: ms since the POST began, and since the previous step):",
    ]
    for name, since, delta in steps:
        lines.append(f"  {name:<48} {since:8.1f} {delta:+8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def remove_dir(path: Path, within: float = 5.0) -> None:
    """Remove the run's directory, retrying while a straggler still writes into it.

    (A Ctrl-C during `initdb` kills initdb, but its bootstrap postgres lives on until it
    reads end-of-file, and may create files after a first removal.)
    """
    deadline = time.monotonic() + within
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        if time.monotonic() > deadline:
            print(f"bench: could not remove {path}", file=sys.stderr)
            return
        time.sleep(0.2)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=30, help="measured pairs of runs (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured pairs first (default 2)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens in the scripted reply (default 40)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="model pause before each token")
    parser.add_argument(
        "--settle-ms", type=float, default=200.0, help="idle time before each run (default 200)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--temporal-in-memory",
        action="store_true",
        help="run Temporal in memory instead of on disk (SQLite, as `assistant dev` does)",
    )
    args = parser.parse_args(argv)
    if args.turns < 1 or args.warmup < 0 or args.tokens < 1 or min(args.delay_ms, args.settle_ms) < 0:
        parser.error("--turns and --tokens must be >= 1; --warmup, --delay-ms and --settle-ms >= 0")

    began = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-turn-latency-"))
    stack = Stack(data_dir, temporal_on_disk=not args.temporal_in_memory)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"bench: starting the stack in {data_dir}", file=sys.stderr, flush=True)
        stack.start()
        print(f"bench: stack up after {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        results = asyncio.run(
            measure(
                stack,
                turns=args.turns,
                warmup=args.warmup,
                n_tokens=args.tokens,
                delay_ms=args.delay_ms,
                settle_ms=args.settle_ms,
            )
        )
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        print(f"bench: the run failed: {type(err).__name__}: {err}", file=sys.stderr)
        stack.print_log_tails()
        return 1
    finally:
        # No second Ctrl-C may cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        remove_dir(data_dir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    rows = analyse(results)
    steps = breakdown(results.assistant)
    mode = "in memory" if args.temporal_in_memory else "on disk (SQLite, as assistant dev)"
    print(report(results, rows, steps, time.monotonic() - began, temporal=mode))
    if args.json:
        summary = {
            "turns": len(results.assistant),
            "tokens": len(results.tokens),
            "delay_ms": results.delay_ms,
            "machine": machine(),
            "metrics": {
                row.name: {
                    "n": len(row.values),
                    "p50": percentile(row.values, 50),
                    "p95": percentile(row.values, 95),
                    "p99": percentile(row.values, 99),
                }
                for row in rows
            },
            "breakdown": [{"step": name, "since_post_ms": s, "step_ms": d} for name, s, d in steps],
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
