"""Builds the tracer provider from TracingConfig: resource, sampler, OTLP exporter behind a
bounded batch queue that counts what it drops, and the span ring buffer for /debug/traces.

Nothing here sets OTel's global provider; app.py builds a `Tracing` and passes it to layers."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Tracer,
    TraceState,
)
from opentelemetry.trace import Span as ApiSpan

from sidecar import __version__
from sidecar.config import TracingConfig
from sidecar.telemetry import otelfast, otlp_sdk, otlp_wire
from sidecar.telemetry.export_health import ExportMonitor
from sidecar.telemetry.lean_span import LeanSpan
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
    # Both send requests encoded by `otlp_wire`: the SDK's own encoder costs ~33 µs a span,
    # holding the GIL, and requests on the event loop wait behind every batch.
    if config.exporter == "otlp_grpc":
        return otlp_sdk.grpc_exporter(
            config.endpoint, not config.endpoint.startswith("https://"), timeout
        )
    from sidecar.telemetry.otlp_http import (
        OtlpHttpClient,
        OtlpHttpSpanExporter,
        settings_from_environment,
    )

    url = otlp_http_traces_url(config.endpoint)
    return OtlpHttpSpanExporter(
        OtlpHttpClient(settings_from_environment(url, timeout)), otlp_wire.export_request
    )


def _export_target(config: TracingConfig) -> str:
    if config.exporter == "otlp_http":
        return otlp_http_traces_url(config.endpoint)
    return config.endpoint


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
    not take (failure, timeout, exception) as dropped; the monitor turns the results into
    one log line per outage."""

    def __init__(
        self,
        inner: SpanExporter,
        release: DropCounter,
        dropped: DropCounter,
        monitor: ExportMonitor | None = None,
    ) -> None:
        self._inner = inner
        self._release = release
        self._dropped = dropped
        self._monitor = monitor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._release(len(spans))
        error: Exception | None = None
        try:
            result = self._inner.export(spans)
        except Exception as exc:
            error = exc
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped(len(spans))
            if self._monitor is not None:
                self._monitor.batch_failed(len(spans), error)
        elif self._monitor is not None:
            self._monitor.batch_exported()
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
        monitor: ExportMonitor | None = None,
    ) -> None:
        self._max = max_queue_size
        self._pending = 0
        self._lock = threading.Lock()
        self._on_dropped = on_dropped
        self._monitor = monitor
        self._shutdown_timeout = shutdown_timeout
        self._exporter = _CountingExporter(exporter, self._release, on_dropped, monitor)
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
            if self._monitor is not None:
                self._monitor.overflowed(1)
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


