"""The admin server must not stall the data path (issue 18, finding 9), over real sockets.

Both share one event loop. A full span ring (10 000 spans) dumped by four admin clients at
once with `limit=10000` used to hold the loop ~0.5 s per answer; now an answer is capped and
built in slices, and the data path's median stays low meanwhile."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import Any

import aiohttp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from sidecar.admin.telemetry import MAX_LIMIT
from sidecar.telemetry.span_buffer import MAX_DUMP_BYTES
from tests.integration.hardening.conftest import UPSTREAM

RING = 10_000


def _fill(buffer: Any, templates: list[ReadableSpan]) -> None:
    """Fill the ring with copies of real spans, a new trace per copy of the set."""
    now = time.time_ns()
    while len(buffer) < RING:
        trace_id = random.getrandbits(128)
        for s in templates:
            assert s.context is not None
            parent = s.parent
            buffer.on_end(
                ReadableSpan(
                    name=s.name,
                    context=SpanContext(trace_id, s.context.span_id, False, s.context.trace_flags),
                    parent=None
                    if parent is None
                    else SpanContext(trace_id, parent.span_id, parent.is_remote),
                    resource=s.resource,
                    attributes=s.attributes,
                    kind=s.kind,
                    status=s.status,
                    start_time=now,
                    end_time=now + 1_000_000,
                    instrumentation_scope=s.instrumentation_scope,
                )
            )


async def test_trace_dumps_do_not_stall_the_data_path(upstreams, sidecar_factory):
    up = await upstreams(UPSTREAM)
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": up.port},
            "discovery": {"static": {UPSTREAM: [f"127.0.0.1:{up.port}"]}},
        }
    )
    data = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
    admin = f"http://127.0.0.1:{sc.admin.port}"
    buffer = sc.tracing.buffer
    async with aiohttp.ClientSession() as s:

        async def call() -> float:
            started = time.perf_counter()
            async with s.get(f"{data}/users/1", headers={"Host": UPSTREAM}) as r:
                await r.read()
                assert r.status == 200
            return time.perf_counter() - started

        for _ in range(3):
            await call()
        _fill(buffer, buffer.spans())
        quiet = statistics.median([await call() for _ in range(50)])

        stop = asyncio.Event()
        dumps: list[bytes] = []

        async def dumper() -> None:
            async with aiohttp.ClientSession() as own:
                while not stop.is_set():
                    async with own.get(f"{admin}/debug/traces?limit=10000") as r:
                        assert r.status == 200
                        dumps.append(await r.read())

        dumpers = [asyncio.create_task(dumper()) for _ in range(4)]
        try:
            # Measure only once the dumps are under way (no sleep: poll the buffer's users).
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            busy: list[float] = []
            while len(busy) < 100 or len(dumps) < 4:
                busy.append(await call())
                assert loop.time() < end, (len(busy), len(dumps))
        finally:
            stop.set()
            await asyncio.gather(*dumpers)

    p50 = statistics.median(busy)
    print(f"data-path p50: quiet {quiet * 1000:.2f} ms, during dumps {p50 * 1000:.2f} ms")
    assert p50 < max(0.025, quiet * 5), (quiet, p50)
    answer = json.loads(dumps[0])
    assert answer["limit"] == MAX_LIMIT and answer["total"] == len(answer["data"]) <= MAX_LIMIT
    assert all(len(d) <= MAX_DUMP_BYTES + 64 * 1024 for d in dumps)
