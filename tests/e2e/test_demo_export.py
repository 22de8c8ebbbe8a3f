"""`sidecar demo --otlp URL` / `--jaeger URL`: the demo's four sidecars export real OTLP to a
collector (the receiver double decodes the protobuf), one trace across all four services."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.doubles.jaeger import JaegerDouble
from tests.doubles.otlp import OtlpReceiver, ReceivedSpan
from tests.e2e.demo_run import DEMO, ROOT

SERVICES = {"bff", "user-service", "document-service", "retrieval-service"}
SHORT = ["--quick", "--duration", "1", "--concurrency", "2"]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


async def run_demo(*args: str, workdir: Path) -> tuple[int, str]:
    """The demo as a child of this event loop, which keeps serving the doubles meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        *DEMO,
        *args,
        "--workdir",
        str(workdir),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def traces_across_all_services(spans: list[ReceivedSpan]) -> list[str]:
    services: dict[str, set[str]] = defaultdict(set)
    for s in spans:
        services[s.trace_id].add(s.service_name)
    return [tid for tid, names in services.items() if names >= SERVICES]


async def test_otlp_http_export_reaches_a_collector(receiver: OtlpReceiver, tmp_path: Path) -> None:
    url = f"{receiver.http_endpoint}/v1/traces"  # the path picks OTLP/HTTP
    code, out = await run_demo(*SHORT, "--otlp", url, workdir=tmp_path / "demo")
    assert code == 0, out[-4000:]
    # The demo stopped its sidecars, which flush their batches on the way out.
    assert_one_trace_across_all_services(receiver.spans, "http")


def assert_one_trace_across_all_services(spans: list[ReceivedSpan], transport: str) -> None:
    assert {s.service_name for s in spans} == SERVICES
    assert {s.transport for s in spans} == {transport}
    shared = traces_across_all_services(spans)
    assert len(shared) > 10, f"{len(shared)} traces span all four services"
    # One such trace: the bff's server span is its root, everything else hangs below it.
    trace = [s for s in spans if s.trace_id == shared[0]]
    [root] = [s for s in trace if not s.parent_span_id]
    assert root.service_name == "bff" and root.name == "GET /context/{user_id}"
    ids = {s.span_id for s in trace}
    assert all(s.parent_span_id in ids for s in trace if s is not root)


class JaegerBackend(OtlpReceiver):
    """An OTLP receiver that stores what it receives in a Jaeger query-API double, converted
    the way Jaeger stores OTLP spans: what a Jaeger all-in-one does with the demo's spans."""

    def __init__(self, jaeger: JaegerDouble) -> None:
        super().__init__()
        self.jaeger = jaeger
        self.by_trace: dict[str, dict[str, Any]] = {}

    def _record(self, request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> None:
        super()._record(request, transport)
        for rs in request.resource_spans:
            service = next(
                kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"
            )
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self._store(service, span)
        self.jaeger.traces = list(self.by_trace.values())

    def _store(self, service: str, span: Any) -> None:
        tid = span.trace_id.hex()
        trace = self.by_trace.setdefault(tid, {"traceID": tid, "spans": [], "processes": {}})
        pid = next(
            (p for p, v in trace["processes"].items() if v["serviceName"] == service),
            f"p{len(trace['processes']) + 1}",
        )
        trace["processes"][pid] = {"serviceName": service, "tags": []}
        tags: list[dict[str, Any]] = [
            {"key": "span.kind", "type": "string", "value": KINDS.get(span.kind, "")}
        ]
        for kv in span.attributes:
            which = kv.value.WhichOneof("value")
            value = getattr(kv.value, which) if which else ""
            if which == "array_value":  # Jaeger keeps arrays as a JSON string
                value = json.dumps([getattr(v, v.WhichOneof("value")) for v in value.values])
            tags.append({"key": kv.key, "type": JAEGER_TYPES.get(which, "string"), "value": value})
        if span.status.code == 2:
            tags.append({"key": "error", "type": "bool", "value": True})
        refs = (
            [{"refType": "CHILD_OF", "traceID": tid, "spanID": span.parent_span_id.hex()}]
            if span.parent_span_id
            else []
        )
        trace["spans"].append(
            {
                "traceID": tid,
                "spanID": span.span_id.hex(),
                "operationName": span.name,
                "references": refs,
                "startTime": span.start_time_unix_nano // 1000,
                "duration": (span.end_time_unix_nano - span.start_time_unix_nano) // 1000,
                "tags": tags,
                "logs": [],
                "processID": pid,
                "warnings": None,
                "flags": 1,
            }
        )


KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
JAEGER_TYPES = {
    "string_value": "string",
    "bool_value": "bool",
    "int_value": "int64",
    "double_value": "float64",
}


async def test_jaeger_is_where_the_diagnosis_reads_the_traces(tmp_path: Path) -> None:
    async with JaegerDouble([]) as jaeger:
        backend = await JaegerBackend(jaeger).start()
        try:
            workdir = tmp_path / "demo"
            # Jaeger's OTLP port is not on the query URL's host:4317 here: --otlp names it.
            code, out = await run_demo(
                *SHORT, "--jaeger", jaeger.url, "--otlp", backend.grpc_endpoint, workdir=workdir
            )
        finally:
            await backend.stop()
    assert code == 0, out[-4000:]
    assert_one_trace_across_all_services(backend.spans, "grpc")
    text = " ".join(out.split())
    assert f"from Jaeger's query API ({jaeger.url})" in text, text
    assert re.search(r"Slowest hop: document-service GET /documents: \d+% of p99", text), text
    result = json.loads((workdir / "result.json").read_text())
    assert result["diagnosis_source"] == "jaeger" and result["slowest_hop"] == "document-service"
    searches = [q for path, q in jaeger.requests if path == "/api/traces"]
    assert searches and all(
        q["service"] == "bff" and q["operation"] == "GET /context/{user_id}" for q in searches
    )
    assert f"sidecar diagnose --jaeger {jaeger.url} --service bff" in text
