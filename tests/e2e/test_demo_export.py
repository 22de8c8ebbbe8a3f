"""`sidecar demo --otlp URL` / `--jaeger URL`: the demo's four sidecars export real OTLP to a
collector (the receiver double decodes the protobuf), one trace across all four services."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
        *DEMO, *args, "--workdir", str(workdir), cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"},
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


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_otlp_export_reaches_a_collector_one_trace_across_all_services(
    receiver: OtlpReceiver, tmp_path: Path, transport: str
) -> None:
    url = (receiver.grpc_endpoint if transport == "grpc"
           else f"{receiver.http_endpoint}/v1/traces")  # the path picks OTLP/HTTP
    code, out = await run_demo(*SHORT, "--otlp", url, workdir=tmp_path / "demo")
    assert code == 0, out[-4000:]
    # The demo stopped its sidecars, which flush their batches on the way out.
    spans = receiver.spans
    assert {s.service_name for s in spans} == SERVICES
    assert {s.transport for s in spans} == {transport}
    shared = traces_across_all_services(spans)
    assert len(shared) > 10, f"{len(shared)} traces span all four services"
    # One such trace: the bff's server span is its root, everything else hangs below it.
    tid = shared[0]
    trace = [s for s in spans if s.trace_id == tid]
    [root] = [s for s in trace if not s.parent_span_id]
    assert root.service_name == "bff" and root.name == "GET /context/{user_id}"
    ids = {s.span_id for s in trace}
    assert all(s.parent_span_id in ids for s in trace if s is not root)
