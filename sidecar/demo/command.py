"""`sidecar demo`: the whole product in one command, on embedded defaults (docs/demo.md).

Starts bff, user-service, document-service and retrieval-service, each behind its own sidecar
on loopback; drives load through the bff's sidecar; injects latency into document-service;
collects the sidecars' traces and prints the diagnosis; switches the bff to concurrent calls
and prints the measured before/after. Everything it starts, it stops (Ctrl-C included)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sidecar.demo import grpc_calls
from sidecar.demo.load import PhaseResult, drive
from sidecar.demo.procs import ChildExited, Supervisor
from sidecar.demo.topology import (
    ENTRY_SERVICE,
    INJECTED_FAULT,
    OPERATION,
    SLOW_SERVICE,
    Export,
    ServicePlan,
    plan,
    sidecar_config,
)
from sidecar.demo.traces import (
    Breakdown,
    collect,
    collect_from_jaeger,
    server_timing_breakdown,
)
from sidecar.diagnose import analysis, html, report
from sidecar.diagnose.model import TraceFormatError, parse_jaeger


class DemoError(Exception):
    """The demo cannot go on; the message is one line for the user."""


@dataclass(frozen=True)
class Timings:
    warmup_s: float
    phase_s: float
    ready_timeout_s: float = 30.0
    # How long Jaeger may take to hold a phase's traces (sidecars export once a second).
    jaeger_wait_s: float = 15.0


QUICK = Timings(warmup_s=1.5, phase_s=6.0)
FULL = Timings(warmup_s=10.0, phase_s=45.0)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short run (well under a minute)")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds of load before and after the fix"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="also export spans to this OTLP collector (:4318 or a /v1/traces path: "
        "OTLP/HTTP, else gRPC)",
    )
    parser.add_argument(
        "--jaeger",
        metavar="URL",
        help="Jaeger query/UI URL (e.g. http://127.0.0.1:16686): the sidecars export spans to "
        "its OTLP gRPC port (same host, 4317; --otlp overrides) and the diagnosis reads them "
        "back through Jaeger's query API",
    )
    parser.add_argument("--consul", metavar="URL", help="discover services through Consul")
    parser.add_argument(
        "--workdir", default=".demo", help="where configs, logs, traces and the report go"
    )


# ---------------------------------------------------------------- setup


def export_from_args(otlp: str | None, jaeger: str | None) -> Export:
    if otlp:
        parts = urlsplit(otlp)
        http = parts.port == 4318 or parts.path.rstrip("/").endswith("/v1/traces")
        return Export("otlp_http" if http else "otlp_grpc", otlp)
    if jaeger:
        host = urlsplit(jaeger).hostname or "127.0.0.1"
        return Export("otlp_grpc", f"http://{host}:4317")
    return Export()


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The user's environment minus what would reconfigure our sidecars behind our back
    (OTEL_SERVICE_NAME would rename all four), with this checkout importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SIDECAR_", "OTEL_", "CONSUL_HTTP_", "FAULT_", "UPSTREAM_", "BFF_"))
    }
    spec = importlib.util.find_spec("demo_services")
    if spec is None or spec.origin is None:
        raise DemoError(
            "the demo services (package demo_services) are not importable: "
            "install the project with `pip install -e .` or run `make demo`"
        )
    root = str(Path(spec.origin).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_all(
    supervisor: Supervisor, plans: list[ServicePlan], export: Export, consul: str | None
) -> None:
    workdir = supervisor.log_dir
    upstreams = [p for p in plans if p.name != ENTRY_SERVICE]
    for seed, svc in enumerate(plans, start=1):
        argv = [sys.executable, "-m", svc.module, "--port", str(svc.app_port), "--seed", str(seed)]
        supervisor.start(svc.name, argv, child_env(svc.env))
    for svc in plans:
        ups = upstreams if svc.name == ENTRY_SERVICE else []
        path = workdir / f"sidecar-{svc.name}.yaml"
        path.write_text(yaml.safe_dump(sidecar_config(svc, ups, export, consul), sort_keys=False))
        argv = [sys.executable, "-m", "sidecar.cli", "run", "-c", str(path)]
        supervisor.start(f"sidecar-{svc.name}", argv, child_env({}))
    topology = {
        "services": {
            p.name: {
                "app_port": p.app_port,
                "inbound": p.inbound,
                "outbound": p.outbound,
                "admin": p.admin,
            }
            for p in plans
        },
        "pids": {c.name: c.pid for c in supervisor.children},
    }
    # Renamed into place: whoever watches for the file never reads half of it.
    tmp = workdir / "topology.json.tmp"
    tmp.write_text(json.dumps(topology, indent=2))
    tmp.replace(workdir / "topology.json")


async def wait_ready(
    session: aiohttp.ClientSession, supervisor: Supervisor, plans: list[ServicePlan], limit: float
) -> None:
    deadline = time.monotonic() + limit
    pending = {p.name: p.admin_url for p in plans}
    last: dict[str, str] = {}
    while pending:
        supervisor.check_alive()
        if time.monotonic() > deadline:
            why = "; ".join(f"{n}: {last.get(n, 'no answer')}" for n in sorted(pending))
            raise DemoError(f"sidecars not ready after {limit:.0f}s ({why})")
        for name, url in list(pending.items()):
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        del pending[name]
                    else:
                        last[name] = f"/readyz {resp.status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last[name] = type(exc).__name__
        if pending:
            await asyncio.sleep(0.1)


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise DemoError(f"POST {url} answered {resp.status}: {(await resp.text())[:200]}")


# ---------------------------------------------------------------- output


def fmt_ms(v: float) -> str:
    return "-" if v != v else f"{v:,.0f} ms"  # NaN: no successful request


def topology_table(plans: list[ServicePlan]) -> Table:
    t = Table(title="Topology (each service behind its own sidecar, all on 127.0.0.1)")
    for col in ("service", "speaks", "app", "sidecar in", "sidecar out", "admin"):
        t.add_column(col)
    for p in plans:
        t.add_row(
            p.name, p.protocol, str(p.app_port), str(p.inbound), str(p.outbound), str(p.admin)
        )
    return t


def breakdown_table(b: Breakdown) -> Table:
    t = Table(title=f"bff {OPERATION}: time per downstream call ({b.requests} requests)")
    for col in ("hop", "p50", "p99", "share of request (p50)"):
        t.add_column(col, justify="left" if col == "hop" else "right")
    for h in b.hops:
        t.add_row(h.name, fmt_ms(h.p50_ms), fmt_ms(h.p99_ms), f"{h.share_p50:.0%}")
    t.add_row("[bold]whole request[/]", fmt_ms(b.total_p50_ms), fmt_ms(b.total_p99_ms), "100%")
    return t


def results_table(phases: list[PhaseResult]) -> Table:
    t = Table(title="Measured at the client, through the bff's sidecar")
    for col in ("phase", "requests", "errors", "p50", "p99"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for ph in phases:
        t.add_row(ph.name, str(ph.requests), str(ph.errors), fmt_ms(ph.p(50)), fmt_ms(ph.p(99)))
    return t


def grpc_table(counts: list[grpc_calls.RpcCount]) -> Table:
    t = Table(title="gRPC calls as the sidecars counted them (rpc_*_duration_seconds)")
    for col in ("sidecar", "side", "method", "status", "calls"):
        t.add_column(col, justify="right" if col == "calls" else "left")
    for row in grpc_calls.rows(counts):
        t.add_row(*row)
    return t


def phase_json(ph: PhaseResult) -> dict[str, Any]:
    return {
        "requests": ph.requests,
        "errors": ph.errors,
        "p50_ms": round(ph.p(50), 2),
        "p99_ms": round(ph.p(99), 2),
    }


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup must not be cut short by an impatient second Ctrl-C (it has its own deadline)."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- diagnosis


@dataclass
class Diagnosis:
    source: str  # "traces" (sidecars' /debug/traces) | "jaeger" | "server-timing"
    slowest: str | None
    report: Path | None = None


def diagnose_traces(
    traces: dict[str, Any], console: Console, workdir: Path, source: str = "traces"
) -> Diagnosis | None:
    """Trace-based diagnosis (what `sidecar diagnose` prints) of the phase's traces; also
    writes the HTML waterfall report. None when no trace holds the operation or no hop stands
    out, and the demo falls back to the bff's Server-Timing breakdown."""
    try:
        result = analysis.diagnose(parse_jaeger(traces), ENTRY_SERVICE, OPERATION)
    except (analysis.NoMatchingTraces, TraceFormatError):
        return None
    if result.slowest is None:
        return None
    report.render_text(result, console)
    console.print(f"[bold red]Slowest hop:[/] {result.slowest.message}")
    slow = result.slowest.hop.split(" ", 1)[0] if result.slowest.hop else None
    diag = Diagnosis(source, slow)
    diag.report = workdir / "report.html"
    diag.report.write_text(html.render(result))
    return diag


