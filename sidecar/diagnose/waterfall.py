"""The typical (p50) and slow (p99) shape of the operation: one bar per hop on a shared time
axis, each bar the median over the traces of that latency class."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sidecar.diagnose.results import Bar, SequentialCalls, Waterfall
from sidecar.diagnose.stats import median, ms
from sidecar.diagnose.tree import HopKey, Node, TraceTree

MIN_PRESENCE = 0.1  # hops seen in fewer traces of the class are noise in a typical shape


def waterfalls(
    trees: Sequence[TraceTree],
    crit: Sequence[dict[Node, int]],
    p99: int,
    sequential: Sequence[SequentialCalls],
) -> tuple[Waterfall, ...]:
    in_sequence = {name for s in sequential for stage in s.stages for name in stage}
    repeated = {s.hop for s in sequential if s.kind == "repeated_calls" and s.hop}
    pairs = list(zip(trees, crit, strict=True))
    slow = [(t, c) for t, c in pairs if t.duration >= p99]
    return (
        _shape("p50", pairs, in_sequence, repeated),
        _shape("p99", slow, in_sequence, repeated),
    )


def _shape(
    label: str,
    pairs: Sequence[tuple[TraceTree, dict[Node, int]]],
    in_sequence: set[str],
    repeated: set[str],
) -> Waterfall:
    offsets: dict[HopKey, list[int]] = defaultdict(list)
    durations: dict[HopKey, list[int]] = defaultdict(list)
    calls: dict[HopKey, list[int]] = defaultdict(list)
    on_path: dict[HopKey, int] = defaultdict(int)
    depth: dict[HopKey, int] = {}
    for tree, crit in pairs:
        spans: dict[HopKey, tuple[int, int, int]] = {}
        critical: set[HopKey] = set()
        for node, spent in crit.items():
            owner = node if node.hop is not None else node.owner
            if spent > 0 and owner is not None and owner.hop is not None:
                critical.add(owner.hop)
        for node in tree.hops:
            assert node.hop is not None
            prev = spans.get(node.hop)
            start, end = node.start, node.end
            if prev is not None:
                start, end = min(prev[0], start), max(prev[1], end)
            spans[node.hop] = (start, end, (prev[2] if prev else 0) + 1)
            depth.setdefault(node.hop, _depth(node))
        for key, (start, end, n) in spans.items():
            offsets[key].append(start - tree.root.start)
            durations[key].append(end - start)
            calls[key].append(n)
            on_path[key] += key in critical
    total = median([t.duration for t, _ in pairs]) if pairs else 0
    example = min(pairs, key=lambda p: abs(p[0].duration - total))[0] if pairs else None
    bars = []
    if example is not None:
        root = example.root.span
        bars.append(Bar(f"{root.service} {root.operation}", 0.0, ms(total), 0, True, False, 1))
    for key in offsets:
        if len(offsets[key]) < MIN_PRESENCE * len(pairs):
            continue
        bars.append(
            Bar(
                name=key.name,
                offset_ms=ms(median(offsets[key])),
                duration_ms=ms(median(durations[key])),
                depth=depth[key],
                critical=on_path[key] * 2 >= len(offsets[key]),
                sequential=key.name in in_sequence,
                calls=median(calls[key]),
                repeated=key.name in repeated,
            )
        )
    bars.sort(key=lambda b: (b.depth > 0, b.offset_ms, b.depth, b.name))
    return Waterfall(
        label=label,
        total_ms=ms(total),
        traces=len(pairs),
        example_trace_id=example.trace_id if example is not None else "",
        bars=tuple(bars),
    )


def _depth(node: Node) -> int:
    d, owner = 1, node.owner
    while owner is not None:
        d, owner = d + 1, owner.owner
    return d
