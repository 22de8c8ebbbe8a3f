"""A snapshot for people (a rich table) and for programs (`--json`, stable keys)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sidecar.top.model import Row, Snapshot

JSON_VERSION = 1
KIND_LABEL = {
    "upstream": "out",
    "inbound": "in",
    "route": "route",
    "rpc_out": "grpc out",
    "rpc_in": "grpc in",
}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    if ms >= 1000:
        return f"{seconds:.2f}s"
    return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _success(rate: float | None) -> Text:
    if rate is None:
        return Text("-", style="dim")
    style = "green" if rate >= 0.99 else "yellow" if rate >= 0.95 else "bold red"
    return Text(f"{rate * 100:.2f}%" if rate < 1 else "100%", style=style)


def _breaker(state: str | None) -> Text:
    if state is None:
        return Text("-", style="dim")
    style = {"open": "bold red", "half_open": "yellow"}.get(state, "green")
    return Text(state.replace("_", "-"), style=style)


def _ejected(row: Row) -> Text:
    if row.endpoints_ejected is None:
        return Text("-", style="dim")
    total = row.endpoints_ejected + (row.endpoints_healthy or 0)
    style = "yellow" if row.endpoints_ejected else ""
    if total and row.endpoints_ejected == total:
        style = "bold red"
    return Text(f"{row.endpoints_ejected}/{total}", style=style)


def _grpc_status(row: Row) -> Text:
    if row.grpc_status is None:
        return Text("")
    if not row.grpc_status:
        return Text("-", style="dim")
    text = Text()
    for i, (name, rps) in enumerate(row.grpc_status):
        if i:
            text.append(" · ")
        text.append(f"{name} {_rate(rps)}", style="" if name == "OK" else "yellow")
    return text


def _sidecar_names(snapshot: Snapshot) -> dict[str, str]:
    """Rows name their sidecar by service; by admin address too when two share a service."""
    services: dict[str, set[str]] = {}
    for r in snapshot.rows:
        services.setdefault(r.service, set()).add(r.admin)
    names = {}
    for r in snapshot.rows:
        shared = len(services[r.service]) > 1
        names[r.admin] = f"{r.service}@{r.admin.split('://', 1)[-1]}" if shared else r.service
    return names


def render_table(snapshot: Snapshot) -> RenderableType:
    window = f"{snapshot.window_s:.1f}s window" if snapshot.window_s else "collecting…"
    table = Table(
        title=f"sidecar top · {snapshot.reachable}/{len(snapshot.admins)} sidecars · {window}",
        title_justify="left",
        header_style="bold",
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("SIDECAR", no_wrap=True)
    table.add_column("DIR", no_wrap=True)
    table.add_column("NAME", overflow="fold")
    for col in ("RPS", "SUCCESS", "P50", "P99", "INFLIGHT", "BREAKER", "EJECTED", "RETRY/S"):
        table.add_column(col, justify="right", no_wrap=True)
    grpc = any(r.grpc_status is not None for r in snapshot.rows)
    if grpc:
        table.add_column("GRPC STATUS/S", overflow="fold")
    names = _sidecar_names(snapshot)
    for r in snapshot.rows:
        idle = r.success_rate is None
        cells: list[Text | str] = [
            names[r.admin],
            KIND_LABEL.get(r.kind, r.kind),
            Text(r.name, style="dim" if idle else "bold"),
            _rate(r.rps),
            _success(r.success_rate),
            _ms(r.p50_s),
            _ms(r.p99_s),
            str(r.inflight) if r.inflight is not None else "-",
            _breaker(r.breaker),
            _ejected(r),
            _rate(r.retries_per_s),
        ]
        if grpc:
            cells.append(_grpc_status(r))
        table.add_row(*cells)
    parts: list[RenderableType] = [table]
    if not snapshot.rows and snapshot.window_s:
        parts.append(Text("no traffic and no upstreams seen yet", style="dim"))
    for err in snapshot.errors:
        parts.append(Text(f"✗ {err.message}", style="red"))
    return Group(*parts)


def row_json(r: Row) -> dict[str, Any]:
    def ms(seconds: float | None) -> float | None:
        return round(seconds * 1000, 3) if seconds is not None else None

    def rnd(value: float | None) -> float | None:
        return round(value, 4) if value is not None else None

    return {
        "admin": r.admin,
        "service": r.service,
        "kind": r.kind,
        "name": r.name,
        "rps": rnd(r.rps),
        "success_rate": rnd(r.success_rate),
        "p50_ms": ms(r.p50_s),
        "p99_ms": ms(r.p99_s),
        "inflight": r.inflight,
        "breaker": r.breaker,
        "endpoints": (
            {"healthy": r.endpoints_healthy, "ejected": r.endpoints_ejected}
            if r.endpoints_ejected is not None
            else None
        ),
        "retries_per_s": rnd(r.retries_per_s),
        "rejected_per_s": rnd(r.rejected_per_s),
        "grpc_status": (
            {name: rnd(rps) for name, rps in r.grpc_status} if r.grpc_status is not None else None
        ),
    }


def render_json(snapshot: Snapshot) -> str:
    doc = {
        "version": JSON_VERSION,
        "window_s": round(snapshot.window_s, 3) if snapshot.window_s else None,
        "admins": snapshot.admins,
        "rows": [row_json(r) for r in snapshot.rows],
        "errors": [{"admin": e.admin, "error": e.message} for e in snapshot.errors],
    }
    return json.dumps(doc, indent=2)
