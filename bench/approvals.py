"""Parked approvals: memory of turns waiting for a person, and approve -> email-accepted latency.

Run with `.venv/bin/python bench/approvals.py` (1,000 turns; `--turns 100` for a quick run).
It starts the whole stack on this machine as children of this process, over 127.0.0.1
only (the helpers of `bench/turn_latency.py`): embedded PostgreSQL, the Temporal dev
server with its state in SQLite on disk (as `assistant dev` runs it: parked turns live
for hours and must survive a restart), the built-in fake model, one worker and one API,
plus a real SMTP server (aiosmtpd, `tests/mailserver.py`) inside this process. It is a
measurement, not a test: it exits non-zero only when the run fails (an error, a turn that
does not complete, a message lost or sent twice), never because of a figure.

Method
------
Each turn gets its own conversation and its own model script (a unique marker in the
message): the model first asks for `send_email`, then answers "done". The turn parks on
the approval (`GET /api/v1/turns/{id}?wait=30` returns `awaiting_approval`).

1. Warm-up: a few whole turns (park, approve, complete), not counted, so one-time costs
   (imports, the workflow sandbox, connection pools) are not charged to parked turns.
2. Memory at idle: RSS of the worker and of the Temporal server (psutil), after a pause.
3. Park N turns, at most `--concurrency` at a time. Memory again once all are parked.
4. Approve the first `--serial` turns one at a time, each paired with a direct SMTP send
   (the baseline, order swapped every pair), then the rest with `--concurrency` approvers,
   each approving one turn and following it to its end before taking the next (a closed
   loop: at most that many approved turns in flight). Then as many direct sends, at the
   same concurrency.
5. Memory once all turns have completed, and the peak seen during the run. CPU time of
   each process (psutil; PostgreSQL with its backends) is charged to the phase it was used in.

Times, all wall clock on one host: the approve POST starts (client) -> the API answered
-> the SMTP server accepted the message (timestamped in the server's DATA handler, before
its 250 reply) -> the turn's `complete` event reached the client (SSE, resumed after the
parked turn's `last_seq`). The baseline is the same message (rendered by the product's
own `render_message`) sent with `aiosmtplib.send` on a new connection, as the worker does:
start -> accepted. For the one-at-a-time turns and a sample of the others the bench also
reads the event log's insert times, the email outbox's timestamps and the Temporal
history, and prints the median time of each step since the approve POST (each workflow
task named after what woke the workflow, with its scheduled / started / completed times).

`--temporal-in-memory` and `--temporal-config KEY=VALUE` (dynamic config of the dev server)
are for experiments; see docs/PERFORMANCE.md, "Parked approvals".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import asyncpg
import httpx
import psutil
from httpx_sse import aconnect_sse
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from turn_latency import Stack, _interrupt, _ts, _wait_ready, machine, percentile, remove_dir

from devstack import EmbeddedPostgres, EmbeddedTemporal, free_port, spawn, temporal_binary, wait_for_port
from tools.email_message import message_id_for, parse_send_email, render_message

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # tests/ is not an installed package; the bench borrows its SMTP server
from tests.mailserver import MailServer  # noqa: E402

SENDER = "bench@example.test"
TERMINAL = ("complete", "error", "cancelled")
# Tags put in each message's subject: approval turns, warm-up turns, direct (baseline) sends.
TAG = re.compile(rb"\bb[awd]-[0-9a-f]{12}\b")
PARK_TIMEOUT = 900.0
TURN_TIMEOUT = 300.0
HISTORY_SAMPLE = 100

T = TypeVar("T")


def new_tag(kind: str) -> str:
    return f"b{kind}-{uuid.uuid4().hex[:12]}"


def email_args(tag: str) -> dict[str, Any]:
    return {
        "to": "bob@example.test",
        "subject": f"Weekly report {tag}",
        "body": f"<p>Hello <b>Bob</b>,</p><p>here is the weekly report ({tag}).</p><p>Alice</p>",
    }


# --------------------------------------------------------------------------- the stack


class TunedTemporal(EmbeddedTemporal):
    """`EmbeddedTemporal` with `--dynamic-config-value` settings added (for experiments)."""

    def __init__(self, data_dir: Path, *, persistent: bool, settings: Sequence[str]) -> None:
        super().__init__(data_dir, persistent=persistent)
        self.settings = list(settings)

    def start(self) -> str:
        if not self.settings:
            return super().start()
        # As EmbeddedTemporal.start, plus the settings.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
        args += ["--port", str(self.port), "--http-port", str(free_port())]
        args += ["--metrics-port", str(free_port()), "--log-level", "warn"]
        if self.persistent:
            args += ["--db-filename", str(self.data_dir / "temporal.db")]
        for setting in self.settings:
            args += ["--dynamic-config-value", setting]
        self.proc = spawn(args, log_path=self.log)
        wait_for_port(self.port, self.proc, timeout=60, what="temporal", log=self.log)
        return self.address


class ApprovalStack(Stack):
    """`turn_latency.Stack`, with Temporal on disk, SMTP configured and the pids to measure."""

    def __init__(
        self,
        data_dir: Path,
        *,
        smtp_port: int,
        model_delay: float,
        persistent: bool = True,
        temporal_settings: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir)
        self.persistent = persistent
        self.temporal_settings = list(temporal_settings)
        self.smtp_port = smtp_port
        self.model_delay = model_delay
        self.dsn = ""
        self.temporal_db = data_dir.resolve() / "temporal.db"
        self.pids: dict[str, int] = {}  # measured for memory
        self.cpu_pids: dict[str, int] = {}  # measured for CPU time (postgres: with its children)

    def start(self) -> None:
        pg = EmbeddedPostgres(self.dir)
        self._stops.append(("postgres", pg.stop))
        self.logs.append(pg.log)
        self.dsn = pg.start()
        assert pg.proc is not None
        self.cpu_pids["postgres"] = pg.proc.pid
        # SQLite on disk, as `assistant dev` runs it (EmbeddedTemporal's default).
        temporal = TunedTemporal(self.dir, persistent=self.persistent, settings=self.temporal_settings)
        self._stops.append(("temporal", temporal.stop))
        self.logs.append(temporal.log)
        self.temporal_address = temporal.start()
        assert temporal.proc is not None
        self.pids["temporal"] = self.cpu_pids["temporal"] = temporal.proc.pid
        model_port, api_port = free_port(), free_port()
        self.model_url = f"http://127.0.0.1:{model_port}"
        self.api_url = f"http://127.0.0.1:{api_port}"
        env = dict(
            os.environ,
            DATABASE_URL=self.dsn,
            TEMPORAL_ADDRESS=self.temporal_address,
            OPENAI_BASE_URL=f"{self.model_url}/v1",
            OPENAI_API_KEY="x",
            TEMPORAL_TASK_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
            LOG_LEVEL="WARNING",
            ASSISTANT_DATA_DIR=str(self.dir),
            NO_PROXY="127.0.0.1,localhost",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.smtp_port),
            SMTP_TLS="none",
            SMTP_FROM=SENDER,
        )
        self._child(
            "fake-model",
            ["fake-model", "--port", str(model_port), "--token-delay", f"{self.model_delay:g}"],
            env,
            port=model_port,
        )
        self._cli(["migrate"], env)
        created = json.loads(self._cli(["users", "create", "bench", "--json"], env))
        self.api_key = created["api_key"]
        self._child("worker", ["worker"], env)
        self.pids["worker"] = self.cpu_pids["worker"] = _child_pid("worker")
        self._child("api", ["api", "--port", str(api_port)], env, port=api_port)
        self.cpu_pids["api"] = _child_pid("api")
        self.cpu_pids["fake model"] = _child_pid("fake-model")
        self.cpu_pids["bench (clients, SMTP server)"] = os.getpid()


def _child_pid(command: str) -> int:
    """The pid of our `python -m cli <command>` child."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            args = child.cmdline()
            if "cli" in args and args[args.index("cli") + 1 :][:1] == [command]:
                return child.pid
    raise RuntimeError(f"no `assistant {command}` child found")


