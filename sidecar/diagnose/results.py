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

    @property
    def name(self) -> str:
        return f"{self.service} {self.operation}".strip()


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # slowest_hop | sequential_calls | retry_storm | timeout_exceeds_deadline |
    #            breaker_flapping | errors | missing_links
    message: str
    hop: str | None = None


@dataclass(frozen=True, slots=True)
class SequentialCalls:
    caller: str  # the span whose children these are
    stages: tuple[tuple[str, ...], ...]  # hop names; calls within a stage already overlap
    saving_ms: float  # at p50, if every stage ran concurrently
    traces: int
    finding: Finding


@dataclass(frozen=True, slots=True)
class Bar:
    name: str
    offset_ms: float  # from the operation's start
    duration_ms: float
    depth: int  # 0 = the operation itself, 1 = its direct calls, ...
    critical: bool
    sequential: bool  # part of a sequential-calls finding
    calls: int  # median calls per trace (retries show as > 1)


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

    @property
    def name(self) -> str:
        return f"{self.service} {self.operation}"

    def with_findings(
        self,
        slowest: Finding | None,
        sequential: tuple[SequentialCalls, ...],
        findings: tuple[Finding, ...],
        waterfalls: tuple[Waterfall, ...],
    ) -> Diagnosis:
        return replace(
            self, slowest=slowest, sequential=sequential, findings=findings,
            waterfalls=waterfalls,
        )
