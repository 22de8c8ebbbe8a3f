"""Calls made one after the other, found under every caller in the call tree (the operation
itself and every hop below it), each with what fixing it could save on the operation's
critical path.

- *sequential calls*: one caller calls different operations, one starting after the other
  ended, in most of the traces where both happen;
- *repeated calls* (N+1): one caller calls the same operation N >= 3 times in a row.

A caller is identified by its path from the analysed operation (`bff GET /context` →
`driver /FindNearest`), so the same hop called from two places gives two callers.

The saving of one occurrence is what the critical path spent inside those calls, minus the
longest of them (it would still be waited for), never more than the calls' total minus the
longest: calls off the critical path save nothing; calls fully on it save everything but the
longest. Per trace the occurrences add up; the reported saving is the p50 over the traces
where the pattern occurs. Whether a call needs another's answer cannot be seen in a trace,
so the text says "may" unless the traces show the calls overlapping or in another order."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sidecar.diagnose.results import ChainLink, CriticalChain, Finding, Pattern
from sidecar.diagnose.signals import attempt
from sidecar.diagnose.stats import median, ms, percentile
from sidecar.diagnose.tree import HopKey, Node, TraceTree

OVERLAP_TOLERANCE_US = 100  # rounding of µs timestamps across hosts
SEQUENTIAL_MAJORITY = 0.8  # of the traces (or call pairs) where both calls happen
MIN_SAVING_MS = 1.0
MIN_REPEATS = 3  # two calls of one operation are often legitimate; three in a row rarely
MIN_PRESENCE = 0.1  # of the traces where the caller occurs
MAX_DEPTH = 64  # hops from the operation; patterns below are not looked for

Path = tuple[str, ...]


@dataclass(slots=True)
class Unit:
    """One logical call (retry attempts folded in) or, for sequential siblings, all calls of
    one operation by one caller: its interval and the critical time spent inside it."""

    start: int
    end: int
    crit: int

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Caller:
    """One caller instance in one trace, and its blocking calls grouped by operation."""

    trace: int
    path: Path
    calls: dict[HopKey, list[Unit]] = field(default_factory=dict)


def subtree_critical(tree: TraceTree, crit: dict[Node, int]) -> dict[Node, int]:
    """Critical µs spent in each node's subtree (nodes are listed parents first)."""
    out: dict[Node, int] = {n: crit.get(n, 0) for n in tree.nodes}
    for node in reversed(tree.nodes):
        if node.parent is not None and node is not tree.root:
            out[node.parent] += out[node]
    return out


def callers(tree: TraceTree, index: int, sub: dict[Node, int]) -> list[Caller]:
    """Every caller (the root and each hop) that makes blocking calls, with its calls."""
    root_name = f"{tree.root.span.service} {tree.root.span.operation}"
    paths: dict[Node | None, Path] = {None: (root_name,)}
    found: dict[Node | None, Caller] = {}
    for node in tree.hops:  # parents first, so an owner's path is known before its calls
        assert node.hop is not None
        owner_path = paths.get(node.owner) or _path(node.owner, paths, root_name)
        # Deeper than any real call tree: stop there rather than build ever longer paths.
        if len(owner_path) >= MAX_DEPTH:
            paths[node] = owner_path
            continue
        paths[node] = (*owner_path, node.hop.name)
        if not node.blocking:
            continue
        caller = found.get(node.owner)
        if caller is None:
            caller = found[node.owner] = Caller(index, owner_path)
        units = caller.calls.setdefault(node.hop, [])
        if attempt(node.span) > 1 and units:  # a retry continues the call it retries
            last = units[-1]
            last.end, last.crit = max(last.end, node.end), last.crit + sub[node]
        else:
            units.append(Unit(node.start, node.end, sub[node]))
    for caller in found.values():
        for units in caller.calls.values():
            units.sort(key=lambda u: u.start)
    return list(found.values())


def _path(owner: Node | None, paths: dict[Node | None, Path], root_name: str) -> Path:
    chain: list[str] = []
    while owner is not None and owner not in paths:
        assert owner.hop is not None
        chain.append(owner.hop.name)
        owner = owner.owner
    base = paths.get(owner, (root_name,))
    return (*base, *reversed(chain))


def _sequential(a: Unit, b: Unit) -> bool:
    first, second = (a, b) if a.start <= b.start else (b, a)
    return second.start >= first.end - OVERLAP_TOLERANCE_US


def _saving(units: Sequence[Unit]) -> int:
    if len(units) < 2:
        return 0
    total = sum(u.duration for u in units)
    longest = max(u.duration for u in units)
    return max(0, min(sum(u.crit for u in units) - longest, total - longest))


def _saving_ms_text(us: float) -> str:
    value = us / 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _where(path: Path) -> str:
    """ "bff → driver" for a nested caller: services name the path; full names are in JSON."""
    return " \u2192 ".join(p.split(" ", 1)[0] for p in path)


