"""An OTLP trace receiver double: speaks real OTLP over HTTP (`POST /v1/traces`,
`application/x-protobuf`) and gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`),
decodes the real `ExportTraceServiceRequest` protobuf and records what it got.

Tests assert on `receiver.spans` (trace ids, parents, kinds, resource attributes), never on
our exporter's calls. `reject = True` makes both endpoints fail like an unavailable collector."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str  # "" for a root
    name: str
    kind: int  # 1 internal, 2 server, 3 client
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    transport: str  # "http" | "grpc"

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def decode(
    request: trace_service_pb2.ExportTraceServiceRequest, transport: str
) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=int(s.kind),
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        resource=resource,
                        status_code=int(s.status.code),
                        transport=transport,
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    host: str = "127.0.0.1"
    reject: bool = False
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    rejected: int = 0  # export requests refused while `reject` was set
    http_port: int = 0
    grpc_port: int = 0
    # OTLP/HTTP only: refuse the next `fail_next` requests with `fail_status` (and a
    # Retry-After of `retry_after` when set), and what each request's headers and peer were.
    fail_next: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    http_headers: list[dict[str, str]] = field(default_factory=list)
    http_peers: list[tuple[str, int]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _grpc: grpc.aio.Server | None = None

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    def _record(self, request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> None:
        self.requests += 1
        self.spans.extend(decode(request, transport))

    async def _http_export(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="expected application/x-protobuf")
        self.http_headers.append({k.lower(): v for k, v in request.headers.items()})
        if request.transport is not None:
            self.http_peers.append(request.transport.get_extra_info("peername"))
        if self.reject:
            self.rejected += 1
            return web.Response(status=503, text="unavailable")
        body = await request.read()  # aiohttp has undone a gzip/deflate Content-Encoding
        if self.fail_next > 0:
            self.fail_next -= 1
            self.rejected += 1
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.Response(status=self.fail_status, text="refused", headers=extra)
        msg = trace_service_pb2.ExportTraceServiceRequest()
        msg.ParseFromString(body)
        self._record(msg, "http")
        reply = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=reply.SerializeToString(), content_type="application/x-protobuf")

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._http_export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.http_port)  # 0: any free port
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.http_port = server.sockets[0].getsockname()[1]

        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            async def Export(
                self,
                request: trace_service_pb2.ExportTraceServiceRequest,
                context: grpc.aio.ServicerContext[Any, Any],
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                if receiver.reject:
                    receiver.rejected += 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "unavailable")
                receiver._record(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
        await self._grpc.start()
        return self

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], within: float = 10.0
    ) -> list[ReceivedSpan]:
        """Poll (yielding to the loop that serves the receiver) until `predicate(spans)`."""
        deadline = time.monotonic() + within
        while not predicate(self.spans):
            if time.monotonic() > deadline:
                raise AssertionError(f"OTLP receiver: condition not met; got {self.spans!r}")
            await asyncio.sleep(0.01)
        return self.spans
