"""The worker's Prometheus metrics, in a registry of its own served on `--metrics-port`.

A registry of its own, without prometheus-client's default process collectors: under
`assistant dev` the API appends this exposition to its own (api/metrics.py), and a metric
family may appear only once in one exposition. Activities update these in memory only; the
scrape reads them, so counting costs no I/O on the path of a turn.
"""

import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

OPENAI_TOKENS = Counter(
    "openai_tokens",
    "Tokens of model calls, by model and kind (prompt or completion).",
    ["model", "kind"],
    registry=REGISTRY,
)
TURNS_STARTED = Counter("turns_started", "Turns whose first model call began.", registry=REGISTRY)
TURNS_FINISHED = Counter(
    "turns_finished", "Turns ended, by status (completed, failed, cancelled).", ["status"], registry=REGISTRY
)
TURN_DURATION = Histogram(
    "turn_duration_seconds",
    "From a turn's creation to its end (time waiting for approvals included).",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 900, 3600, 14400, 86400),
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "time_to_first_token_seconds",
    "From the start of a model call to its first token (text or tool call).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
    registry=REGISTRY,
)
TOOL_CALLS = Counter(
    "tool_calls",
    "Tool calls by tool and outcome: ok, error (the tool answered with an error), "
    "retry (a temporary failure, retried), rejected, invalid (unknown tool or arguments).",
    ["tool", "outcome"],
    registry=REGISTRY,
)
TOOL_CALL_DURATION = Histogram(
    "tool_call_duration_seconds",
    "How long a tool ran, by tool.",
    ["tool"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
APPROVALS_DECIDED = Counter(
    "approvals_decided",
    "Approvals acted on by the turn, by decision (approved, rejected, expired).",
    ["decision"],
    registry=REGISTRY,
)
APPROVAL_WAIT = Histogram(
    "approval_wait_seconds",
    "From an approval's request to its decision.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400),
    registry=REGISTRY,
)

# The tool label of a call to a name no tool has: the model's text must not create series.
UNKNOWN_TOOL = "unknown"


# Model names come from conversations, which users set freely: the first few distinct names
# get a series each, later ones share "other", so no user can grow the series without bound.
MAX_MODEL_LABELS = 20
OTHER_MODEL = "other"
_models_seen: set[str] = set()


def model_label(model: str) -> str:
    """The `model` label value for `model`."""
    if model in _models_seen:
        return model
    if len(_models_seen) < MAX_MODEL_LABELS:
        _models_seen.add(model)
        return model
    return OTHER_MODEL


def count_tokens(model: str, prompt: int, completion: int) -> None:
    label = model_label(model)
    OPENAI_TOKENS.labels(model=label, kind="prompt").inc(prompt)
    OPENAI_TOKENS.labels(model=label, kind="completion").inc(completion)


def count_decision(status: str, created_at: datetime, decided_at: datetime | None) -> None:
    """One approval decided: its decision and how long the person took."""
    APPROVALS_DECIDED.labels(decision=status).inc()
    if decided_at is not None:
        APPROVAL_WAIT.observe(max(0.0, (decided_at - created_at).total_seconds()))


class _ExpositionOf(Collector):
    """The metrics another exporter on this machine serves (the Temporal SDK's), as ours."""

    def __init__(self, url: str) -> None:
        self._url = url

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        try:
            with urllib.request.urlopen(self._url, timeout=2) as response:  # a loopback URL we chose
                text = response.read().decode()
        except OSError:
            return  # the SDK's exporter is not up (yet): the worker's own metrics still serve
        yield from text_string_to_metric_families(text)


def include_exposition(url: str) -> None:
    """Serve what `url` exposes (the Temporal SDK's metrics) with the worker's own."""
    REGISTRY.register(_ExpositionOf(url))


def serve(port: int, host: str) -> threading.Thread:
    """Serve the worker's registry over HTTP on a daemon thread; returns it."""
    _server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return thread
