"""Latency diagnosis of one operation over many traces. Pure functions: traces in,
a `Diagnosis` out; no I/O, no clocks. Work is bounded: at most MAX_TRACES traces and
tree.MAX_SPANS_PER_TRACE spans each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.diagnose import findings, patterns
from sidecar.diagnose.critical import critical_time
from sidecar.diagnose.model import Trace
from sidecar.diagnose.results import (
    Coverage,
    Diagnosis,
    Finding,
    HopStats,
    Latency,
)
from sidecar.diagnose.signals import attempt, is_breaker_rejection, is_error, is_timeout
from sidecar.diagnose.stats import ms, percentile
from sidecar.diagnose.tree import (
    HopKey,
    Node,
    TraceTree,
    build_tree,
    find_root,
    operation_matcher,
)
from sidecar.diagnose.waterfall import waterfalls

MAX_TRACES = 2000


class NoMatchingTraces(LookupError):
    """No trace holds a span of the service and operation asked for."""


@dataclass(frozen=True, slots=True)
class Call:
    """One hop instance (one attempt) in one trace."""

    node: Node
    key: HopKey
    duration: int
    self_time: int


def diagnose(traces: Sequence[Trace], service: str, operation: str | None) -> Diagnosis:
    op = operation or _most_common_entry_operation(traces, service)
    matches = operation_matcher(op)
    trees: list[TraceTree] = []
    without_root = 0
    for trace in traces:
        if len(trees) >= MAX_TRACES:
            break
        root = find_root(trace, service, matches)
        if root is None:
            without_root += 1
            continue
        trees.append(build_tree(trace, root))
    if not trees:
        raise NoMatchingTraces(
            f"none of {len(traces)} traces has a span of service {service!r} with operation {op!r}"
        )
    _name_childless_attempts(trees)
    durations = sorted(t.duration for t in trees)
    p99 = percentile(durations, 0.99)
    slow = [t for t in trees if t.duration >= p99]
    slow_ids = {id(t) for t in slow}
    crit = [critical_time(t) for t in trees]
    calls = [_calls(t) for t in trees]

    hops = _hop_stats(trees, calls, crit, slow_ids=slow_ids)
    operations = sorted({t.root.span.operation for t in trees})
    result = Diagnosis(
        service=service,
        operation=operations[0] if len(operations) == 1 else op,
        latency=Latency(
            count=len(durations),
            p50_ms=ms(percentile(durations, 0.50)),
            p95_ms=ms(percentile(durations, 0.95)),
            p99_ms=ms(p99),
            max_ms=ms(durations[-1]),
        ),
        hops=hops,
        root_self_share=_share(
            [c.get(t.root, 0) + _unowned(t, c) for t, c in zip(trees, crit, strict=True)],
            [t.duration for t in trees],
        ),
        root_self_share_p99=_share(
            [
                c.get(t.root, 0) + _unowned(t, c)
                for t, c in zip(trees, crit, strict=True)
                if t.duration >= p99
            ],
            [t.duration for t in slow],
        ),
        slowest=None,
        sequential=(),
        findings=(),
        waterfalls=(),
        coverage=Coverage(
            traces_seen=len(traces),
            traces_analysed=len(trees),
            traces_without_operation=without_root,
            traces_with_missing_links=sum(1 for t in trees if t.orphans),
            orphan_spans=sum(t.orphans for t in trees),
            skew_adjusted_spans=sum(t.skew_adjusted for t in trees),
            truncated_traces=sum(1 for t in trees if t.truncated),
            capped=len(trees) >= MAX_TRACES and without_root + len(trees) < len(traces),
        ),
        durations_ms=tuple(ms(d) for d in durations),
    )
    subs = [patterns.subtree_critical(t, c) for t, c in zip(trees, crit, strict=True)]
    callers = [
        c
        for i, (t, sub) in enumerate(zip(trees, subs, strict=True))
        for c in patterns.callers(t, i, sub)
    ]
    sequential = patterns.sequential_calls(callers, [t.root.start for t in trees])
    repeated = patterns.repeated_calls(callers, len(trees))
    chain = patterns.critical_chain(
        callers, [t.duration for t in trees], {i for i, t in enumerate(trees) if id(t) in slow_ids}
    )
    slowest = findings.slowest_hop(result)
    notes: list[Finding] = [f for f in (slowest,) if f is not None]
    notes += findings.critical_path(chain)
    ranked = sorted([*sequential, *repeated], key=lambda p: (-p.saving_ms * p.traces, p.path))
    notes += [p.finding for p in ranked]
    notes += findings.hop_gaps(result)
    notes += findings.retry_storms(trees, [[c.node for c in cs] for cs in calls])
    notes += findings.deadline_overruns(trees)
    notes += findings.breaker_flapping(trees)
    notes += findings.error_rates(result)
    notes += findings.own_time(result)
    notes += findings.missing_links(result)
    sequential.sort(key=lambda p: -p.saving_ms)
    repeated.sort(key=lambda p: -p.saving_ms)
    return result.with_findings(
        slowest=slowest,
        sequential=tuple(sequential),
        findings=tuple(notes),
        waterfalls=waterfalls(trees, crit, p99, ranked),
        repeated=tuple(repeated),
        critical_chain=chain,
    )


def _most_common_entry_operation(traces: Iterable[Trace], service: str) -> str:
    """Without --operation: the service's most frequent entry span (called from elsewhere)."""
    counts: dict[str, int] = defaultdict(int)
    for trace in traces:
        by_id = {s.span_id: s for s in trace.spans}
        for s in trace.spans:
            parent = by_id.get(s.parent_id or "")
            if s.service == service and (parent is None or parent.service != service):
                counts[s.operation] += 1
    if not counts:
        raise NoMatchingTraces(f"no trace has a span of service {service!r}")
    return max(sorted(counts), key=lambda op: counts[op])