# --------------------------------------------------------------------------- memory


class Memory:
    """RSS of the measured processes: on demand, and the peak, sampled in a thread."""

    def __init__(self, pids: dict[str, int], files: Sequence[Path], every: float = 0.25) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._files = files
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), name="rss-sampler", daemon=True)

    def rss(self) -> dict[str, int]:
        found = {name: proc.memory_info().rss for name, proc in self._procs.items()}
        for name, value in found.items():
            self.peak[name] = max(self.peak[name], value)
        return found

    def disk(self) -> int:
        """Bytes of Temporal's SQLite files (database and write-ahead log)."""
        total = 0
        for path in self._files:
            for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                with contextlib.suppress(OSError):
                    total += part.stat().st_size
        return total

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(psutil.Error):
                self.rss()

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Cpu:
    """CPU seconds (user + system) used by each process (postgres: with its backends)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.phases: dict[str, dict[str, float]] = {}
        self._last = self._now()

    def _now(self) -> dict[str, float]:
        found = {}
        for name, proc in self._procs.items():
            total = 0.0
            for p in [proc, *(proc.children(recursive=True) if name == "postgres" else [])]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
            found[name] = total
        return found

    def mark(self, phase: str) -> None:
        """CPU used since the previous mark is charged to `phase`."""
        now = self._now()
        self.phases[phase] = {name: now[name] - self._last[name] for name in now}
        self._last = now


@dataclass
class Snapshot:
    rss: dict[str, int]
    disk: int


async def snapshot(memory: Memory, settle: float) -> Snapshot:
    """Memory after a pause; the median of five samples 0.2 s apart."""
    await asyncio.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(memory.rss())
        await asyncio.sleep(0.2)
    rss = {name: int(percentile([s[name] for s in samples], 50)) for name in samples[0]}
    return Snapshot(rss, memory.disk())


# --------------------------------------------------------------------------- the SMTP side


class MailClock:
    """When the SMTP server accepted each tagged message (called by its DATA handler)."""

    def __init__(self, server: MailServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self.accepted: dict[str, list[float]] = {}
        server.handler.on_data = self

    def __call__(self) -> None:
        now = time.time()
        # Runs in the server's thread right after handle_DATA appended the message (no await in
        # between, so it is this session's).
        data = self._server.handler.received[-1].data
        found = TAG.search(data)
        if found is not None:
            with self._lock:
                self.accepted.setdefault(found.group().decode(), []).append(now)

    def first(self, tag: str) -> float | None:
        with self._lock:
            times = self.accepted.get(tag)
            return times[0] if times else None

    def count(self, prefix: str) -> Counter[str]:
        with self._lock:
            return Counter({t: len(v) for t, v in self.accepted.items() if t.startswith(prefix)})


@dataclass
class DirectSend:
    tag: str
    start: float
    returned: float  # aiosmtplib.send returned (after QUIT)
    accepted: float = 0.0


async def direct_send(port: int, tag: str) -> DirectSend:
    """The baseline: the same kind of message, straight to the SMTP server on a new connection."""
    request = parse_send_email(email_args(tag))
    sender = Address(addr_spec=SENDER)
    data = render_message(
        request, sender=sender, message_id=message_id_for(f"direct:{tag}", domain="example.test")
    )
    start = time.time()
    await aiosmtplib.send(
        data,
        sender=SENDER,
        recipients=request.envelope_recipients(),
        hostname="127.0.0.1",
        port=port,
        use_tls=False,
        start_tls=False,
        timeout=30,
    )
    return DirectSend(tag, start, time.time())


# --------------------------------------------------------------------------- the turns


@dataclass
class Parked:
    tag: str
    turn_id: str
    approval_id: str
    last_seq: int
    took: float  # POST message -> the client saw awaiting_approval, seconds


@dataclass
class Approved:
    parked: Parked
    phase: str  # "serial" or "loaded"
    start: float  # wall clock: the approve POST began
    answered: float  # the API's 200 arrived
    completed: float  # the turn's `complete` event arrived
    content: str
    tool_status: str
    inserted: dict[str, float]  # event (first of its kind after the parked seq) -> insert time
    accepted: float = 0.0  # the SMTP server accepted the message
    milestones: dict[str, float] = field(default_factory=dict)


async def park(api: httpx.AsyncClient, fake: httpx.AsyncClient, tag: str) -> Parked:
    """One conversation, one message; returns once the turn waits for its approval."""
    marker = f"[{tag}]"
    steps = [
        {
            "kind": "tool_calls",
            "tool_calls": [{"id": "call_mail", "name": "send_email", "arguments": email_args(tag)}],
        },
        {"kind": "reply", "content": "done"},
    ]
    (await fake.post("/_fake/scripts", json={"match": marker, "steps": steps})).raise_for_status()
    created = await api.post("/api/v1/conversations", json={"title": f"bench {tag}"})
    if created.status_code != 201:
        raise RuntimeError(f"creating a conversation failed: {created.status_code} {created.text}")
    began = time.perf_counter()
    posted = await api.post(
        f"/api/v1/conversations/{created.json()['id']}/messages",
        json={"content": f"please mail the weekly report {marker}"},
        headers={"Accept": "application/json"},
    )
    if posted.status_code != 202:
        raise RuntimeError(f"POST message failed: {posted.status_code} {posted.text}")
    turn_id = posted.json()["turn"]["id"]
    deadline = time.monotonic() + PARK_TIMEOUT
    while True:
        response = await api.get(f"/api/v1/turns/{turn_id}", params={"wait": 30})
        response.raise_for_status()
        turn = response.json()
        if turn["status"] == "awaiting_approval":
            break
        if turn["status"] in ("completed", "failed", "cancelled"):
            raise RuntimeError(f"turn {turn_id} ended ({turn['status']}) instead of waiting: {turn}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"turn {turn_id} not parked within {PARK_TIMEOUT:g} s (status {turn['status']})"
            )
    took = time.perf_counter() - began
    pending = turn["pending_approvals"]
    if len(pending) != 1 or pending[0]["tool"] != "send_email":
        raise RuntimeError(f"turn {turn_id} parked with {pending}")
    return Parked(tag, turn_id, pending[0]["id"], int(turn["last_seq"]), took)


async def approve(api: httpx.AsyncClient, parked: Parked, phase: str) -> Approved:
    """Approve, then follow the turn's events from where it parked to its end."""
    start = time.time()
    decided = await api.post(f"/api/v1/approvals/{parked.approval_id}", json={"decision": "approve"})
    answered = time.time()
    if decided.status_code != 200 or decided.json()["status"] != "approved":
        raise RuntimeError(f"approving {parked.approval_id}: {decided.status_code} {decided.text}")
    inserted: dict[str, float] = {}
    terminal, content, tool_status, completed = "", "", "", 0.0
    async with (
        asyncio.timeout(TURN_TIMEOUT),
        aconnect_sse(
            api, "GET", f"/api/v1/turns/{parked.turn_id}/events", params={"after": parked.last_seq}
        ) as source,
    ):
        if source.response.status_code != 200:
            await source.response.aread()
            raise RuntimeError(f"events of {parked.turn_id}: {source.response.status_code}")
        async for sse in source.aiter_sse():
            arrival = time.time()
            event = json.loads(sse.data)
            kind = event["type"]
            name = f"status {event['status']}" if kind == "status" else kind
            inserted.setdefault(name, _ts(event["timestamp"]))
            if kind == "tool_result":
                tool_status = event["status"]
            if kind in TERMINAL:
                terminal, completed = kind, arrival
                content = event.get("content", "")
                break
    if terminal != "complete":
        raise RuntimeError(f"turn {parked.turn_id} ended with {terminal or 'no terminal event'}")
    return Approved(parked, phase, start, answered, completed, content, tool_status, inserted)


