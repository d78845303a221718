"""Optional tracing (OpenTelemetry) and error tracking (Sentry), on by configuration only.

`OTEL_EXPORTER_OTLP_ENDPOINT` turns tracing on: spans of HTTP requests (FastAPI) and of
workflows and activities (Temporal's tracing interceptor) go to that OTLP/HTTP collector; the
other standard `OTEL_*` variables (service name, batch delays, headers) apply. `SENTRY_DSN`
turns error tracking on. Their packages are the `observability` extra and are never required:
configured without them, a process logs a warning naming the extra and runs untraced.
"""

import os
from typing import Any

import structlog

from core.config import Settings

log = structlog.get_logger(__name__)

_EXTRA = "pip install 'durable-assistant[observability]'"
_tracing = False


def setup_tracing(settings: Settings, service_name: str) -> bool:
    """Export this process's spans when an OTLP endpoint is configured; whether it now does."""
    global _tracing
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        log.warning(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: {_EXTRA}",
            missing=err.name,
        )
        return False
    # The variable names the collector's base URL (the OTel convention); a traces-specific
    # endpoint, when set, is read by the exporter itself.
    traces_endpoint = None
    if not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        traces_endpoint = endpoint.rstrip("/") + "/v1/traces"
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint)))
    trace.set_tracer_provider(provider)
    _tracing = True
    log.info("tracing on", endpoint=endpoint, service_name=resource.attributes.get(SERVICE_NAME))
    return True


def instrument_app(app: Any) -> None:
    """Trace the app's HTTP requests when tracing is on."""
    if not _tracing:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/metrics$,/healthz$,/readyz$")


def temporal_interceptors() -> list[Any]:
    """The interceptors a Temporal client needs for tracing (a worker on that client uses them
    too): none when tracing is off."""
    if not _tracing:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    # Also when a workflow was started by a client that traces nothing (an API process with
    # tracing off, the reconciler): without this, its spans would be left out for want of a parent.
    return [TracingInterceptor(always_create_workflow_spans=True)]


def setup_error_tracking(settings: Settings) -> bool:
    """Report errors to Sentry when a DSN is configured; whether it now does."""
    if settings.sentry_dsn is None or not settings.sentry_dsn.get_secret_value():
        return False
    try:
        import sentry_sdk
    except ImportError:
        log.warning(f"SENTRY_DSN is set but sentry-sdk is not installed: {_EXTRA}")
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.assistant_env,
        send_default_pii=False,
        # Sentry scrubs secret-named fields itself; the texts (messages, log lines, values) are
        # redacted as our logs are, since its logging integration reads records before our formatter.
        before_send=_redacted,
    )
    log.info("error tracking on", environment=settings.assistant_env)
    return True


def _redacted(event: Any, _hint: Any) -> Any:
    """A Sentry event with every secret its texts recognisably hold replaced (core.logging)."""
    from core.logging import redact_text

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return redact_text(value)
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, list):
            return [scrub(item) for item in value]
        return value

    return scrub(event)