# ---------------------------------------------------------------- repeated calls (N+1)


@dataclass(slots=True)
class _Repeats:
    callers: set[int] = field(default_factory=set)  # traces where the caller occurs
    traces: set[int] = field(default_factory=set)
    counts: list[int] = field(default_factory=list)
    pairs: int = 0
    sequential_pairs: int = 0
    totals: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    savings: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def repeated_calls(all_callers: Sequence[Caller], traces: int) -> list[Pattern]:
    seen: dict[tuple[Path, HopKey], _Repeats] = defaultdict(_Repeats)
    caller_traces: dict[Path, set[int]] = defaultdict(set)
    for caller in all_callers:
        caller_traces[caller.path].add(caller.trace)
        for key, units in caller.calls.items():
            if len(units) < 2:
                continue
            rep = seen[(caller.path, key)]
            rep.traces.add(caller.trace)
            rep.counts.append(len(units))
            for a, b in itertools.pairwise(units):
                rep.pairs += 1
                rep.sequential_pairs += _sequential(a, b)
            rep.totals[caller.trace] += sum(u.duration for u in units)
            rep.savings[caller.trace] += _saving(units)
    out = []
    for (path, key), rep in seen.items():
        n = median(rep.counts)
        ratio = rep.sequential_pairs / (rep.pairs or 1)
        present = len(rep.traces) / max(1, len(caller_traces[path]))
        if n < MIN_REPEATS or ratio < SEQUENTIAL_MAJORITY or present < MIN_PRESENCE:
            continue
        saving = percentile(sorted(rep.savings.values()), 0.5)
        if ms(saving) < MIN_SAVING_MS:
            continue
        total = percentile(sorted(rep.totals.values()), 0.5)
        independent = rep.sequential_pairs < rep.pairs
        out.append(_repeated_pattern(path, key, n, total, saving, len(rep.traces), independent))
    return out


def _repeated_pattern(
    path: Path, key: HopKey, n: int, total: int, saving: int, traces: int, independent: bool
) -> Pattern:
    where = f"in {_where(path)}: " if len(path) > 1 else ""
    verb = "would" if independent else "may"
    message = (
        f"{where}{key.name} is called {n} times one after the other (N+1, "
        f"{_saving_ms_text(total)} ms in all); one batched call or concurrent calls {verb} save "
        f"~{_saving_ms_text(saving)} ms at p50"
    )
    if not independent:
        message += " if no call needs the previous one's answer"
    return Pattern(
        caller=path[-1],
        stages=((key.name,),),
        saving_ms=ms(saving),
        traces=traces,
        finding=Finding("repeated_calls", message, key.name, ms(saving), path),
        kind="repeated_calls",
        path=path,
        hop=key.name,
        calls=n,
        total_ms=ms(total),
        independent=independent,
    )


# ---------------------------------------------------------------- sequential siblings


@dataclass(slots=True)
class _Pair:
    both: int = 0
    sequential: int = 0
    a_first: int = 0
    b_first: int = 0


@dataclass(slots=True)
class _Context:
    traces: set[int] = field(default_factory=set)
    pairs: dict[tuple[HopKey, HopKey], _Pair] = field(default_factory=lambda: defaultdict(_Pair))
    offsets: dict[HopKey, list[int]] = field(default_factory=lambda: defaultdict(list))
    instances: list[tuple[int, dict[HopKey, Unit]]] = field(default_factory=list)


def sequential_calls(all_callers: Sequence[Caller], starts: Sequence[int]) -> list[Pattern]:
    """`starts[i]`: trace i's root start, for the median offsets that order the stages."""
    contexts: dict[Path, _Context] = defaultdict(_Context)
    for caller in all_callers:
        ctx = contexts[caller.path]
        ctx.traces.add(caller.trace)
        units = {key: _collapse(us) for key, us in caller.calls.items()}
        ctx.instances.append((caller.trace, units))
        for key, unit in units.items():
            ctx.offsets[key].append(unit.start - starts[caller.trace])
        keys = sorted(units)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if a.service == b.service:  # one service's operations often share state
                    continue
                pair = ctx.pairs[(a, b)]
                pair.both += 1
                ua, ub = units[a], units[b]
                if _sequential(ua, ub):
                    pair.sequential += 1
                    if ua.start <= ub.start:
                        pair.a_first += 1
                    else:
                        pair.b_first += 1
    out = []
    for path, ctx in contexts.items():
        found = _sequential_in(path, ctx)
        if found is not None:
            out.append(found)
    return out


def _collapse(units: Sequence[Unit]) -> Unit:
    return Unit(min(u.start for u in units), max(u.end for u in units), sum(u.crit for u in units))