def _name_childless_attempts(trees: list[TraceTree]) -> None:
    """An attempt that never reached its callee (refused, timed out before the server span)
    has only the client's operation; name it like its siblings that did arrive."""
    seen: dict[tuple[str, str], str] = {}
    for tree in trees:
        for node in tree.hops:
            hop = node.hop
            if node.raw_operation and hop is not None and hop.operation != node.raw_operation:
                seen[(hop.service, node.raw_operation)] = hop.operation
    for tree in trees:
        for node in tree.hops:
            if node.hop is not None and node.hop.operation == node.raw_operation:
                named = seen.get((node.hop.service, node.raw_operation))
                if named is not None:
                    node.hop = HopKey(node.hop.service, named)


def _calls(tree: TraceTree) -> list[Call]:
    nested: dict[Node, list[Node]] = defaultdict(list)
    for node in tree.hops:
        if node.owner is not None:
            nested[node.owner].append(node)
    out = []
    for node in tree.hops:
        assert node.hop is not None
        covered = _union((max(n.start, node.start), min(n.end, node.end)) for n in nested[node])
        duration = node.end - node.start
        out.append(Call(node, node.hop, duration, max(0, duration - covered)))
    return out


def _union(intervals: Iterable[tuple[int, int]]) -> int:
    total, cur_start, cur_end = 0, None, 0
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if cur_start is None or start > cur_end:
            if cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None:
        total += cur_end - cur_start
    return total


def _unowned(tree: TraceTree, crit: dict[Node, int]) -> int:
    """Critical time in the root service's own spans below the root (not inside any hop)."""
    root = tree.root
    return sum(v for n, v in crit.items() if n is not root and n.hop is None and n.owner is None)


def _owned_critical(tree: TraceTree, crit: dict[Node, int]) -> dict[HopKey, int]:
    out: dict[HopKey, int] = defaultdict(int)
    for node, spent in crit.items():
        owner = node if node.hop is not None else node.owner
        if owner is not None and owner.hop is not None:
            out[owner.hop] += spent
    return out


def _hop_stats(
    trees: list[TraceTree],
    calls: list[list[Call]],
    crit: list[dict[Node, int]],
    slow_ids: set[int],
) -> tuple[HopStats, ...]:
    per_key: dict[HopKey, list[Call]] = defaultdict(list)
    traces_with: dict[HopKey, int] = defaultdict(int)
    crit_all: dict[HopKey, int] = defaultdict(int)
    crit_slow: dict[HopKey, int] = defaultdict(int)
    for tree, tree_calls, tree_crit in zip(trees, calls, crit, strict=True):
        for call in tree_calls:
            per_key[call.key].append(call)
        for key in {c.key for c in tree_calls}:
            traces_with[key] += 1
        for key, spent in _owned_critical(tree, tree_crit).items():
            crit_all[key] += spent
            if id(tree) in slow_ids:
                crit_slow[key] += spent
    total_all = sum(t.duration for t in trees) or 1
    total_slow = sum(t.duration for t in trees if id(t) in slow_ids) or 1
    stats = []
    for key, key_calls in per_key.items():
        durations = sorted(c.duration for c in key_calls)
        selfs = sorted(c.self_time for c in key_calls)
        spans = [c.node.span for c in key_calls]
        gaps = [g for g in (_gap(c.node) for c in key_calls) if g is not None]
        stats.append(
            HopStats(
                service=key.service,
                operation=key.operation,
                count=len(key_calls),
                traces=traces_with[key],
                p50_ms=ms(percentile(durations, 0.50)),
                p99_ms=ms(percentile(durations, 0.99)),
                self_p50_ms=ms(percentile(selfs, 0.50)),
                critical_share=round(crit_all[key] / total_all, 4),
                critical_share_p99=round(crit_slow[key] / total_slow, 4),
                errors=sum(1 for s in spans if is_error(s)),
                retries=sum(1 for s in spans if attempt(s) > 1),
                timeouts=sum(1 for s in spans if is_timeout(s)),
                breaker_rejections=sum(1 for s in spans if is_breaker_rejection(s)),
                async_calls=sum(1 for c in key_calls if not c.node.blocking),
                gap_before_p50_ms=ms(percentile(sorted(b for b, _ in gaps), 0.5)),
                gap_after_p50_ms=ms(percentile(sorted(a for _, a in gaps), 0.5)),
                gap_p50_ms=ms(percentile(sorted(b + a for b, a in gaps), 0.5)),
                gap_calls=len(gaps),
            )
        )
    stats.sort(key=lambda h: (-h.critical_share_p99, -h.critical_share, h.service, h.operation))
    return tuple(stats)


def _gap(node: Node) -> tuple[int, int] | None:
    """µs between the client span's start and the callee's server span's start, and between
    the server span's end and the client's end. Not for spans shifted for clock skew: their
    offsets were made up to fit."""
    callee = node.callee
    if callee is None or callee.skewed or node.skewed:
        return None
    return max(0, callee.start - node.start), max(0, node.end - callee.end)


def _share(parts: list[int], totals: list[int]) -> float:
    return round(sum(parts) / (sum(totals) or 1), 4)
