"""The telemetry filters of the data path (sidecar.stack.Filter).

`ServerTelemetryLayer` is the outermost filter of a listener: it continues the caller's trace
with a SERVER span, owns `x-request-id`, records the request duration and proxy overhead, and
turns a raised SidecarError into its error reply (so the body carries the trace id).
`ClientTelemetryLayer` is the router's last per-attempt filter, next to the forwarder: one
CLIENT span per attempt, whose id is injected as the parent the upstream sees, and the
per-attempt client duration with a `trace_id` exemplar. Sampled-out requests skip every
attribute and exemplar."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)

from sidecar.clock import Clock, SystemClock
from sidecar.errors import SidecarError, error_response
from sidecar.grpc import is_grpc, status_for_error
from sidecar.http import Request, Response
from sidecar.resilience.classify import error_type_of_exception, error_type_of_status
from sidecar.stack import Exchange, Filter, Handler, alone
from sidecar.telemetry import otelfast, rpc
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.labels import OTHER, RouteMatcher, method_label
from sidecar.telemetry.metrics import LiveCount, Metrics
from sidecar.telemetry.rpc import rpc_call
from sidecar.telemetry.tracing import SpanStarter, Tracing
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER, REQUEST_ID_HEADER

_MAX_REQUEST_ID = 200
# Rejections decided before any upstream policy runs; the resilience layers report their own
# (circuit_open, overloaded, no_healthy_endpoints, deadline_exceeded) when they refuse.
REJECTIONS = frozenset({"bad_request", "no_route"})
_ERROR = Status(StatusCode.ERROR)


def span_name(method: str, route: str) -> str:
    # OTel semconv: "{method} {http.route}", or the method alone when no template matched
    # (raw paths would make operation names unbounded).
    return method if route == OTHER else f"{method} {route}"


def trace_id_hex(sc: SpanContext) -> str:
    return sc[otelfast.TRACE_ID].to_bytes(16, "big").hex() if otelfast.is_valid(sc) else ""


def _valid_request_id(value: str | None) -> bool:
    return bool(value) and len(value or "") <= _MAX_REQUEST_ID and (value or "").isprintable()


class ServerTelemetryLayer(Filter):
    def __init__(
        self,
        direction: str,
        *,
        tracing: Tracing,
        metrics: Metrics,
        access_log: AccessLog | None = None,
        server_address: str = "",
        clock: Clock | None = None,
    ) -> None:
        if direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be inbound or outbound, not {direction!r}")
        self.direction = direction
        self._starter = SpanStarter(tracing)
        self._propagator = tracing.propagator
        self._metrics = metrics
        self._routes: RouteMatcher = metrics.routes
        self._access_log = access_log
        self._server_address = server_address
        self._clock = clock or SystemClock()
        # On inbound the next hop is the local app; without a client layer in that stack it
        # must still see our SERVER span as its parent.
        self._inject = direction == "inbound"
        # The server histogram is the service's inbound RED. The outbound
        # listener's requests are counted per attempt in the client histogram and, when the
        # sidecar refuses them, in sidecar_requests_rejected_total; counting them here too
        # would add every call the app makes to the traffic the app receives.
        self._server_metrics = direction == "inbound"
        self._inflight = metrics.inflight_gauge(direction, "")

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        request, propagator, starter = x.request, self._propagator, self._starter
        x.server_start = request.start or self._clock.monotonic()
        rid = request.headers.get(REQUEST_ID_HEADER)
        if rid is None or not _valid_request_id(rid):
            rid = random.getrandbits(128).to_bytes(16, "little").hex()  # randbytes(16)
            request.headers.set(REQUEST_ID_HEADER, rid)
        request.request_id = rid
        method = method_label(request.method)
        path = request.path
        # The route label feeds the server histogram (inbound) and sampled spans only: an
        # outbound request sampled out never needs it unless it fails (see `_route`).
        route = self._routes.match(path) if self._server_metrics else ""
        x.server_method = method
        x.server_route = route
        x.server_path = path

        parent = propagator.extract(request.headers)
        call = rpc_call(request) if request.http_version == "2" else None
        sc = starter.dropped(otelfast.span_context_of(parent))
        span: Span | None = None
        recording = False
        if sc is not None and call is None and not request.upgrade:
            # Sampled out (nearly every request): ids for propagation only, no span or
            # Context objects. The client filter takes its parent from `request.trace`.
            if otelfast.has_baggage(parent):
                request.trace = otelfast.with_span(NonRecordingSpan(sc), parent)
                if self._inject:
                    propagator.inject(request.headers, request.trace)
            else:
                request.trace = sc
                if self._inject:
                    propagator.inject_ids(request.headers, sc)
        else:
            if not route:
                route = self._routes.match(path)
                x.server_route = route
            span = (
                NonRecordingSpan(sc)
                if sc is not None
                else starter.start_sampled(span_name(method, route), parent, SpanKind.SERVER)
            )
            sc = span.get_span_context()
            ctx = otelfast.with_span(span, parent)
            request.trace = ctx
            recording = span.is_recording()
            if recording:
                self._start_attributes(span, request, route, rid)
            if call is not None and recording:
                rpc.start_attributes(span, call)
            if self._inject:
                propagator.inject(request.headers, ctx)
        x.server_sc = sc
        x.server_span = span
        x.server_call = call
        x.server_recording = recording
        self._inflight.inc()
        return None

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        self._inflight.dec()
        if not isinstance(exc, SidecarError):
            self._failed(x.server_span, exc, x.server_method, self._route(x), x.server_start)
            return None
        request = x.request
        if exc.code in REJECTIONS:
            self._metrics.rejected(request.upstream or exc.upstream, exc.code)
        response = error_response(
            exc,
            trace_id=trace_id_hex(x.server_sc),
            request_id=request.request_id,
            grpc=request.http_version == "2" and is_grpc(request.headers),
        )
        return self._done(x, response, exc.code)

    def on_response(self, x: Exchange, response: Response) -> Response:
        self._inflight.dec()
        return self._done(x, response, response.error_code)

    def _done(self, x: Exchange, response: Response, error_type: str) -> Response:
        request, metrics, start = x.request, self._metrics, x.server_start
        elapsed = self._clock.monotonic() - start
        sc = x.server_sc
        sampled = otelfast.is_sampled(sc)
        trace_hex = trace_id_hex(sc) if sampled or self._access_log else ""
        status = response.status
        server_metrics = self._server_metrics
        if server_metrics:
            metrics.observe_server(
                x.server_method,
                x.server_route,
                status,
                error_type,
                elapsed,
                trace_hex if sampled else "",
            )
        metrics.observe_overhead(self.direction, elapsed - request.upstream_time)
        span: Span | None = x.server_span
        if span is not None:  # else sampled out: nothing to end
            call = x.server_call
            if x.server_recording:
                _end_attributes(span, status, error_type)
            if call is not None:
                response = rpc.on_completion(
                    response, self._rpc_done(span, call, start if server_metrics else None)
                )
            elif request.upgrade and x.server_recording:
                _end_after_tunnel(span, response.body)
            else:
                span.end()
        if self._access_log is not None:
            self._access_log.log(request, status, elapsed, trace_hex, error_type, self.direction)
        return response

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)

    def _route(self, x: Exchange) -> str:
        """The route label of the path as it arrived (routing may rewrite the target)."""
        route: str = x.server_route
        if not route:
            route = self._routes.match(x.server_path)
            x.server_route = route
        return route

    def _rpc_done(
        self, span: Span, call: tuple[str, str], start: float | None
    ) -> Callable[[int], None]:
        clock, metrics = self._clock, self._metrics

        def done(code: int) -> None:
            rpc.finish_span(span, code, server=True)
            if start is not None:
                metrics.rpc.observe_server(call, code, clock.monotonic() - start)

        return done

    def _start_attributes(self, span: Span, request: Request, route: str, rid: str) -> None:
        attrs: dict[str, Any] = {
            "http.request.method": method_label(request.method),
            "url.path": request.path,
            "url.scheme": request.scheme,
            "network.protocol.version": request.http_version,
            "sidecar.direction": self.direction,
            "http.request.header.x-request-id": (rid,),
        }
        if attrs["http.request.method"] != request.method:
            attrs["http.request.method_original"] = request.method
        if route != OTHER:
            attrs["http.route"] = route
        if self._server_address:
            attrs["server.address"] = self._server_address
        if request.client_addr:
            attrs["client.address"] = request.client_addr
        _deadline_attribute(attrs, request)
        span.set_attributes(attrs)

    def _failed(
        self, span: Span | None, exc: BaseException, method: str, route: str, start: float
    ) -> None:
        """An exception the listener must handle (a bug, or the client went away)."""
        error_type = error_type_of_exception(exc)
        if span is not None:
            if span.is_recording():
                span.set_attribute("error.type", error_type)
                span.set_status(_ERROR)
                if isinstance(exc, Exception):
                    span.record_exception(exc)
            span.end()
        if isinstance(exc, Exception):
            # The listener answers 500; count it so errors are never invisible in metrics.
            elapsed = self._clock.monotonic() - start
            self._metrics.observe_server(method, route, 500, error_type, elapsed)


class ClientTelemetryLayer(Filter):
    """Per-attempt CLIENT span and client metrics. `default_upstream` names the next hop
    when routing did not set `request.upstream` (on inbound: the local app)."""

    def __init__(
        self,
        *,
        tracing: Tracing,
        metrics: Metrics,
        direction: str = "outbound",
        default_upstream: str = "",
        clock: Clock | None = None,
    ) -> None:
        self._starter = SpanStarter(tracing)
        self._propagator = tracing.propagator
        self._metrics = metrics
        self._routes = metrics.routes
        self._direction = direction
        self._default_upstream = default_upstream
        self._clock = clock or SystemClock()

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        request, starter, propagator = x.request, self._starter, self._propagator
        metrics = self._metrics
        trace = request.trace
        parent: Context | None = None
        if isinstance(trace, SpanContext):  # the server filter's, sampled out
            parent_sc = trace
        else:
            parent = trace if isinstance(trace, Context) else None
            if parent is None:
                parent = propagator.extract(request.headers)
            parent_sc = otelfast.span_context_of(parent)
        upstream = metrics.upstream(request.upstream or self._default_upstream)
        method = method_label(request.method)
        call = rpc_call(request) if request.http_version == "2" else None
        sc = starter.dropped(parent_sc)
        span: Span | None = None
        baggage = parent is not None and otelfast.has_baggage(parent)
        if sc is not None and call is None and not baggage:
            # Sampled out: the upstream gets ids to continue the trace, and no span
            # object is made.
            propagator.inject_ids(request.headers, sc)
        else:
            if parent is None:
                parent = otelfast.with_span(NonRecordingSpan(parent_sc), Context())
            # Only a span names the route here: a request sampled out skips the match.
            route = self._routes.match(request.path)
            span = (
                NonRecordingSpan(sc)
                if sc is not None
                else starter.start_sampled(span_name(method, route), parent, SpanKind.CLIENT)
            )
            sc = span.get_span_context()
            propagator.inject(request.headers, otelfast.with_span(span, parent))
            if span.is_recording():
                _client_attributes(span, request, upstream, method, route)
                if call is not None:
                    rpc.start_attributes(span, call)
        x.client_upstream = upstream
        x.client_method = method
        x.client_call = call
        x.client_sc = sc
        x.client_span = span
        inflight = metrics.inflight_gauge(self._direction, upstream)
        inflight.inc()
        x.client_inflight = inflight
        x.client_start = self._clock.monotonic()
        return None

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        request, metrics = x.request, self._metrics
        inflight: LiveCount = x.client_inflight
        inflight.dec()
        elapsed = self._clock.monotonic() - x.client_start
        request.upstream_time += elapsed
        error_type = error_type_of_exception(exc)
        sc = x.client_sc
        metrics.observe_client(
            x.client_upstream,
            x.client_method,
            0,
            error_type,
            elapsed,
            trace_id_hex(sc) if otelfast.is_sampled(sc) else "",
        )
        call = x.client_call
        if call is not None:
            # No reply (connect failure, reset, timeout): the attempt still counts,
            # with the status a gRPC client sees for it (UNAVAILABLE, ...).
            code = int(status_for_error(error_type))
            metrics.rpc.observe_client(x.client_upstream, call, code, elapsed)
        span: Span | None = x.client_span
        if span is not None:
            if span.is_recording():
                span.set_attribute("error.type", error_type)
                span.set_status(_ERROR)
            span.end()
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        request, metrics = x.request, self._metrics
        inflight: LiveCount = x.client_inflight
        inflight.dec()
        elapsed = self._clock.monotonic() - x.client_start
        request.upstream_time += elapsed
        status = response.status
        error_type = response.error_code or error_type_of_status(status)
        sc = x.client_sc
        metrics.observe_client(
            x.client_upstream,
            x.client_method,
            status,
            error_type,
            elapsed,
            trace_id_hex(sc) if otelfast.is_sampled(sc) else "",
        )
        span: Span | None = x.client_span
        if span is None:
            return response
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if error_type:
                span.set_attribute("error.type", error_type)
                span.set_status(_ERROR)
        call = x.client_call
        if call is None:
            span.end()
            return response
        return rpc.on_completion(
            response,
            _rpc_client_done(span, call, x.client_upstream, x.client_start, metrics, self._clock),
        )

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)


def _end_attributes(span: Span, status: int, error_type: str) -> None:
    span.set_attribute("http.response.status_code", status)
    span_error = error_type or error_type_of_status(status)
    if span_error:
        span.set_attribute("error.type", span_error)
        span.set_status(_ERROR)


def _end_after_tunnel(span: Span, body: object) -> None:
    """A protocol switch's span covers the handshake but is ended only when the tunnel
    closes, so it can carry the tunnel's duration and bytes."""
    on_close = getattr(body, "on_close", None)
    if on_close is None:
        span.end()
        return
    handshake_end = time.time_ns()

    def closed(stats: Any) -> None:
        span.set_attributes(
            {
                "sidecar.tunnel.protocol": stats.protocol,
                "sidecar.tunnel.duration_s": stats.seconds,
                "sidecar.tunnel.bytes_sent": stats.bytes_sent,
                "sidecar.tunnel.bytes_received": stats.bytes_received,
            }
        )
        span.end(end_time=handshake_end)

    on_close(closed)