def _sequential_in(path: Path, ctx: _Context) -> Pattern | None:
    callers = len(ctx.instances)
    seq_edges: list[tuple[HopKey, HopKey, _Pair]] = []
    concurrent_edges = []
    for (a, b), pair in ctx.pairs.items():
        if pair.both < max(1, callers // 2):
            continue
        ratio = pair.sequential / pair.both
        if ratio >= SEQUENTIAL_MAJORITY:
            seq_edges.append((a, b, pair))
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
    grouped: dict[HopKey, list[HopKey]] = defaultdict(list)
    for k in members:
        grouped[find(k)].append(k)
    if len(grouped) < 2:
        return None
    ordered = sorted(grouped.values(), key=lambda ks: min(median(ctx.offsets[k]) for k in ks))
    ordered = [sorted(ks, key=lambda k: median(ctx.offsets[k])) for ks in ordered]
    per_trace: dict[int, int] = defaultdict(int)
    totals: dict[int, int] = defaultdict(int)
    for trace, units in ctx.instances:
        stages = [
            _collapse([units[k] for k in ks if k in units])
            for ks in ordered
            if any(k in units for k in ks)
        ]
        if len(stages) >= 2:
            per_trace[trace] += _saving(stages)
            totals[trace] += max(s.end for s in stages) - min(s.start for s in stages)
    if not per_trace:
        return None
    saving = percentile(sorted(per_trace.values()), 0.5)
    if ms(saving) < MIN_SAVING_MS:
        return None
    independent = all(p.sequential < p.both or (p.a_first and p.b_first) for _, _, p in seq_edges)
    label = _labeller(members)
    if all(len(ks) == 1 for ks in ordered):
        names = [label(ks[0]) for ks in ordered]
        called = ", ".join(names[:-1]) + f" and {names[-1]}"
        text = f"{called} are called one after the other"
    else:
        text = " then ".join(" + ".join(label(k) for k in ks) for ks in ordered)
        text = f"{text} run one after the other (calls joined by + already overlap)"
    where = f"in {_where(path)}: " if len(path) > 1 else ""
    if independent:
        tail = f"concurrent would save ~{_saving_ms_text(saving)} ms at p50"
    else:
        tail = (
            f"concurrent may save ~{_saving_ms_text(saving)} ms at p50 if none needs "
            "another's answer"
        )
    message = f"{where}{text}; {tail}"
    return Pattern(
        caller=path[-1],
        stages=tuple(tuple(k.name for k in ks) for ks in ordered),
        saving_ms=ms(saving),
        traces=len(per_trace),
        finding=Finding("sequential_calls", message, None, ms(saving), path),
        kind="sequential_calls",
        path=path,
        total_ms=ms(percentile(sorted(totals.values()), 0.5)),
        independent=independent,
    )


def _labeller(keys: Sequence[HopKey]) -> Callable[[HopKey], str]:
    services = [k.service for k in keys]
    unique = len(set(services)) == len(services)

    def label(k: HopKey) -> str:
        return k.service if unique else k.name

    return label


# ---------------------------------------------------------------- the critical path, nested

CHAIN_MAJORITY = 0.5  # of the caller's critical time, for the walk to go one level deeper


def critical_chain(
    all_callers: Sequence[Caller], durations: Sequence[int], slow: set[int]
) -> CriticalChain | None:
    """From the operation down: the call holding most of its caller's critical time, while
    it holds at least half of it. `durations[i]` is trace i's duration; `slow` the p99 ones."""
    crit: dict[tuple[Path, HopKey], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[tuple[Path, HopKey], list[int]] = defaultdict(list)
    for caller in all_callers:
        for key, units in caller.calls.items():
            crit[(caller.path, key)][caller.trace] += sum(u.crit for u in units)
            counts[(caller.path, key)].append(len(units))
    root = next((c.path[:1] for c in all_callers), None)
    if root is None:
        return None
    path: Path = root
    budget = sum(durations)
    links = [ChainLink(root[0], root[0].split(" ", 1)[0], 1)]
    last: dict[int, int] = {}
    while True:
        options = [(sum(v.values()), key) for (p, key), v in crit.items() if p == path]
        if not options:
            break
        spent, key = max(options, key=lambda o: (o[0], o[1]))
        if spent <= 0 or spent < CHAIN_MAJORITY * budget:
            break
        last = crit[(path, key)]
        links.append(ChainLink(key.name, key.service, median(counts[(path, key)])))
        path, budget = (*path, key.name), spent
        if len(links) > 64:  # a pathological recursion in the data
            break
    if len(links) < 2:
        return None
    total = sum(durations) or 1
    total_slow = sum(durations[i] for i in slow) or 1
    return CriticalChain(
        links=tuple(links),
        share=round(sum(last.values()) / total, 4),
        share_p99=round(sum(v for t, v in last.items() if t in slow) / total_slow, 4),
    )
