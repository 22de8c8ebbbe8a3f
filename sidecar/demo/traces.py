"""Traces for `sidecar demo`: collected from every sidecar's `/debug/traces` (Jaeger query-API
shape), merged into whole traces, handed to `sidecar.diagnose`; plus a fallback breakdown
from the bff's own Server-Timing when no trace-based diagnosis is available."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from sidecar.demo.load import PhaseResult, percentile

JaegerPayload = dict[str, Any]


async def fetch_traces(
    session: aiohttp.ClientSession,
    admin_url: str,
    lookback_s: float,
    limit: int,
    service: str | None = None,
    operation: str | None = None,
) -> tuple[JaegerPayload | None, str | None]:
    """One sidecar's buffered traces, or (None, reason)."""
    params = {"lookback": f"{math.ceil(lookback_s)}s", "limit": str(limit)}
    if service:
        params["service"] = service
    if operation:
        params["operation"] = operation
    try:
        async with session.get(f"{admin_url}/debug/traces", params=params) as resp:
            if resp.status == 404:
                return None, "this sidecar build serves no /debug/traces"
            if resp.status != 200:
                return None, f"/debug/traces answered {resp.status}"
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"cannot read /debug/traces: {exc or type(exc).__name__}"
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return None, "/debug/traces did not return Jaeger JSON"
    return data, None


def merge_traces(entry: JaegerPayload, others: Sequence[JaegerPayload]) -> JaegerPayload:
    """The entry sidecar's traces, completed with the spans other sidecars recorded for the
    same trace ids. Process ids are renamed per source so they cannot collide."""
    merged: dict[str, dict[str, Any]] = {}
    seen_spans: dict[str, set[str]] = {}
    order: list[str] = []

    def add(trace: dict[str, Any], source: int) -> None:
        tid = str(trace.get("traceID", ""))
        target = merged[tid]
        rename = {pid: f"s{source}{pid}" for pid in trace.get("processes", {})}
        for pid, proc in trace.get("processes", {}).items():
            target["processes"][rename[pid]] = proc
        for span in trace.get("spans", []):
            sid = str(span.get("spanID", ""))
            if sid in seen_spans[tid]:
                continue
            seen_spans[tid].add(sid)
            pid = span.get("processID")
            target["spans"].append({**span, "processID": rename.get(pid, pid)})

    for trace in entry.get("data", []):
        tid = str(trace.get("traceID", ""))
        if tid and tid not in merged:
            merged[tid] = {"traceID": tid, "spans": [], "processes": {}}
            seen_spans[tid] = set()
            order.append(tid)
        if tid:
            add(trace, 0)
    for source, payload in enumerate(others, start=1):
        for trace in payload.get("data", []):
            if str(trace.get("traceID", "")) in merged:
                add(trace, source)
    data = [merged[t] for t in order]
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}


async def collect(
    session: aiohttp.ClientSession,
    entry_admin: str,
    other_admins: Sequence[str],
    service: str,
    operation: str,
    lookback_s: float,
    limit: int,
) -> tuple[JaegerPayload | None, str | None]:
    entry, reason = await fetch_traces(session, entry_admin, lookback_s, limit, service, operation)
    if entry is None:
        return None, reason
    if not entry["data"]:
        return None, f"no {service} {operation!r} traces in the sidecar buffer"
    # Downstream sidecars hold more traces than asked for; a larger limit keeps ours in.
    fetched = await asyncio.gather(
        *(fetch_traces(session, url, lookback_s, limit * 4) for url in other_admins)
    )
    others = [payload for payload, _ in fetched if payload is not None]
    return merge_traces(entry, others), None


async def collect_from_jaeger(
    session: aiohttp.ClientSession,
    base: str,
    service: str,
    operation: str,
    since_wall: float,
    expected: int,
    wait_s: float,
    poll_s: float = 1.0,
) -> tuple[JaegerPayload | None, str | None]:
    """The phase's traces as Jaeger's query API serves them, once Jaeger has them.

    Sidecars export in batches (one a second), so the last traces arrive after the load
    stopped, and a trace's spans arrive from four sidecars at different times. Jaeger is
    asked until it holds most of the requests sent (`expected`) and the span count stays the
    same between two polls; after `wait_s`, whatever it has (or the reason it has nothing)."""
    url = f"{base.rstrip('/')}/api/traces"
    params = {
        "service": service,
        "operation": operation,
        "start": str(int(since_wall * 1e6)),
        "limit": str(max(1, expected) * 2),
    }
    want = max(1, math.ceil(expected * 0.9))
    deadline = asyncio.get_running_loop().time() + wait_s
    last_spans = -1
    while True:
        params["end"] = str(int(time.time() * 1e6))
        payload, why = await _get_traces(session, url, params)
        if payload is None:
            return None, why  # unreachable or refusing: waiting will not change that
        spans = sum(len(t.get("spans", [])) for t in payload["data"])
        if len(payload["data"]) >= want and spans == last_spans:
            return payload, None
        last_spans = spans
        if asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(poll_s)
    if payload["data"]:
        return payload, None  # fewer than hoped for, still worth diagnosing
    return None, f"Jaeger has no {service} {operation!r} traces after {wait_s:g}s"


async def _get_traces(
    session: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[JaegerPayload | None, str | None]:
    try:
        async with session.get(url, params=params) as resp:
            if resp.status != 200:
                return None, f"{url} answered {resp.status}"
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"cannot reach {url}: {exc or type(exc).__name__}"
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return None, f"{url} did not return Jaeger JSON"
    return data, None


# ---------------------------------------------------------------- fallback breakdown


@dataclass(frozen=True)
class HopStat:
    name: str
    p50_ms: float
    p99_ms: float
    share_p50: float  # of the request's total at p50


@dataclass(frozen=True)
class Breakdown:
    requests: int
    total_p50_ms: float
    total_p99_ms: float
    hops: list[HopStat]  # slowest first
    sequential: bool
    saving_p50_ms: float  # if the calls ran concurrently

    @property
    def slowest(self) -> HopStat | None:
        return self.hops[0] if self.hops else None


def server_timing_breakdown(phase: PhaseResult) -> Breakdown | None:
    """Per-hop latency as the bff measured it (Server-Timing), and whether its calls ran one
    after another: if the hops add up to nearly (never more than) the whole request, they did
    not overlap."""
    timings = [t for t in phase.timings if "total" in t and len(t) > 1]
    if not timings:
        return None
    names = sorted({k for t in timings for k in t if k != "total"})
    totals = [t["total"] for t in timings]
    total_p50 = percentile(totals, 50)
    hops = [
        HopStat(
            name,
            percentile(vals, 50),
            percentile(vals, 99),
            percentile(vals, 50) / total_p50 if total_p50 else 0.0,
        )
        for name in names
        if (vals := [t[name] for t in timings if name in t])
    ]
    hops.sort(key=lambda h: h.p99_ms, reverse=True)
    hop_sums = [sum(v for k, v in t.items() if k != "total") for t in timings]
    overlap = percentile([s / t["total"] for s, t in zip(hop_sums, timings, strict=True)], 50)
    savings = [
        sum(v for k, v in t.items() if k != "total") - max(v for k, v in t.items() if k != "total")
        for t in timings
    ]
    return Breakdown(
        requests=len(timings),
        total_p50_ms=total_p50,
        total_p99_ms=percentile(totals, 99),
        hops=hops,
        # Overlapping calls add up to more than the request took; sequential ones to a bit less.
        sequential=len(names) > 1 and 0.8 <= overlap <= 1.02,
        saving_p50_ms=percentile(savings, 50),
    )
