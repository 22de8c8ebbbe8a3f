"""Load for `sidecar demo`: a fixed number of concurrent clients calling the bff through its
sidecar for a while, and the latency statistics of what they saw."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

QUERIES = (
    "summarise my recent work",
    "which invoices are overdue?",
    "draft a reply to the incident review",
    "what changed in the roadmap?",
)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def parse_server_timing(value: str) -> dict[str, float]:
    """`user-service;dur=12.3, total;dur=40` → {"user-service": 12.3, "total": 40.0}."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(raw)
    return out


@dataclass
class PhaseResult:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    timings: list[dict[str, float]] = field(default_factory=list)  # bff Server-Timing
    started_wall: float = 0.0
    elapsed_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


Tick = Callable[[int], None]  # called with 1 per finished request (progress bar)


async def drive(
    session: aiohttp.ClientSession,
    url_base: str,
    name: str,
    duration_s: float,
    concurrency: int,
    tick: Tick,
    request_timeout_s: float = 5.0,
) -> PhaseResult:
    """Closed-loop load: `concurrency` clients, each sending its next request when the last
    one finished, until `duration_s` has passed. A request that takes longer than
    `request_timeout_s` counts as an error (and the phase does not wait for it)."""
    per_request = aiohttp.ClientTimeout(total=request_timeout_s)
    result = PhaseResult(name, started_wall=time.time())
    start = time.monotonic()
    stop_at = start + duration_s

    async def client(worker: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            user = f"u{(worker * 7919 + n) % 500}"
            query = QUERIES[n % len(QUERIES)]
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.get(
                    f"{url_base}/context/{user}", params={"q": query}, timeout=per_request
                ) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    timing = resp.headers.get("server-timing", "")
            except (aiohttp.ClientError, TimeoutError):
                ok, timing = False, ""
            if ok:
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if timing:
                    result.timings.append(parse_server_timing(timing))
            else:
                result.errors += 1
            tick(1)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    result.elapsed_s = time.monotonic() - start
    return result
