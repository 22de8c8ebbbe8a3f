"""The findings of a diagnosis, each one sentence a person can act on. Pure functions over the
normalised trace trees and the aggregated hop statistics."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sidecar.diagnose.results import Diagnosis, Finding, SequentialCalls
from sidecar.diagnose.signals import (
    attempt,
    deadline_ms,
    is_breaker_rejection,
    is_error,
    is_timeout,
    timeout_ms,
)
from sidecar.diagnose.stats import median, ms, percentile
from sidecar.diagnose.tree import HopKey, Node, TraceTree

OVERLAP_TOLERANCE_US = 100  # rounding of µs timestamps across hosts
SEQUENTIAL_MAJORITY = 0.8  # of the traces where both calls happen
MIN_SAVING_MS = 1.0
RETRY_STORM_RATIO = 0.25  # retries per first attempt; the default retry budget allows 0.2
ERROR_RATE = 0.05
FLAP_MIN_REJECTIONS, FLAP_MIN_SWITCHES = 3, 4

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


@dataclass(slots=True)
class _Pair:
    both: int = 0
    sequential: int = 0


@dataclass(slots=True)
class _Context:
    traces: int = 0
    pairs: dict[tuple[HopKey, HopKey], _Pair] = field(default_factory=lambda: defaultdict(_Pair))
    durations: dict[HopKey, list[int]] = field(default_factory=lambda: defaultdict(list))
    offsets: dict[HopKey, list[int]] = field(default_factory=lambda: defaultdict(list))


def sequential_calls(trees: Sequence[TraceTree], result: Diagnosis) -> list[SequentialCalls]:
    """Calls from the same caller to different services where one starts only after the other
    has ended, in most traces. Different services is the heuristic for "independent"; the
    saving assumes each stage's calls would then overlap: sum of stage p50s - the largest."""
    contexts: dict[Context, _Context] = defaultdict(_Context)
    for tree in trees:
        for ctx_key, spans in _collapsed_calls(tree).items():
            ctx = contexts[ctx_key]
            ctx.traces += 1
            for key, (start, end) in spans.items():
                ctx.durations[key].append(end - start)
                ctx.offsets[key].append(start - tree.root.start)
            keys = sorted(spans)
            for i, a in enumerate(keys):
                for b in keys[i + 1:]:
                    if a.service == b.service:
                        continue
                    pair = ctx.pairs[(a, b)]
                    pair.both += 1
                    first, second = sorted((spans[a], spans[b]))
                    pair.sequential += second[0] >= first[1] - OVERLAP_TOLERANCE_US
    out = []
    for ctx_key, ctx in contexts.items():
        found = _sequential_in(ctx_key, ctx, result)
        if found is not None:
            out.append(found)
    out.sort(key=lambda s: -s.saving_ms)
    return out


def _collapsed_calls(tree: TraceTree) -> dict[Context, dict[HopKey, tuple[int, int]]]:
    """Per caller, each blocking hop as one interval: first attempt's start to last's end."""
    out: dict[Context, dict[HopKey, tuple[int, int]]] = defaultdict(dict)
    for node in tree.hops:
        if node.hop is None or not node.blocking:
            continue
        ctx = node.owner.hop if node.owner is not None else None
        prev = out[ctx].get(node.hop)
        start, end = node.start, node.end
        if prev is not None:
            start, end = min(prev[0], start), max(prev[1], end)
        out[ctx][node.hop] = (start, end)
    return out


