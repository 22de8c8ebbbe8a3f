"""gRPC telemetry: OTel RPC semantic conventions on spans, and RPC duration histograms.

A gRPC call's outcome (`grpc-status`) usually arrives in trailers, after the response headers
at which the HTTP telemetry is recorded; so for a gRPC request the span stays open until the
response stream ends, then gets `rpc.grpc.status_code` and its end time, and the RPC histogram
is observed. A Trailers-Only reply (an error before any message) is complete at once.

Metrics: `rpc_server_duration_seconds{service, rpc_system, rpc_service, rpc_method,
rpc_grpc_status_code}` (inbound) and `rpc_client_duration_seconds{service, upstream, ...}`
(every attempt), next to the HTTP histograms, which count the same calls by HTTP status.
`rpc_service`/`rpc_method` are bounded like routes: the first MAX_METHODS distinct methods
keep their names, later ones are `other`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import CollectorRegistry, Histogram

from sidecar import grpc
from sidecar.http import Body, Headers, Request, Response, body_trailers
from sidecar.telemetry.labels import OTHER, BoundedValues

MAX_METHODS = 200
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# OTel: on a server span these codes are errors; on a client span every non-OK code is.
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_ERROR = Status(StatusCode.ERROR)
# A stream that ended without a grpc-status (reset, cut off): UNKNOWN, as gRPC clients see it.
NO_STATUS = int(grpc.GrpcStatus.UNKNOWN)


def rpc_call(request: Request) -> tuple[str, str] | None:
    """(rpc.service, rpc.method) of a gRPC request, None for anything else."""
    if request.http_version != "2" or not grpc.is_grpc(request.headers):
        return None
    service, method = grpc.split_path(request.path)
    return (service, method) if service else None


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self._methods = BoundedValues(MAX_METHODS)
        labels = ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"]
        self.server_duration = Histogram(
            "rpc_server_duration_seconds",
            "Duration of inbound gRPC calls, to the end of the response stream.",
            ["service", *labels],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.client_duration = Histogram(
            "rpc_client_duration_seconds",
            "Duration of each gRPC attempt to an upstream, to the end of the response stream.",
            ["service", "upstream", *labels],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def _names(self, call: tuple[str, str]) -> tuple[str, str]:
        if self._methods.get(f"{call[0]}/{call[1]}") == OTHER:
            return OTHER, OTHER
        return call

    def observe_server(self, call: tuple[str, str], code: int, seconds: float) -> None:
        service, method = self._names(call)
        self.server_duration.labels(self.service, "grpc", service, method, str(code)).observe(
            seconds
        )

    def observe_client(
        self, upstream: str, call: tuple[str, str], code: int, seconds: float
    ) -> None:
        service, method = self._names(call)
        self.client_duration.labels(
            self.service, upstream, "grpc", service, method, str(code)
        ).observe(seconds)


def start_attributes(span: Span, call: tuple[str, str]) -> None:
    span.update_name(f"{call[0]}/{call[1]}")
    span.set_attributes({"rpc.system": "grpc", "rpc.service": call[0], "rpc.method": call[1]})


def finish_span(span: Span, code: int, server: bool) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code)
        if code in _SERVER_ERRORS if server else code != 0:
            span.set_status(_ERROR)
    span.end()


def on_completion(response: Response, done: Callable[[int], None]) -> Response:
    """Call `done(grpc status)` when the response stream ends: now for a Trailers-Only reply,
    else when its body has been read to the end (or broke off)."""
    code = grpc.trailers_only_status(response)
    if code is not None or response.body.length == 0:
        done(code if code is not None else NO_STATUS)
        return response
    response.body = StatusWatch(response.body, done)
    return response


class StatusWatch:
    """A response body passed through unchanged that reports the `grpc-status` of its
    trailers once, when the stream ends."""

    __slots__ = ("_body", "_done", "_it", "length", "replayable")

    def __init__(self, body: Body, done: Callable[[int], None]) -> None:
        self._body = body
        self._done: Callable[[int], None] | None = done
        self._it: AsyncIterator[bytes] | None = None
        self.length = body.length
        self.replayable = False

    @property
    def trailers(self) -> Headers | None:
        return body_trailers(self._body)

    def __aiter__(self) -> StatusWatch:
        self._it = self._body.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        assert self._it is not None
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            trailers = body_trailers(self._body)
            code = grpc.status_of(trailers) if trailers is not None else None
            self._report(NO_STATUS if code is None else code)
            raise
        except BaseException:
            self._report(int(grpc.GrpcStatus.CANCELLED))
            raise

    def abort(self) -> None:
        self._report(int(grpc.GrpcStatus.CANCELLED))
        abort: Any = getattr(self._body, "abort", None)
        if abort is not None:
            abort()

    def _report(self, code: int) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(code)