def print_breakdown(console: Console, b: Breakdown) -> Diagnosis:
    console.print(breakdown_table(b))
    slow = b.slowest
    if slow is not None:
        console.print(
            f"[bold red]Slowest hop:[/] {slow.name}: p99 {fmt_ms(slow.p99_ms)}, "
            f"{slow.share_p50:.0%} of the request at p50"
        )
    if b.sequential:
        names = ", ".join(h.name for h in sorted(b.hops, key=lambda h: h.name))
        console.print(
            f"[bold yellow]Sequential calls:[/] {names} are called one after another and do "
            f"not depend on each other; concurrent would save ~{b.saving_p50_ms:.0f} ms at p50"
        )
    return Diagnosis("server-timing", slow.name if slow else None)


# ---------------------------------------------------------------- the story


async def run_demo(args: argparse.Namespace, supervisor: Supervisor, console: Console) -> int:
    timings = QUICK if args.quick else FULL
    phase_s = args.duration or timings.phase_s
    if phase_s <= 0 or args.concurrency < 1:
        raise DemoError("--duration must be > 0 and --concurrency >= 1")
    workdir = supervisor.log_dir
    export = export_from_args(args.otlp, args.jaeger)
    plans = plan()
    by_name = {p.name: p for p in plans}
    bff = by_name[ENTRY_SERVICE]

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)

    console.rule("[bold]sidecar demo[/]: an AI agent's BFF and the three services it calls")
    console.print(topology_table(plans))
    started = time.monotonic()
    start_all(supervisor, plans, export, args.consul)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        with console.status(f"starting {len(supervisor.children)} processes…"):
            await wait_ready(session, supervisor, plans, timings.ready_timeout_s)
        console.print(
            f"[green]✓[/] 4 services and 4 sidecars ready in {time.monotonic() - started:.1f}s "
            f"(logs and configs in {workdir}/)"
        )

        async def phase(name: str, seconds: float) -> PhaseResult:
            progress = Progress(
                TextColumn("{task.description:<34}"),
                BarColumn(),
                TextColumn("{task.fields[requests]:>6} requests"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            with progress:
                task = progress.add_task(name, total=seconds, requests=0)
                count = 0

                def tick(n: int) -> None:
                    nonlocal count
                    count += n

                t0 = time.monotonic()
                load = asyncio.create_task(
                    drive(session, bff.inbound_url, name, seconds, args.concurrency, tick)
                )
                try:
                    while not load.done():
                        supervisor.check_alive()
                        elapsed = min(seconds, time.monotonic() - t0)
                        progress.update(task, completed=elapsed, requests=count)
                        await asyncio.wait({load}, timeout=0.1)
                finally:
                    # Interrupted or a child died: the clients stop before the session closes.
                    if not load.done():
                        load.cancel()
                        await asyncio.gather(load, return_exceptions=True)
                result = load.result()
                progress.update(task, completed=seconds, requests=count)
            return result

        warm = await phase("warm-up (sequential, healthy)", timings.warmup_s)
        lat = INJECTED_FAULT
        console.print(
            f"\n[bold]Injecting a fault:[/] {SLOW_SERVICE} +{lat['latency_ms']:.0f} ms "
            f"(±{lat['jitter_ms']:.0f} ms jitter) — POST {by_name[SLOW_SERVICE].app_url}/faults"
        )
        await post_json(session, f"{by_name[SLOW_SERVICE].app_url}/faults", dict(lat))
        before = await phase("before: sequential calls", phase_s)

        console.rule("[bold]Diagnosis[/]")
        diagnosis = await diagnose(
            session, console, plans, before, workdir, args.jaeger, timings.jaeger_wait_s
        )

        console.rule("[bold]The fix[/]")
        console.print(
            "Switching the bff to concurrent calls — "
            f'POST {bff.app_url}/mode {{"mode": "concurrent"}}'
        )
        await post_json(session, f"{bff.app_url}/mode", {"mode": "concurrent"})
        after = await phase("after: concurrent calls", phase_s)
        rpc_counts = await grpc_calls.collect(session, [p.admin_url for p in plans])

    console.rule("[bold]Before / after[/]")
    if rpc_counts:
        console.print(grpc_table(rpc_counts))
    console.print(results_table([warm, before, after]))
    gain50, gain99 = before.p(50) - after.p(50), before.p(99) - after.p(99)
    console.print(
        f"[bold]before[/] p50 {fmt_ms(before.p(50))} p99 {fmt_ms(before.p(99))} → "
        f"[bold]after[/] p50 {fmt_ms(after.p(50))} p99 {fmt_ms(after.p(99))}  "
        f"(saved: p50 {gain50:.0f} ms, p99 {gain99:.0f} ms)"
    )
    result = {
        "operation": f"{ENTRY_SERVICE} {OPERATION}",
        "injected": {"service": SLOW_SERVICE, **INJECTED_FAULT},
        "slowest_hop": diagnosis.slowest,
        "diagnosis_source": diagnosis.source,
        "report": str(diagnosis.report) if diagnosis.report else None,
        "warmup": phase_json(warm),
        "before": phase_json(before),
        "after": phase_json(after),
        "grpc": [c.as_json() for c in rpc_counts],
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    if diagnosis.report:
        console.print(f"Diagnosis report: {diagnosis.report}")
    if args.jaeger:
        url = args.jaeger.rstrip("/")
        console.print(f"Traces in Jaeger: {url}/search?service={ENTRY_SERVICE}")
        console.print(
            f"Diagnose them again: sidecar diagnose --jaeger {url} --service {ENTRY_SERVICE} "
            f'--operation "{OPERATION}"',
            markup=False,
        )
    console.print(f"Numbers: {workdir / 'result.json'}")
    return 0


async def diagnose(
    session: aiohttp.ClientSession,
    console: Console,
    plans: list[ServicePlan],
    phase: PhaseResult,
    workdir: Path,
    jaeger: str | None = None,
    jaeger_wait_s: float = 15.0,
) -> Diagnosis:
    traces, why, source, origin = None, None, "traces", "the 4 sidecars' /debug/traces"
    if jaeger:
        with console.status(f"waiting for Jaeger ({jaeger}) to hold this phase's traces…"):
            traces, why = await collect_from_jaeger(
                session,
                jaeger,
                ENTRY_SERVICE,
                OPERATION,
                phase.started_wall,
                len(phase.latencies_ms),
                jaeger_wait_s,
            )
        if traces is None:
            console.print(
                f"[dim]Jaeger: {escape(why or '')}; reading the sidecars' /debug/traces instead.[/]"
            )
        else:
            source, origin = "jaeger", f"Jaeger's query API ({jaeger.rstrip('/')})"
    if traces is None:
        entry = next(p for p in plans if p.name == ENTRY_SERVICE)
        others = [p.admin_url for p in plans if p.name != ENTRY_SERVICE]
        lookback = time.time() - phase.started_wall + 2
        traces, why = await collect(
            session, entry.admin_url, others, ENTRY_SERVICE, OPERATION, lookback, limit=2000
        )
    if traces is not None:
        since_us = phase.started_wall * 1e6
        traces["data"] = [
            t
            for t in traces["data"]
            if t.get("spans") and min(s["startTime"] for s in t["spans"]) >= since_us
        ]
        path = workdir / "traces.json"
        path.write_text(json.dumps(traces))
        spans = sum(len(t["spans"]) for t in traces["data"])
        console.print(
            f"Collected {len(traces['data'])} traces ({spans} spans) from {origin} → {path}",
            highlight=False,
        )
        diag = diagnose_traces(traces, console, workdir, source)
        if diag is not None:
            return diag
        why = f"no trace of {ENTRY_SERVICE} {OPERATION} showed a slowest downstream hop"
    console.print(f"[dim]Trace-based diagnosis unavailable: {why}.[/]")
    console.print("[dim]Showing the bff's own per-call timing (its Server-Timing header).[/]")
    breakdown = server_timing_breakdown(phase)
    if breakdown is None:
        raise DemoError("no successful requests to diagnose (see the logs in the workdir)")
    return print_breakdown(console, breakdown)


def main(args: argparse.Namespace) -> int:
    console = Console()
    workdir = Path(args.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[red]error:[/] cannot create {workdir}: {exc.strerror or exc}")
        return 1
    supervisor = Supervisor(workdir)
    try:
        return asyncio.run(run_demo(args, supervisor, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("\n[yellow]interrupted[/]: stopping every process the demo started")
        return 130
    except ChildExited as exc:
        console.print(f"[red]error:[/] {exc}")
        tail = exc.log_tail()
        if tail:
            console.print(tail, markup=False, highlight=False)
        return 1
    except DemoError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        with signals_ignored():
            supervisor.stop()


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar demo", description=__doc__)
    configure(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_standalone())
