"""The findings of a diagnosis, each one sentence a person can act on. Pure functions over the
normalised trace trees and the aggregated hop statistics."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

from sidecar.diagnose.results import CriticalChain, Diagnosis, Finding
from sidecar.diagnose.signals import (
    attempt,
    deadline_ms,
    is_breaker_rejection,
    is_error,
    is_timeout,
    timeout_ms,
)
from sidecar.diagnose.tree import HopKey, Node, TraceTree

OVERLAP_TOLERANCE_US = 100  # rounding of µs timestamps across hosts
SEQUENTIAL_MAJORITY = 0.8  # of the traces where both calls happen
MIN_SAVING_MS = 1.0
RETRY_STORM_RATIO = 0.25  # retries per first attempt; the default retry budget allows 0.2
ERROR_RATE = 0.05
FLAP_MIN_REJECTIONS, FLAP_MIN_SWITCHES = 3, 4
GAP_MIN_MS, GAP_SHARE = 1.0, 0.2  # of the hop's p50

Context = HopKey | None  # the hop the calls are made from; None = the operation itself


def pct(share: float) -> str:
    return f"{round(share * 100)}%"


def slowest_hop(result: Diagnosis) -> Finding | None:
    blocking = [h for h in result.hops if h.async_calls < h.count]
    if not blocking:
        return None
    top = max(blocking, key=lambda h: (h.critical_share_p99, h.critical_share))
    if top.critical_share_p99 <= 0 and top.critical_share <= 0:
        return None
    return Finding(
        "slowest_hop", f"{top.name}: {pct(top.critical_share_p99)} of p99 critical path", top.name
    )


def _round_ms(us: int) -> str:
    value = us / 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def critical_path(chain: CriticalChain | None) -> list[Finding]:
    """Only when it goes deeper than the first hop: otherwise it is the slowest hop."""
    if chain is None or len(chain.links) < 3:
        return []
    last = chain.links[-1]
    return [
        Finding(
            "critical_path",
            f"critical path: {chain.text} — {pct(chain.share_p99)} of the p99 requests' time "
            f"({pct(chain.share)} over all)",
            last.hop,
            path=tuple(link.hop for link in chain.links[:-1]),
        )
    ]


def hop_gaps(result: Diagnosis) -> list[Finding]:
    """Time a hop spends outside the callee's server span: network, the callee's accept
    queue, its sidecar. Reported when it is a real part of a hop on the critical path."""
    out = []
    for hop in result.hops:
        if not hop.gap_calls or hop.critical_share <= 0 or hop.p50_ms <= 0:
            continue
        share = hop.gap_p50_ms / hop.p50_ms
        if hop.gap_p50_ms >= GAP_MIN_MS and share >= GAP_SHARE:
            where = (
                "before its server span starts"
                if hop.gap_before_p50_ms >= hop.gap_after_p50_ms
                else "after its server span ends"
            )
            out.append(
                Finding(
                    "hop_gap",
                    f"{hop.name}: {pct(share)} of the hop is spent outside the callee's server "
                    f"span, mostly {where} (p50 {_round_ms(int(hop.gap_before_p50_ms * 1000))} ms "
                    f"before, {_round_ms(int(hop.gap_after_p50_ms * 1000))} ms after): network, "
                    "queueing in the callee or its sidecar",
                    hop.name,
                )
            )
    return out


def retry_storms(trees: Sequence[TraceTree], hops: Sequence[Sequence[Node]]) -> list[Finding]:
    first: dict[HopKey, int] = defaultdict(int)
    retries: dict[HopKey, int] = defaultdict(int)
    worst: dict[HopKey, int] = defaultdict(int)
    for nodes in hops:
        for node in nodes:
            if node.hop is None:
                continue
            n = attempt(node.span)
            if n > 1:
                retries[node.hop] += 1
            else:
                first[node.hop] += 1
            worst[node.hop] = max(worst[node.hop], n)
    out = []
    for key in sorted(retries):
        calls = max(1, first[key])
        ratio = retries[key] / calls
        if retries[key] >= 3 and (ratio >= RETRY_STORM_RATIO or worst[key] >= 4):
            out.append(
                Finding(
                    "retry_storm",
                    f"{key.name}: retry storm — {1 + ratio:.1f} attempts per call, up to "
                    f"{worst[key]} in one request ({retries[key]} retries for {calls} calls); "
                    "lower retries.attempts or budget_ratio, or fix the failing upstream",
                    key.name,
                )
            )
    return out


def deadline_overruns(trees: Sequence[TraceTree]) -> list[Finding]:
    """Work that outlives what its caller waits for: a callee still running after its caller
    timed out, a callee running past the deadline it was given, or a configured per-try
    timeout longer than the remaining deadline."""
    kept: dict[HopKey, list[int]] = defaultdict(list)
    configured: dict[HopKey, list[tuple[float, float]]] = defaultdict(list)
    for tree in trees:
        for node in tree.hops:
            if node.hop is None:
                continue
            callee = next((c for c in node.children if c.span.service != node.span.service), None)
            if is_timeout(node.span) and callee is not None and callee.end > node.end:
                kept[node.hop].append(callee.end - node.end)
            target = callee if callee is not None else node
            given = deadline_ms(target.span) or deadline_ms(node.span)
            if given is not None and target.end - target.start > given * 1000:
                kept[node.hop].append(int(target.end - target.start - given * 1000))
            limit = timeout_ms(node.span)
            if limit is not None and given is not None and limit > given:
                configured[node.hop].append((limit, given))
    out = []
    for key in sorted(set(kept) | set(configured)):
        if key in configured:
            limit, given = configured[key][0]
            out.append(
                Finding(
                    "timeout_exceeds_deadline",
                    f"{key.name}: timeout {limit:.0f} ms is longer than the caller's remaining "
                    f"deadline {given:.0f} ms in {len(configured[key])} calls",
                    key.name,
                )
            )
        if key in kept:
            over = kept[key]
            out.append(
                Finding(
                    "timeout_exceeds_deadline",
                    f"{key.name}: kept working after its caller gave up in {len(over)} calls "
                    f"(up to {_round_ms(max(over))} ms longer); its timeout is longer than the "
                    "caller's deadline — shorten it or propagate the deadline",
                    key.name,
                )
            )
    return out


def breaker_flapping(trees: Sequence[TraceTree]) -> list[Finding]:
    events: dict[HopKey, list[tuple[int, bool]]] = defaultdict(list)  # (start, rejected)
    for tree in trees:
        for node in tree.hops:
            if node.hop is None:
                continue
            if is_breaker_rejection(node.span):
                events[node.hop].append((node.span.start_us, True))
            elif not is_error(node.span):
                events[node.hop].append((node.span.start_us, False))
    out = []
    for key in sorted(events):
        seq = [rejected for _, rejected in sorted(events[key])]
        rejections = sum(seq)
        switches = sum(1 for a, b in itertools.pairwise(seq) if a != b)
        if rejections >= FLAP_MIN_REJECTIONS and switches >= FLAP_MIN_SWITCHES:
            out.append(
                Finding(
                    "breaker_flapping",
                    f"{key.name}: circuit breaker flapping — {rejections} rejections interleaved "
                    f"with successes ({switches} open/closed switches); raise minimum_requests or "
                    "reset_timeout, or fix the upstream",
                    key.name,
                )
            )
    return out


def error_rates(result: Diagnosis) -> list[Finding]:
    out = []
    for hop in result.hops:
        if hop.errors and hop.errors / hop.count >= ERROR_RATE:
            detail = []
            if hop.timeouts:
                detail.append(f"{hop.timeouts} timeouts")
            if hop.breaker_rejections:
                detail.append(f"{hop.breaker_rejections} breaker rejections")
            extra = f" ({', '.join(detail)})" if detail else ""
            out.append(
                Finding(
                    "errors",
                    f"{hop.name}: {pct(hop.errors / hop.count)} of calls failed "
                    f"({hop.errors} of {hop.count}){extra}",
                    hop.name,
                )
            )
    return out


def own_time(result: Diagnosis) -> list[Finding]:
    """When the operation's own service, not a downstream call, holds most of the path."""
    out = []
    if result.root_self_share_p99 > max((h.critical_share_p99 for h in result.hops), default=0):
        out.append(
            Finding(
                "own_time",
                f"{pct(result.root_self_share_p99)} of the p99 critical path is {result.service}'s "
                "own work, outside any downstream call",
                None,
            )
        )
    return out


def missing_links(result: Diagnosis) -> list[Finding]:
    cov = result.coverage
    if not cov.traces_with_missing_links:
        return []
    return [
        Finding(
            "missing_links",
            f"{cov.traces_with_missing_links} of {cov.traces_analysed} traces have missing links "
            f"({cov.orphan_spans} spans whose parent is absent): a service does not forward trace "
            "headers, or spans were dropped or not yet flushed",
            None,
        )
    ]
