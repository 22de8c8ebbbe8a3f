"""The SDK's OTLP/gRPC span exporter, sending requests encoded by `otlp_wire` instead of the
SDK's encoder (~33 µs a span, holding the GIL). The exporter builds each request through its
overridable `_translate_data`; ours parses our bytes back into the request message (upb, in C:
~0.4 µs a span), which the stub then serializes. That override is this project's one reach into
the SDK exporter's internals; tests/unit/telemetry/test_otlp_sdk.py fails when it changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import ReadableSpan

from sidecar.telemetry.otlp_wire import export_request

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )


def grpc_exporter(endpoint: str, insecure: bool, timeout: float) -> GrpcExporter:
    """The SDK's OTLP/gRPC exporter with our encoder. The class is made here so that the gRPC
    stack is imported only when this exporter is configured."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class WireGrpcExporter(GrpcExporter):
        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
                export_request(data)
            )
            return request

    return WireGrpcExporter(endpoint=endpoint, insecure=insecure, timeout=timeout)
