"""The diagnosis for people (a rich table and findings) and for programs (`--json`, stable keys)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sidecar.diagnose.results import Diagnosis

JSON_VERSION = 1


def to_json_dict(d: Diagnosis) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "service": d.service,
        "operation": d.operation,
        "latency_ms": {
            "count": d.latency.count, "p50": d.latency.p50_ms, "p95": d.latency.p95_ms,
            "p99": d.latency.p99_ms, "max": d.latency.max_ms,
        },
        "own_critical_share": d.root_self_share,
        "own_critical_share_p99": d.root_self_share_p99,
        "hops": [{"name": h.name, **asdict(h)} for h in d.hops],
        "slowest_hop": asdict(d.slowest) if d.slowest is not None else None,
        "sequential_calls": [
            {"caller": s.caller, "stages": [list(st) for st in s.stages],
             "saving_ms_p50": s.saving_ms, "traces": s.traces, "message": s.finding.message}
            for s in d.sequential
        ],
        "findings": [asdict(f) for f in d.findings],
        "waterfalls": [
            {"label": w.label, "total_ms": w.total_ms, "traces": w.traces,
             "example_trace_id": w.example_trace_id, "bars": [asdict(b) for b in w.bars]}
            for w in d.waterfalls
        ],
        "coverage": asdict(d.coverage),
    }


def render_json(d: Diagnosis) -> str:
    return json.dumps(to_json_dict(d), indent=2)


def render_text(d: Diagnosis, console: Console) -> None:
    lat = d.latency
    console.print(Text.assemble(
        (f"{d.service} {d.operation}", "bold"),
        f"  {lat.count} traces  p50 {_ms(lat.p50_ms)}  p95 {_ms(lat.p95_ms)}  "
        f"p99 {_ms(lat.p99_ms)}  max {_ms(lat.max_ms)}",
    ))
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    longest = max((len(h.name) for h in d.hops), default=20)
    table.add_column("downstream hop", overflow="fold", min_width=min(longest, 48))
    for col in ("calls", "p50", "p99", "self p50", "crit p99", "crit all", "errors",
                "retries", "timeouts", "breaker"):
        table.add_column(col, justify="right", no_wrap=True)
    slowest = d.slowest.hop if d.slowest is not None else None
    for h in d.hops:
        table.add_row(
            Text(h.name + (" (async)" if h.async_calls == h.count else ""),
                 style="bold" if h.name == slowest else ""),
            str(h.count), _ms(h.p50_ms), _ms(h.p99_ms), _ms(h.self_p50_ms),
            _pct(h.critical_share_p99), _pct(h.critical_share),
            _n(h.errors), _n(h.retries), _n(h.timeouts), _n(h.breaker_rejections),
        )
    table.add_row(Text(f"{d.service} (own work)", style="dim"), "", "", "", "",
                  _pct(d.root_self_share_p99), _pct(d.root_self_share), "", "", "", "")
    console.print(table)
    console.print(Text("Findings", style="bold"))
    if not d.findings:
        console.print("  nothing stands out")
    for f in d.findings:
        console.print(Text(f"  - {f.message}"))
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


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


def _n(value: int) -> str:
    return str(value) if value else "-"
