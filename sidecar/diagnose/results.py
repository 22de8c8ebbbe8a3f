"""The diagnosis as data: what the text, JSON and HTML reports render. Frozen, plain values."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class HopStats:
    service: str
    operation: str
    count: int  # calls (each retry attempt counts)
    traces: int  # traces that made this call at least once
    p50_ms: float
    p99_ms: float
    self_p50_ms: float  # excluding the hop's own downstream calls
    critical_share: float  # of the critical path, over all traces (0..1)
    critical_share_p99: float  # over the slowest traces (duration >= p99)
    errors: int
    retries: int
    timeouts: int
    breaker_rejections: int
    async_calls: int  # FOLLOWS_FROM: nobody waited for them
    # Client span vs the callee's server span: time before the server started and after it
    # ended (network, queueing in the callee or its sidecar). p50 over the calls measured.
    gap_before_p50_ms: float = 0.0
    gap_after_p50_ms: float = 0.0
    gap_p50_ms: float = 0.0  # p50 of before + after
    gap_calls: int = 0  # calls with a server span to compare (clock-shifted ones excluded)

    @property
    def name(self) -> str:
        return f"{self.service} {self.operation}".strip()


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # slowest_hop | sequential_calls | repeated_calls | critical_path | hop_gap |
    #            retry_storm | timeout_exceeds_deadline | breaker_flapping | errors |
    #            own_time | missing_links
    message: str
    hop: str | None = None
    saving_ms: float | None = None  # what fixing it could save on the critical path, at p50
    path: tuple[str, ...] = ()  # where in the call tree: the operation, then hop names


@dataclass(frozen=True, slots=True)
class Pattern:
    """Calls made one after the other by one caller, anywhere in the call tree: different
    downstream operations (`sequential_calls`) or one operation N times (`repeated_calls`)."""

    caller: str  # the operation or hop making the calls
    stages: tuple[tuple[str, ...], ...]  # hop names; calls within a stage already overlap
    saving_ms: float  # p50 over the traces with the pattern, on the root's critical path
    traces: int
    finding: Finding
    kind: str = "sequential_calls"
    path: tuple[str, ...] = ()  # the operation, then the hops down to the caller
    hop: str | None = None  # repeated_calls: the operation called N times
    calls: int = 0  # repeated_calls: N, median per caller
    total_ms: float = 0.0  # p50 per trace of the time spent in these calls
    independent: bool = False  # traces show them overlap or change order

    @property
    def depth(self) -> int:
        return max(0, len(self.path) - 1)


SequentialCalls = Pattern  # the name of version 1, kept for callers


@dataclass(frozen=True, slots=True)
class ChainLink:
    hop: str  # hop name; the first link is the operation itself
    service: str
    calls: int  # median calls per caller (the 12 of "redis GetDriver x12")


@dataclass(frozen=True, slots=True)
class CriticalChain:
    """The critical path walked through nested services: at each level the call holding most
    of the caller's critical time, while it holds at least half of it."""

    links: tuple[ChainLink, ...]
    share: float  # of all traces' time, in the last link
    share_p99: float

    @property
    def text(self) -> str:
        names = [link.service for link in self.links[:-1]]
        last = self.links[-1]
        names.append(last.hop + (f" \u00d7{last.calls}" if last.calls > 1 else ""))
        return " \u2192 ".join(names)


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between the baseline window and now."""

    kind: str  # hop | pattern
    subject: str
    before_ms: float
    after_ms: float
    message: str
    before_calls: int = 0
    after_calls: int = 0

    @property
    def delta_ms(self) -> float:
        return round(self.after_ms - self.before_ms, 3)


@dataclass(frozen=True, slots=True)
class Comparison:
    baseline_traces: int
    baseline_p50_ms: float
    baseline_p99_ms: float
    changes: tuple[Change, ...]  # largest change first


@dataclass(frozen=True, slots=True)
class Bar:
    name: str
    offset_ms: float  # from the operation's start
    duration_ms: float
    depth: int  # 0 = the operation itself, 1 = its direct calls, ...
    critical: bool
    sequential: bool  # part of a sequential-calls finding
    calls: int  # median calls per trace (retries show as > 1)
    repeated: bool = False  # the operation of a repeated-calls (N+1) finding


@dataclass(frozen=True, slots=True)
class Waterfall:
    label: str  # "p50" | "p99"
    total_ms: float
    traces: int
    example_trace_id: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Coverage:
    traces_seen: int
    traces_analysed: int
    traces_without_operation: int
    traces_with_missing_links: int
    orphan_spans: int
    skew_adjusted_spans: int
    truncated_traces: int
    capped: bool


@dataclass(frozen=True, slots=True)
class Diagnosis:
    service: str
    operation: str
    latency: Latency
    hops: tuple[HopStats, ...]
    root_self_share: float
    root_self_share_p99: float
    slowest: Finding | None
    sequential: tuple[SequentialCalls, ...]
    findings: tuple[Finding, ...]
    waterfalls: tuple[Waterfall, ...]
    coverage: Coverage
    durations_ms: tuple[float, ...]
    repeated: tuple[Pattern, ...] = ()
    critical_chain: CriticalChain | None = None
    comparison: Comparison | None = None

    @property
    def name(self) -> str:
        return f"{self.service} {self.operation}"

    def with_findings(
        self,
        slowest: Finding | None,
        sequential: tuple[SequentialCalls, ...],
        findings: tuple[Finding, ...],
        waterfalls: tuple[Waterfall, ...],
        repeated: tuple[Pattern, ...] = (),
        critical_chain: CriticalChain | None = None,
    ) -> Diagnosis:
        return replace(
            self,
            slowest=slowest,
            sequential=sequential,
            findings=findings,
            waterfalls=waterfalls,
            repeated=repeated,
            critical_chain=critical_chain,
        )

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        """Sequential and repeated calls at every level, largest saving first."""
        return tuple(sorted((*self.sequential, *self.repeated), key=lambda p: -p.saving_ms))