class PresetIdGenerator(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id can be drawn in advance: the
    span starter samples a root span on an id it drew itself and, when sampled, lets the SDK
    start the span on that same id (so the sampled share stays exactly the ratio)."""

    def __init__(self) -> None:
        self._next = 0

    def preset(self, trace_id: int) -> None:
        self._next = trace_id

    def generate_trace_id(self) -> int:
        trace_id = self._next
        if trace_id:
            self._next = 0
            return trace_id
        return super().generate_trace_id()


class EndAfterReply(SpanProcessor):
    """Hands the sampled spans that end during a loop callback to the span processors once
    that callback is over. A request's spans end just before its response is written, and
    what their processors do (the /debug/traces record, the export queue) is worth ~30 µs
    of a c=1 request: done after the write, it overlaps the response's way to the client
    instead of delaying it, and sampled requests stop being the slowest 1 %. One callback per
    loop iteration, whatever the number of spans; from outside a running loop (a thread,
    a shutdown) spans go through at once, and `flush` delivers what waits from any thread."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner
        self._pending: deque[ReadableSpan] = deque()
        self._scheduled = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._pending.append(span)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self._after_callback)

    def _after_callback(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        pending, inner = self._pending, self._inner
        while pending:
            try:
                span = pending.popleft()
            except IndexError:  # another thread took the last one
                return
            inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True

    def shutdown(self) -> None:
        self.flush()


@dataclass(frozen=True, slots=True)
class Tracing:
    provider: TracerProvider
    tracer: Tracer
    buffer: SpanBuffer
    propagator: HeaderPropagator
    exporting: bool
    sampler: str = ""  # the configured sampler's name ("" : unknown, always ask the SDK)
    ratio: float = 1.0
    # Where the span starter's lean spans end (None: the tracer is not the SDK's).
    ends: EndAfterReply | None = None

    def force_flush(self, timeout: float = 5.0) -> bool:
        if self.ends is not None:
            self.ends.flush()
        return self.provider.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking; call it off the event loop)."""
        if self.ends is not None:
            self.ends.flush()
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
        id_generator=PresetIdGenerator(),
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
                monitor=ExportMonitor(_export_target(config), time.monotonic),
            )
        )
    tracer = provider.get_tracer("sidecar", __version__)
    sink = otelfast.span_sink(tracer)
    return Tracing(
        provider=provider,
        tracer=tracer,
        buffer=buffer,
        propagator=HeaderPropagator(config.propagators),
        exporting=exporter is not None,
        sampler=config.sampler,
        ratio=config.ratio,
        ends=EndAfterReply(sink[0]) if sink is not None else None,
    )


_RATIO_SAMPLERS = frozenset({"traceidratio", "parentbased_traceidratio"})
# Samplers whose decision `SpanStarter.dropped` takes in full: for these, "not dropped" means
# sampled, and the span can be a LeanSpan.
_KNOWN_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
_ROOT_DROPPERS = frozenset({"always_off", "parentbased_always_off"})


class SpanStarter:
    """Starts spans like `tracer.start_span`, but decides itself, for the samplers we
    configure, when the span would be dropped, and then mints the SDK's non-recording span
    directly (same ids, flags and trace state): a sampled-out request, at 1 % sampling
    nearly all of them, then costs a few integer operations instead of the SDK's sampler,
    span-context and self-metrics machinery. Anything else goes to the SDK."""

    __slots__ = (
        "_bound",
        "_gen",
        "_lean",
        "_parent_based",
        "_ratio_based",
        "_root_drop",
        "_tracer",
    )

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer
        name = tracing.sampler
        gen = getattr(tracing.provider, "id_generator", None)
        self._gen = gen if isinstance(gen, PresetIdGenerator) else None
        # Where LeanSpans go when they end: the provider's processors (after the current
        # loop callback when the tracing has an EndAfterReply), resource and scope.
        sink = otelfast.span_sink(tracing.tracer)
        if sink is not None and tracing.ends is not None:
            sink = (tracing.ends, sink[1], sink[2])
        self._lean = sink if name in _KNOWN_SAMPLERS and self._gen is not None else None
        self._ratio_based = name in _RATIO_SAMPLERS
        self._root_drop = name in _ROOT_DROPPERS
        self._parent_based = name.startswith("parentbased_")
        self._bound = TraceIdRatioBased.get_bound_for_rate(tracing.ratio)

    def start(self, name: str, context: Context, kind: SpanKind) -> ApiSpan:
        dropped = self.dropped(otelfast.span_context_of(context))
        if dropped is not None:
            return NonRecordingSpan(dropped)
        return self.start_sampled(name, context, kind)

    def dropped(self, parent: SpanContext) -> SpanContext | None:
        """The span context of a child of `parent` that the sampler drops (ids only: a
        sampled-out request needs nothing else), or None when the SDK must start the span:
        then call `start_sampled` next, which uses the trace id drawn here."""
        if otelfast.is_valid(parent):
            trace_id: int = parent[otelfast.TRACE_ID]
            if (
                (self._parent_based and not otelfast.is_sampled(parent))
                or (self._root_drop and not self._parent_based)
                or (
                    self._ratio_based
                    and not self._parent_based
                    and trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._bound
                )
            ):
                random_bit = parent[otelfast.FLAGS] & otelfast.RANDOM_TRACE_ID
                return _dropped(trace_id, random_bit, parent[otelfast.STATE])
        elif self._gen is not None and (self._ratio_based or self._root_drop):
            trace_id = random.getrandbits(128) or 1
            if self._root_drop or trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._bound:
                return _dropped(trace_id, otelfast.RANDOM_TRACE_ID, None)
            self._gen.preset(trace_id)
        return None

    def start_sampled(self, name: str, context: Context, kind: SpanKind) -> ApiSpan:
        """The recording span of a request `dropped` did not drop: a LeanSpan when this
        starter took the sampling decision itself (the SDK would take the same one), else the
        SDK's span."""
        sink, gen = self._lean, self._gen
        if sink is None or gen is None:
            return self._tracer.start_span(name, context, kind=kind)
        sc = otelfast.span_context_of(context)
        parent: SpanContext | None = None  # a root span unless the context holds a valid one
        state: TraceState | None = None
        if otelfast.is_valid(sc):
            parent, state = sc, sc[otelfast.STATE]
            trace_id: int = sc[otelfast.TRACE_ID]
            flags = otelfast.SAMPLED | (sc[otelfast.FLAGS] & otelfast.RANDOM_TRACE_ID)
        else:
            trace_id = gen.generate_trace_id()  # the id `dropped` drew, if it drew one
            flags = otelfast.SAMPLED | otelfast.RANDOM_TRACE_ID
        span_id = random.getrandbits(64) or 1
        own = otelfast.span_context(trace_id, span_id, False, flags, state)
        processor, resource, scope = sink
        return LeanSpan(name, own, parent, kind, processor, resource, scope)


def _dropped(trace_id: int, flags: int, trace_state: TraceState | None) -> SpanContext:
    span_id = random.getrandbits(64) or 1
    return otelfast.span_context(trace_id, span_id, False, flags, trace_state)