def _sequential_in(ctx_key: Context, ctx: _Context, result: Diagnosis) -> SequentialCalls | None:
    seq_edges, concurrent_edges = [], []
    for (a, b), pair in ctx.pairs.items():
        if pair.both < max(1, ctx.traces // 2):
            continue
        ratio = pair.sequential / pair.both
        if ratio >= SEQUENTIAL_MAJORITY:
            seq_edges.append((a, b, pair.both))
        elif ratio <= 1 - SEQUENTIAL_MAJORITY:
            concurrent_edges.append((a, b))
    if not seq_edges:
        return None
    members = sorted({k for a, b, _ in seq_edges for k in (a, b)})
    stage_of = {k: k for k in members}

    def find(k: HopKey) -> HopKey:
        while stage_of[k] != k:
            k = stage_of[k]
        return k

    for a, b in concurrent_edges:
        if a in stage_of and b in stage_of:
            stage_of[find(a)] = find(b)
    stages: dict[HopKey, list[HopKey]] = defaultdict(list)
    for k in members:
        stages[find(k)].append(k)
    if len(stages) < 2:
        return None
    p50 = {k: percentile(sorted(ctx.durations[k]), 0.5) for k in members}
    ordered = sorted(stages.values(), key=lambda ks: min(median(ctx.offsets[k]) for k in ks))
    saving = sum(max(p50[k] for k in ks) for ks in ordered) - max(p50.values())
    if ms(saving) < MIN_SAVING_MS:
        return None
    ordered = [sorted(ks, key=lambda k: median(ctx.offsets[k])) for ks in ordered]
    label = _labeller(members)
    caller = ctx_key.name if ctx_key is not None else result.name
    if all(len(ks) == 1 for ks in ordered):
        names = [label(ks[0]) for ks in ordered]
        called = ", ".join(names[:-1]) + f" and {names[-1]}"
        text = f"{called} are called one after the other"
    else:
        text = " then ".join(" + ".join(label(k) for k in ks) for ks in ordered)
        text = f"{text} run one after the other (calls joined by + already overlap)"
    message = f"{text}; concurrent would save ~{_round_ms(saving)} ms at p50"
    return SequentialCalls(
        caller=caller,
        stages=tuple(tuple(k.name for k in ks) for ks in ordered),
        saving_ms=ms(saving),
        traces=max(n for _, _, n in seq_edges),
        finding=Finding("sequential_calls", message, None),
    )


def _labeller(keys: Sequence[HopKey]) -> Callable[[HopKey], str]:
    services = [k.service for k in keys]
    unique = len(set(services)) == len(services)

    def label(k: HopKey) -> str:
        return k.service if unique else k.name

    return label


def _round_ms(us: int) -> str:
    value = us / 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


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
            out.append(Finding(
                "retry_storm",
                f"{key.name}: retry storm — {1 + ratio:.1f} attempts per call, up to "
                f"{worst[key]} in one request ({retries[key]} retries for {calls} calls); "
                "lower retries.attempts or budget_ratio, or fix the failing upstream",
                key.name,
            ))
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
            out.append(Finding(
                "timeout_exceeds_deadline",
                f"{key.name}: timeout {limit:.0f} ms is longer than the caller's remaining "
                f"deadline {given:.0f} ms in {len(configured[key])} calls",
                key.name,
            ))
        if key in kept:
            over = kept[key]
            out.append(Finding(
                "timeout_exceeds_deadline",
                f"{key.name}: kept working after its caller gave up in {len(over)} calls "
                f"(up to {_round_ms(max(over))} ms longer); its timeout is longer than the "
                "caller's deadline — shorten it or propagate the deadline",
                key.name,
            ))
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
            out.append(Finding(
                "breaker_flapping",
                f"{key.name}: circuit breaker flapping — {rejections} rejections interleaved "
                f"with successes ({switches} open/closed switches); raise minimum_requests or "
                "reset_timeout, or fix the upstream",
                key.name,
            ))
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
            out.append(Finding(
                "errors",
                f"{hop.name}: {pct(hop.errors / hop.count)} of calls failed "
                f"({hop.errors} of {hop.count}){extra}",
                hop.name,
            ))
    return out


def own_time(result: Diagnosis) -> list[Finding]:
    """When the operation's own service, not a downstream call, holds most of the path."""
    out = []
    if result.root_self_share_p99 > max((h.critical_share_p99 for h in result.hops), default=0):
        out.append(Finding(
            "own_time",
            f"{pct(result.root_self_share_p99)} of the p99 critical path is {result.service}'s "
            "own work, outside any downstream call",
            None,
        ))
    return out


def missing_links(result: Diagnosis) -> list[Finding]:
    cov = result.coverage
    if not cov.traces_with_missing_links:
        return []
    return [Finding(
        "missing_links",
        f"{cov.traces_with_missing_links} of {cov.traces_analysed} traces have missing links "
        f"({cov.orphan_spans} spans whose parent is absent): a service does not forward trace "
        "headers, or spans were dropped or not yet flushed",
        None,
    )]