async def bounded(limit: int, items: Sequence[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """`work` on every item, at most `limit` at a time, results in the items' order."""
    results: list[Any] = [None] * len(items)
    queue = list(enumerate(items))
    queue.reverse()

    async def worker() -> None:
        while queue:
            index, item = queue.pop()
            results[index] = await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(limit, len(items))):
            group.create_task(worker())
    return results


def progress(label: str, done: int, total: int, began: float) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {label}: {done}/{total} ({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- where the time goes


async def temporal_milestones(client: Client, turn_id: str) -> dict[str, float]:
    """Times of the workflow's steps after the approval signal, from its Temporal history.

    Each workflow task is named after what woke the workflow (the signal, an activity's
    completion), with its three times: scheduled, started (a worker polled it), completed.
    """
    history = await client.get_workflow_handle(turn_id).fetch_history()
    found: dict[str, float] = {}
    activity_of: dict[int, str] = {}
    signalled = False
    trigger = "signal"
    task = ""
    for ev in history.events:
        name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_")
        at = ev.event_time.seconds + ev.event_time.nanos / 1e9
        if name == "WORKFLOW_EXECUTION_SIGNALED":
            signalled = True
            found.setdefault("Temporal: signal recorded", at)
        elif not signalled:
            continue
        elif name == "WORKFLOW_TASK_SCHEDULED":
            task = f"Temporal: workflow task after {trigger}"
            found.setdefault(f"{task}: scheduled", at)
        elif name == "WORKFLOW_TASK_STARTED":
            found.setdefault(f"{task}: started", at)
        elif name == "WORKFLOW_TASK_COMPLETED":
            found.setdefault(f"{task}: completed", at)
        elif name == "ACTIVITY_TASK_SCHEDULED":
            activity_of[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        elif name == "ACTIVITY_TASK_STARTED":
            activity = activity_of.get(ev.activity_task_started_event_attributes.scheduled_event_id, "?")
            found.setdefault(f"Temporal: {activity} started", at)
        elif name == "ACTIVITY_TASK_COMPLETED":
            activity = activity_of.get(ev.activity_task_completed_event_attributes.scheduled_event_id, "?")
            found.setdefault(f"Temporal: {activity} completed", at)
            trigger = activity
        elif name == "WORKFLOW_EXECUTION_COMPLETED":
            found["Temporal: workflow completed"] = at
    return found


async def outbox_times(dsn: str) -> dict[str, dict[str, float]]:
    """Per turn: when the outbox row was claimed, DATA was about to be sent, the send recorded."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT turn_id, created_at, data_sent_at, finished_at FROM email_outbox")
    finally:
        await conn.close()
    found: dict[str, dict[str, float]] = {}
    for row in rows:
        times = {"outbox: row claimed (before CONNECT)": row["created_at"].timestamp()}
        if row["data_sent_at"] is not None:
            times["outbox: data_sent (before DATA)"] = row["data_sent_at"].timestamp()
        if row["finished_at"] is not None:
            times["outbox: accepted recorded"] = row["finished_at"].timestamp()
        found[row["turn_id"]] = times
    return found


async def database_state(dsn: str) -> tuple[Counter[str], Counter[str], int]:
    """Turn statuses, outbox statuses, and how many outbox rows needed more than one attempt."""
    conn = await asyncpg.connect(dsn)
    try:
        turns = Counter(
            {
                r["status"]: r["n"]
                for r in await conn.fetch("SELECT status, count(*) AS n FROM turns GROUP BY status")
            }
        )
        outbox = Counter(
            {
                r["status"]: r["n"]
                for r in await conn.fetch("SELECT status, count(*) AS n FROM email_outbox GROUP BY status")
            }
        )
        retried = int(await conn.fetchval("SELECT count(*) FROM email_outbox WHERE attempts > 1"))
    finally:
        await conn.close()
    return turns, outbox, retried


def breakdown(samples: Sequence[Approved]) -> list[tuple[str, float, float]]:
    """(step, median ms since the approve POST, median ms since the previous step), in time order."""
    names = set.intersection(*(set(s.milestones) for s in samples)) if samples else set()
    since = {name: [(s.milestones[name] - s.start) * 1000 for s in samples] for name in names}
    ordered = sorted(names, key=lambda name: percentile(since[name], 50))
    steps = []
    previous: str | None = None
    for name in ordered:
        if previous is None:
            delta = since[name]
        else:
            delta = [(s.milestones[name] - s.milestones[previous]) * 1000 for s in samples]
        steps.append((name, percentile(since[name], 50), percentile(delta, 50)))
        previous = name
    return steps


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    turns: int
    concurrency: int
    parking_s: float
    parked: list[Parked]
    approved: list[Approved]
    direct_serial: list[DirectSend]
    direct_loaded: list[DirectSend]
    approving_s: float  # wall time of the loaded approvals
    memory: dict[str, Snapshot]
    peak: dict[str, int]
    breakdowns: dict[str, list[tuple[str, float, float]]]
    problems: list[str]
    database: dict[str, Any]
    cpu: dict[str, dict[str, float]]
    phase_seconds: dict[str, float]
    load_before: str = ""
    persistent: bool = True
    temporal_settings: list[str] = field(default_factory=list)


async def measure(
    stack: ApprovalStack,
    mail: MailServer,
    clock: MailClock,
    *,
    turns: int,
    concurrency: int,
    serial: int,
    warmup: int,
    settle: float,
) -> Results:
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: at equal
    # timeouts (httpx's default is 5 s too) a request can race the server's close (ReadError).
    limits = httpx.Limits(
        max_connections=2 * concurrency + 10,
        max_keepalive_connections=2 * concurrency + 10,
        keepalive_expiry=2.0,
    )
    async with (
        httpx.AsyncClient(
            base_url=stack.model_url,
            timeout=60,
            limits=httpx.Limits(keepalive_expiry=2.0),
            trust_env=False,
        ) as fake,
        httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=TURN_TIMEOUT,
            limits=limits,
            trust_env=False,
        ) as api,
    ):
        temporal = await Client.connect(stack.temporal_address)
        await _wait_ready(api)
        memory = Memory(stack.pids, [stack.temporal_db])
        with memory:
            print(f"bench: warm-up, {warmup} whole turns", file=sys.stderr, flush=True)
            for _ in range(warmup):
                await approve(api, await park(api, fake, new_tag("w")), "warm-up")
                await direct_send(mail.port, new_tag("d"))
            snapshots = {"idle": await snapshot(memory, settle)}
            cpu = Cpu(stack.cpu_pids)

            print(f"bench: parking {turns} turns, {concurrency} at a time", file=sys.stderr, flush=True)
            began = time.monotonic()
            parked_count = 0

            async def park_counted(tag: str) -> Parked:
                nonlocal parked_count
                result = await park(api, fake, tag)
                parked_count += 1
                progress("parked", parked_count, turns, began)
                return result

            parked: list[Parked] = await bounded(
                concurrency, [new_tag("a") for _ in range(turns)], park_counted
            )
            parking_s = time.monotonic() - began
            cpu.mark("parking")
            problems = []
            early = sum(clock.count("ba-").values())
            if early:
                problems.append(f"{early} messages were sent before their approval")
            snapshots["parked"] = await snapshot(memory, settle)

            print(f"bench: approving {serial} turns one at a time", file=sys.stderr, flush=True)
            approved: list[Approved] = []
            direct_serial: list[DirectSend] = []
            began = time.monotonic()
            for i, p in enumerate(parked[:serial]):
                for kind in ("direct", "approval") if i % 2 == 0 else ("approval", "direct"):
                    await asyncio.sleep(0.05)
                    if kind == "direct":
                        direct_serial.append(await direct_send(mail.port, new_tag("d")))
                    else:
                        approved.append(await approve(api, p, "serial"))

            serial_s = time.monotonic() - began
            cpu.mark("one at a time")
            rest = parked[serial:]
            print(f"bench: approving {len(rest)} turns, {concurrency} at a time", file=sys.stderr, flush=True)
            began = time.monotonic()
            approved_count = 0

            async def approve_counted(p: Parked) -> Approved:
                nonlocal approved_count
                result = await approve(api, p, "loaded")
                approved_count += 1
                progress("approved", approved_count, len(rest), began)
                return result

            approved += await bounded(concurrency, rest, approve_counted)
            approving_s = time.monotonic() - began
            cpu.mark("approving")
            snapshots["done"] = await snapshot(memory, settle)

            print(f"bench: {len(rest)} direct sends, {concurrency} at a time", file=sys.stderr, flush=True)
            direct_loaded: list[DirectSend] = await bounded(
                concurrency,
                [new_tag("d") for _ in rest],
                lambda tag: direct_send(mail.port, tag),
            )
        peak = dict(memory.peak)

        # When the SMTP server took each message.
        for sent in (*direct_serial, *direct_loaded):
            sent.accepted = clock.first(sent.tag) or float("nan")
        for a in approved:
            a.accepted = clock.first(a.parked.tag) or float("nan")

        print("bench: reading histories and the outbox", file=sys.stderr, flush=True)
        outbox = await outbox_times(stack.dsn)
        loaded = [a for a in approved if a.phase == "loaded"]
        sample = [a for a in approved if a.phase == "serial"] + random.sample(
            loaded, min(HISTORY_SAMPLE, len(loaded))
        )
        for a in sample:
            a.milestones = {
                "API answered the approve POST": a.answered,
                "SMTP server accepted the message": a.accepted,
                "`complete` event at the client": a.completed,
                **{f"event inserted: {name}": at for name, at in a.inserted.items()},
                **outbox.get(a.parked.turn_id, {}),
                **await temporal_milestones(temporal, a.parked.turn_id),
            }
        breakdowns = {
            phase: breakdown([a for a in sample if a.phase == phase]) for phase in ("serial", "loaded")
        }

        # Correctness: every turn completed, each approved message received exactly once.
        counts = clock.count("ba-")
        tags = {p.tag for p in parked}
        missing = tags - set(counts)
        doubled = {t: n for t, n in counts.items() if n > 1}
        strays = set(counts) - tags
        if missing:
            problems.append(f"{len(missing)} approved messages never reached the SMTP server")
        if doubled:
            problems.append(f"{len(doubled)} messages were received more than once")
        if strays:
            problems.append(f"{len(strays)} unexpected messages")
        with mail.handler.lock:
            received = list(mail.handler.received)
        ids = Counter(
            str(m.message["Message-ID"])
            for m in received
            if (found := TAG.search(m.data)) is not None and found.group().startswith(b"ba-")
        )
        if sum(ids.values()) != turns or len(ids) != turns:
            problems.append(f"{sum(ids.values())} approval messages, {len(ids)} distinct Message-IDs")
        wrong = [a for a in approved if a.content != "done" or a.tool_status != "ok"]
        if wrong:
            problems.append(f"{len(wrong)} turns ended otherwise than sent + 'done'")
        if len(approved) != turns:
            problems.append(f"{len(approved)} of {turns} turns approved")
        turn_states, outbox_states, retried = await database_state(stack.dsn)
        expected = turns + warmup
        if turn_states != Counter({"completed": expected}) or outbox_states != Counter(
            {"accepted": expected}
        ):
            problems.append(f"database: turns {dict(turn_states)}, outbox {dict(outbox_states)}")
        database = {
            "turns": dict(turn_states),
            "outbox": dict(outbox_states),
            "outbox rows sent after a retry": retried,
            "approval messages received": sum(counts.values()),
        }
    return Results(
        turns,
        concurrency,
        parking_s,
        parked,
        approved,
        direct_serial,
        direct_loaded,
        approving_s,
        snapshots,
        peak,
        breakdowns,
        problems,
        database,
        cpu.phases,
        {"parking": parking_s, "one at a time": serial_s, "approving": approving_s},
    )


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    name: str
    values: list[float]  # milliseconds


def rows(r: Results) -> list[tuple[str, list[Row]]]:
    def ms(values: Sequence[float]) -> list[float]:
        return [v * 1000 for v in values if v == v]  # NaN (never accepted) is left out

    sections = []
    for phase, direct, label in (
        ("serial", r.direct_serial, "one at a time"),
        ("loaded", r.direct_loaded, f"{r.concurrency} at a time"),
    ):
        done = [a for a in r.approved if a.phase == phase]
        if not done:
            continue
        sections.append(
            (
                label,
                [
                    Row(
                        "direct SMTP send: start -> accepted (baseline)",
                        ms([d.accepted - d.start for d in direct]),
                    ),
                    Row(
                        "direct SMTP send: start -> send() returned",
                        ms([d.returned - d.start for d in direct]),
                    ),
                    Row("approve: POST -> API answered", ms([a.answered - a.start for a in done])),
                    Row("approve: POST -> SMTP accepted", ms([a.accepted - a.start for a in done])),
                    Row(
                        "approve: POST -> `complete` at the client", ms([a.completed - a.start for a in done])
                    ),
                ],
            )
        )
    sections.append(
        (
            f"parking, {r.concurrency} at a time",
            [Row("park: POST message -> awaiting_approval", ms([p.took for p in r.parked]))],
        )
    )
    return sections


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def report(r: Results, elapsed: float) -> str:
    n = r.turns
    serial = sum(1 for a in r.approved if a.phase == "serial")
    lines = [
        f"Parked approvals: {n} turns, {r.concurrency} at a time ({serial} approved one at a time first)",
        "Temporal: dev server, "
        + ("SQLite on disk (as `assistant dev`)" if r.persistent else "in memory (comparison run)")
        + "".join(f", {setting}" for setting in r.temporal_settings)
        + "; one worker, one API",
        f"Machine: {machine()}; run took {elapsed:.0f} s; load average at the start {r.load_before}",
        "",
        f"Parking: {n} turns in {r.parking_s:.1f} s ({n / r.parking_s:.1f} turns/s)",
    ]
    loaded = n - serial
    if loaded and r.approving_s:
        lines.append(
            f"Approving: {loaded} turns in {r.approving_s:.1f} s ({loaded / r.approving_s:.1f} turns/s)"
        )
    lines += ["", f"{'metric':<50} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for label, section in rows(r):
        lines.append(f"{label}:")
        for row in section:
            p99 = f"{percentile(row.values, 99):8.1f}" if len(row.values) >= 100 else f"{'-':>8}"
            lines.append(
                f"  {row.name:<48} {len(row.values):>5} {percentile(row.values, 50):8.1f}"
                f" {percentile(row.values, 95):8.1f} {p99}"
            )
        by_name = {row.name: row.values for row in section}
        base = by_name.get("direct SMTP send: start -> accepted (baseline)")
        path = by_name.get("approve: POST -> SMTP accepted")
        if base and path:
            lines.append(
                f"  {'approval path - direct send (same percentile)':<48} {'':>5}"
                f" {percentile(path, 50) - percentile(base, 50):8.1f}"
                f" {percentile(path, 95) - percentile(base, 95):8.1f}"
            )
    m = r.memory
    lines += [
        "",
        f"{'memory (RSS, MiB)':<24} {'idle':>8} {'parked':>8} {'done':>8} {'peak':>8}"
        f" {'per parked turn':>16}",
    ]
    for name in m["idle"].rss:
        per = (m["parked"].rss[name] - m["idle"].rss[name]) / n
        lines.append(
            f"{name:<24} {mib(m['idle'].rss[name]):>8} {mib(m['parked'].rss[name]):>8}"
            f" {mib(m['done'].rss[name]):>8} {mib(r.peak[name]):>8} {per / 1024:>12.1f} KiB"
        )
    per_disk = (m["parked"].disk - m["idle"].disk) / n
    lines.append(
        f"{'temporal.db (+wal), disk':<24} {mib(m['idle'].disk):>8} {mib(m['parked'].disk):>8}"
        f" {mib(m['done'].disk):>8} {'':>8} {per_disk / 1024:>12.1f} KiB"
    )
    for phase, title in (("serial", "one at a time"), ("loaded", f"{r.concurrency} at a time, a sample")):
        steps = r.breakdowns.get(phase) or []
        if not steps:
            continue
        lines += [
            "",
            f"Where the time goes ({title}; medians: ms since the approve POST, since the previous step):",
        ]
        for name, since, delta in steps:
            lines.append(f"  {name:<52} {since:8.1f} {delta:+8.1f}")
    lines += ["", "CPU seconds per turn, by process (and share of one core):"]
    lines.append(f"  {'process':<32} {'parking':>16} {'one at a time':>16} {'approving':>16}")
    for name in r.cpu.get("parking", {}):
        cells = []
        for phase, count in (("parking", n), ("one at a time", serial), ("approving", n - serial)):
            used, wall = r.cpu.get(phase, {}).get(name, 0.0), r.phase_seconds.get(phase, 0.0)
            share = f"{used / wall:.0%}" if wall else "-"
            cells.append(f"{used / count * 1000:7.1f} ms {share:>5}" if count else f"{'-':>16}")
        lines.append(f"  {name:<32} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}")
    lines += ["", f"Database at the end: {r.database}"]
    lines.append("Correctness: " + ("OK" if not r.problems else "FAILED: " + "; ".join(r.problems)))
    return "\n".join(lines)


def summary(r: Results) -> dict[str, Any]:
    return {
        "turns": r.turns,
        "concurrency": r.concurrency,
        "machine": machine(),
        "load_before": r.load_before,
        "temporal": "sqlite" if r.persistent else "memory",
        "temporal_config": r.temporal_settings,
        "parking_s": r.parking_s,
        "approving_s": r.approving_s,
        "metrics": {
            f"{label}: {row.name}": {
                "n": len(row.values),
                "p50": percentile(row.values, 50),
                "p95": percentile(row.values, 95),
                "p99": percentile(row.values, 99),
            }
            for label, section in rows(r)
            for row in section
        },
        "memory": {
            phase: {"rss": snap.rss, "temporal_db_bytes": snap.disk} for phase, snap in r.memory.items()
        },
        "peak_rss": r.peak,
        "cpu_seconds": r.cpu,
        "phase_seconds": r.phase_seconds,
        "breakdown": {
            phase: [{"step": name, "since_approve_ms": s, "step_ms": d} for name, s, d in steps]
            for phase, steps in r.breakdowns.items()
        },
        "database": r.database,
        "problems": r.problems,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=1000, help="turns parked, then approved (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="turns parked/approved at a time (50)")
    parser.add_argument("--serial", type=int, default=50, help="approved one at a time first (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="whole turns before measuring (default 5)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before memory samples")
    parser.add_argument("--model-delay-ms", type=float, default=0.0, help="fake model pause per token (0)")
    parser.add_argument(
        "--temporal-in-memory",
        action="store_true",
        help="run the Temporal dev server in memory (for comparison; parked turns would not survive it)",
    )
    parser.add_argument(
        "--temporal-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dynamic config value for the Temporal dev server (repeatable), e.g."
        " history.transferProcessorMaxPollRPS=1000",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.concurrency < 1 or min(args.serial, args.warmup, args.settle) < 0:
        parser.error("--turns and --concurrency must be >= 1; --serial, --warmup and --settle >= 0")
    serial = min(args.serial, args.turns)

    began = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data_dir = Path(tempfile.mkdtemp(prefix="bench-approvals-"))
    mail = MailServer()
    clock = MailClock(mail)
    stack = ApprovalStack(
        data_dir,
        smtp_port=mail.port,
        model_delay=args.model_delay_ms / 1000,
        persistent=not args.temporal_in_memory,
        temporal_settings=args.temporal_config,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        mail.start()
        print(f"bench: starting the stack in {data_dir}", file=sys.stderr, flush=True)
        stack.start()
        print(f"bench: stack up after {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        results = asyncio.run(
            measure(
                stack,
                mail,
                clock,
                turns=args.turns,
                concurrency=args.concurrency,
                serial=serial,
                warmup=args.warmup,
                settle=args.settle,
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
        with contextlib.suppress(Exception):
            mail.stop()
        remove_dir(data_dir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    results.load_before = load_before
    results.persistent = stack.persistent
    results.temporal_settings = stack.temporal_settings
    print(report(results, time.monotonic() - began))
    if args.json:
        args.json.write_text(json.dumps(summary(results), indent=2) + "\n")
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