def _rpc_client_done(
    span: Span, call: tuple[str, str], upstream: str, start: float, metrics: Metrics, clock: Clock
) -> Callable[[int], None]:
    def done(code: int) -> None:
        rpc.finish_span(span, code, server=False)
        metrics.rpc.observe_client(upstream, call, code, clock.monotonic() - start)

    return done


def _deadline_attribute(attrs: dict[str, Any], request: Request) -> None:
    """The deadline this request carries, on the span: a CLIENT span records the
    budget it gave the upstream, a SERVER span the budget its caller gave it. `sidecar
    diagnose` compares it with how long the callee really worked."""
    value = request.headers.get(EXPECTED_TIMEOUT_HEADER)
    if value is not None and value.isdigit() and len(value) <= 12:
        attrs["sidecar.expected_timeout_ms"] = int(value)


def _client_attributes(
    span: Span, request: Request, upstream: str, method: str, route: str
) -> None:
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.path": request.path,
        "sidecar.upstream": upstream,
        "sidecar.attempt": request.attempt,
        "server.address": request.authority or upstream,
    }
    if route != OTHER:
        attrs["http.route"] = route
    if request.retry_reason:
        attrs["sidecar.retry_reason"] = request.retry_reason
    _deadline_attribute(attrs, request)
    ep = request.endpoint
    if ep is not None:
        attrs["sidecar.endpoint"] = ep.address
        attrs["server.port"] = ep.port
        attrs["network.peer.address"] = ep.host
        attrs["network.peer.port"] = ep.port
    span.set_attributes(attrs)
