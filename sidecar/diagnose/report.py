"""The diagnosis for people (a rich table and findings) and for programs (`--json`, stable keys)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sidecar.diagnose.results import Comparison, CriticalChain, Diagnosis, HopStats, Pattern

JSON_VERSION = 1


def to_json_dict(d: Diagnosis) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "service": d.service,
        "operation": d.operation,
        "latency_ms": {
            "count": d.latency.count,
            "p50": d.latency.p50_ms,
            "p95": d.latency.p95_ms,
            "p99": d.latency.p99_ms,
            "max": d.latency.max_ms,
        },
        "own_critical_share": d.root_self_share,
        "own_critical_share_p99": d.root_self_share_p99,
        "hops": [{"name": h.name, **asdict(h)} for h in d.hops],
        "slowest_hop": asdict(d.slowest) if d.slowest is not None else None,
        "sequential_calls": [_pattern_json(s) for s in d.sequential],
        "repeated_calls": [_pattern_json(s) for s in d.repeated],
        "critical_path": _chain_json(d.critical_chain),
        "findings": [asdict(f) for f in d.findings],
        "waterfalls": [
            {
                "label": w.label,
                "total_ms": w.total_ms,
                "traces": w.traces,
                "example_trace_id": w.example_trace_id,
                "bars": [asdict(b) for b in w.bars],
            }
            for w in d.waterfalls
        ],
        "coverage": asdict(d.coverage),
        "baseline": _comparison_json(d.comparison),
    }


def _pattern_json(p: Pattern) -> dict[str, Any]:
    return {
        "caller": p.caller,
        "stages": [list(st) for st in p.stages],
        "saving_ms_p50": p.saving_ms,
        "traces": p.traces,
        "message": p.finding.message,
        "kind": p.kind,
        "path": list(p.path),
        "depth": p.depth,
        "hop": p.hop,
        "calls": p.calls,
        "total_ms_p50": p.total_ms,
        "independent": p.independent,
    }


def _chain_json(c: CriticalChain | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "text": c.text,
        "links": [asdict(link) for link in c.links],
        "share": c.share,
        "share_p99": c.share_p99,
    }


def _comparison_json(c: Comparison | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "traces": c.baseline_traces,
        "p50_ms": c.baseline_p50_ms,
        "p99_ms": c.baseline_p99_ms,
        "changes": [{**asdict(ch), "delta_ms": ch.delta_ms} for ch in c.changes],
    }


def render_json(d: Diagnosis) -> str:
    return json.dumps(to_json_dict(d), indent=2)


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    cell: Callable[[HopStats], str]
    keep: int  # the higher, the later it is dropped when the width runs out


_COLUMNS = (
    _Column("calls", lambda h: str(h.count), 3),
    _Column("p50", lambda h: _ms(h.p50_ms), 9),
    _Column("p99", lambda h: _ms(h.p99_ms), 6),
    _Column("self p50", lambda h: _ms(h.self_p50_ms), 4),
    _Column("gap p50", lambda h: _ms(h.gap_p50_ms) if h.gap_calls else "-", 5),
    _Column("crit p99", lambda h: _pct(h.critical_share_p99), 10),
    _Column("crit all", lambda h: _pct(h.critical_share), 7),
    _Column("errors", lambda h: _n(h.errors), 8),
    _Column("retries", lambda h: _n(h.retries), 2),
    _Column("timeouts", lambda h: _n(h.timeouts), 1),
    _Column("breaker", lambda h: _n(h.breaker_rejections), 0),
)
_OWN_WORK = {"crit p99", "crit all"}  # the only cells of the "(own work)" row
_SEPARATOR = 3  # " │ " between columns


def _fitting_columns(d: Diagnosis, width: int) -> list[_Column]:
    """The hop name is what the reader needs: below the width the full table takes, numeric
    columns go (empty ones first, then the least telling) before the name is wrapped."""
    names = [_hop_label(h) for h in d.hops] + [f"{d.service} (own work)"]
    longest = max(len(n) for n in names)
    widths = {c.header: max([len(c.header)] + [len(c.cell(h)) for h in d.hops]) for c in _COLUMNS}
    empty = {
        c.header
        for c in _COLUMNS
        if c.header not in _OWN_WORK and all(c.cell(h) in ("-", "") for h in d.hops)
    }
    kept = list(_COLUMNS)
    drop_order = sorted(kept, key=lambda c: (c.header not in empty, c.keep))
    for col in drop_order:
        if longest + sum(widths[c.header] + _SEPARATOR for c in kept) <= width or len(kept) <= 2:
            break
        kept.remove(col)
    return kept


def render_text(d: Diagnosis, console: Console) -> None:
    lat = d.latency
    console.print(
        Text.assemble(
            (f"{d.service} {d.operation}", "bold"),
            f"  {lat.count} traces  p50 {_ms(lat.p50_ms)}  p95 {_ms(lat.p95_ms)}  "
            f"p99 {_ms(lat.p99_ms)}  max {_ms(lat.max_ms)}",
        )
    )
    columns = _fitting_columns(d, console.width)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("downstream hop", overflow="fold", ratio=1)
    for col in columns:
        table.add_column(col.header, justify="right", no_wrap=True)
    slowest = d.slowest.hop if d.slowest is not None else None
    for h in d.hops:
        table.add_row(
            Text(_hop_label(h), style="bold" if h.name == slowest else ""),
            *(col.cell(h) for col in columns),
        )
    own = {"crit p99": _pct(d.root_self_share_p99), "crit all": _pct(d.root_self_share)}
    table.add_row(
        Text(f"{d.service} (own work)", style="dim"), *(own.get(col.header, "") for col in columns)
    )
    console.print(table)
    if len(columns) < len(_COLUMNS):
        hidden = ", ".join(c.header for c in _COLUMNS if c not in columns)
        console.print(
            Text(f"(narrow output: {hidden} not shown; --json has every column)", style="dim")
        )
    console.print(Text("Findings", style="bold"))
    if not d.findings:
        console.print("  nothing stands out")
    for f in d.findings:
        console.print(Text(f"  - {f.message}"))
    if d.comparison is not None:
        _render_comparison(d, d.comparison, console)
    cov = d.coverage
    notes = [f"{cov.traces_analysed} of {cov.traces_seen} traces analysed"]
    if cov.skew_adjusted_spans:
        notes.append(f"{cov.skew_adjusted_spans} spans shifted for clock skew")
    if cov.truncated_traces:
        notes.append(f"{cov.truncated_traces} huge traces truncated")
    if cov.capped:
        notes.append("trace count capped")
    for w in d.waterfalls:
        if w.example_trace_id:
            notes.append(f"{w.label} example trace {w.example_trace_id}")
    console.print(Text("  ".join(notes), style="dim"))


def _render_comparison(d: Diagnosis, c: Comparison, console: Console) -> None:
    lat = d.latency
    console.print(
        Text.assemble(
            ("Compared with the baseline", "bold"),
            f"  {c.baseline_traces} traces  p50 {_ms(c.baseline_p50_ms)} → {_ms(lat.p50_ms)}  "
            f"p99 {_ms(c.baseline_p99_ms)} → {_ms(lat.p99_ms)}",
        )
    )
    if not c.changes:
        console.print("  no hop or pattern changed by more than the noise")
    for ch in c.changes:
        console.print(Text(f"  - {ch.message}"))


def _hop_label(h: HopStats) -> str:
    return h.name + (" (async)" if h.async_calls == h.count else "")


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


def _n(value: int) -> str:
    return str(value) if value else "-"
