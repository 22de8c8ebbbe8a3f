"""Builds the tracer provider from TracingConfig: resource, sampler, OTLP exporter behind a
bounded batch queue that counts what it drops, and the span ring buffer for /debug/traces.

Nothing here sets OTel's global provider; app.py builds a `Tracing` and passes it to layers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Tracer

from sidecar import __version__
from sidecar.config import TracingConfig
from sidecar.telemetry.propagation import HeaderPropagator
from sidecar.telemetry.span_buffer import SpanBuffer

DropCounter = Callable[[int], None]


def _ignore_drops(n: int) -> None:
    pass


def make_sampler(name: str, ratio: float) -> Sampler:
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "traceidratio":
        return TraceIdRatioBased(ratio)
    if name == "parentbased_always_on":
        return ParentBased(ALWAYS_ON)
    if name == "parentbased_always_off":
        return ParentBased(ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(ratio))
    raise ValueError(f"unknown sampler {name!r}")


def make_exporter(config: TracingConfig, timeout: float) -> SpanExporter | None:
    """The OTLP exporter of `config.exporter`, or None for `none`. Imported lazily: the gRPC
    stack is heavy and not needed when export is off."""
    if config.exporter == "none":
        return None
    if config.exporter == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=config.endpoint,
            insecure=not config.endpoint.startswith("https://"),
            timeout=timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=otlp_http_traces_url(config.endpoint), timeout=timeout)


def otlp_http_traces_url(endpoint: str) -> str:
    """A base endpoint (`http://jaeger:4318`, as in OTEL_EXPORTER_OTLP_ENDPOINT) gets the
    signal path appended; a URL that already has a path is used as given."""
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class _CountingExporter(SpanExporter):
    """Releases queue slots as batches leave the queue and counts batches the collector did
    not take (failure, timeout, exception) as dropped."""

    def __init__(self, inner: SpanExporter, release: DropCounter, dropped: DropCounter) -> None:
        self._inner = inner
        self._release = release
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._release(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedExportProcessor(SpanProcessor):
    """OTel's BatchSpanProcessor with the bound enforced (and drops counted) here.

    The SDK's own queue silently evicts its oldest span when full; we keep a count of spans
    handed over but not yet taken by the exporter, and drop (counting) new spans beyond
    `max_queue_size`. Ending a span never blocks: it is a lock-protected increment and a
    deque append; export runs on the processor's worker thread."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay: float = 1.0,
        shutdown_timeout: float = 5.0,
        on_dropped: DropCounter = _ignore_drops,
    ) -> None:
        self._max = max_queue_size
        self._pending = 0
        self._lock = threading.Lock()
        self._on_dropped = on_dropped
        self._shutdown_timeout = shutdown_timeout
        self._exporter = _CountingExporter(exporter, self._release, on_dropped)
        batch = min(max_export_batch_size, max_queue_size)
        self._inner = BatchSpanProcessor(
            self._exporter,
            # Larger than our bound so the SDK never evicts on its own.
            max_queue_size=max_queue_size + batch,
            max_export_batch_size=batch,
            schedule_delay_millis=schedule_delay * 1000,
        )

    def _release(self, n: int) -> None:
        with self._lock:
            self._pending -= n

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._lock:
            full = self._pending >= self._max
            if not full:
                self._pending += 1
        if full:
            self._on_dropped(1)
            return
        self._inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        # Flush what is queued, but if the collector is down, abort its retry loop after
        # `shutdown_timeout` so stopping the sidecar is not held up by export backoff.
        timer = threading.Timer(self._shutdown_timeout, self._exporter.shutdown)
        timer.daemon = True
        timer.start()
        try:
            self._inner.shutdown()  # type: ignore[no-untyped-call]
        finally:
            timer.cancel()


@dataclass(frozen=True, slots=True)
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    buffer: SpanBuffer
    propagator: HeaderPropagator
    exporting: bool

    def force_flush(self, timeout: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking; call it off the event loop)."""
        self.provider.shutdown()


def build_tracing(
    config: TracingConfig,
    service_name: str,
    *,
    on_spans_dropped: DropCounter = _ignore_drops,
    max_queue_size: int = 2048,
    max_export_batch_size: int = 512,
    schedule_delay: float = 1.0,
    export_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
) -> Tracing:
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(
        resource=resource,
        sampler=make_sampler(config.sampler, config.ratio),
        shutdown_on_exit=False,
    )
    buffer = SpanBuffer(config.buffer_spans)
    provider.add_span_processor(buffer)
    exporter = make_exporter(config, export_timeout)
    if exporter is not None:
        provider.add_span_processor(
            BoundedExportProcessor(
                exporter,
                max_queue_size=max_queue_size,
                max_export_batch_size=max_export_batch_size,
                schedule_delay=schedule_delay,
                shutdown_timeout=shutdown_timeout,
                on_dropped=on_spans_dropped,
            )
        )
    return Tracing(
        provider=provider,
        tracer=provider.get_tracer("sidecar", __version__),
        buffer=buffer,
        propagator=HeaderPropagator(config.propagators),
        exporting=exporter is not None,
    )
