"""`sidecar diagnose`: argument parsing and the glue from sources to reports (docs/diagnose.md).

The CLI registers it with `configure(subparser)` and runs `main(args)`; exit codes are 0 ok,
1 runtime failure (source unreachable, nothing to analyse), 2 usage error."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import aiohttp
from rich.console import Console

from sidecar.config import parse_duration
from sidecar.diagnose import compare, html, report, sources
from sidecar.diagnose.analysis import NoMatchingTraces, diagnose
from sidecar.diagnose.model import Trace

MAX_LIMIT = 10000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Latency diagnosis of one operation from its traces."
    parser.add_argument("--service", required=True, help="service that serves the operation")
    parser.add_argument(
        "--operation",
        default=None,
        help='e.g. "GET /context" (a prefix or a concrete path also match); '
        "default: the service's most frequent entry operation",
    )
    src = parser.add_argument_group("trace source (one of)")
    src.add_argument(
        "--jaeger", metavar="URL", help="Jaeger query API, e.g. http://localhost:16686"
    )
    src.add_argument(
        "--admin",
        metavar="URL",
        action="append",
        default=[],
        help="a sidecar's admin address (repeat for every sidecar on the path)",
    )
    src.add_argument("--file", metavar="PATH", help="Jaeger JSON saved from the Jaeger UI")
    parser.add_argument("--lookback", default="15m", help="how far back to look (default 15m)")
    parser.add_argument("--limit", type=int, default=200, help="traces to fetch (default 200)")
    parser.add_argument(
        "--baseline",
        metavar="RANGE|PATH",
        help="compare with a baseline: a trace file, or a window in the past "
        "with --jaeger: '1d' (the --lookback window one day ago) or "
        "'2h..1h' (from 2 h ago to 1 h ago)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report")


def main(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    chosen = [n for n in ("jaeger", "admin", "file") if getattr(args, n)]
    if len(chosen) != 1:
        err.print("error: give exactly one trace source: --jaeger URL, --admin URL or --file PATH")
        return 2
    try:
        lookback = parse_duration(args.lookback)
    except ValueError as exc:
        err.print(f"error: --lookback: {exc}")
        return 2
    if not 0 < args.limit <= MAX_LIMIT:
        err.print(f"error: --limit must be between 1 and {MAX_LIMIT}")
        return 2
    query = sources.Query(args.service, args.operation, lookback, args.limit)
    baseline: sources.Query | str | None = None
    if args.baseline:
        try:
            baseline = _baseline(args, query)
        except ValueError as exc:
            err.print(f"error: --baseline: {exc}", markup=False)
            return 2
    try:
        traces = asyncio.run(_collect(args, query))
        if not traces:
            raise sources.SourceError(
                f"no traces found for service {args.service!r} in the last {args.lookback}"
            )
        result = diagnose(traces, args.service, args.operation)
    except (sources.SourceError, NoMatchingTraces) as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    if baseline is not None:
        try:
            base_traces = asyncio.run(_collect(args, baseline))
            if not base_traces:
                raise sources.SourceError("no traces in the baseline window")
            base = diagnose(base_traces, args.service, args.operation)
        except (sources.SourceError, NoMatchingTraces) as exc:
            err.print(f"error: baseline: {exc}", markup=False)
            return 1
        result = dataclasses.replace(result, comparison=compare.compare(result, base))
    if args.json:
        sys.stdout.write(report.render_json(result) + "\n")
    else:
        # Piped (a CI log, `| less`): 150 columns unless COLUMNS says how wide the reader is.
        wide = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
        out = Console(highlight=False, width=None if wide else 150)
        report.render_text(result, out)
    if args.html:
        try:
            Path(args.html).write_text(html.render(result), encoding="utf-8")
        except OSError as exc:
            err.print(f"error: cannot write {args.html}: {exc.strerror or exc}", markup=False)
            return 1
        if not args.json:
            err.print(f"HTML report written to {args.html}", markup=False)
    return 0


def _baseline(args: argparse.Namespace, query: sources.Query) -> sources.Query | str:
    """A path (any trace file), or a window in the past: `1d` = the --lookback window ending
    1 d ago, `2h..1h` = from 2 h ago to 1 h ago (Jaeger can be asked for any window; the
    sidecars' buffers only hold the recent past)."""
    spec = str(args.baseline).strip()
    if Path(spec).exists():
        return spec
    if ".." in spec:
        start_s, end_s = spec.split("..", 1)
        start, end = _ago(start_s), _ago(end_s or "0s")
    else:
        end = _ago(spec)
        start = end + query.lookback_s
    if start <= end:
        raise ValueError(f"{spec!r}: the window must start before it ends (e.g. 2h..1h)")
    if not args.jaeger:
        raise ValueError(
            f"{spec!r} is neither a file nor usable as a time window without "
            "--jaeger (give a trace file)"
        )
    return dataclasses.replace(query, lookback_s=start - end, ends_ago_s=end)


def _ago(text: str) -> float:
    """A duration as --lookback takes it, plus days (`1d`, `7d`): baselines are often
    "the same time yesterday"."""
    text = text.strip()
    if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * 86400
    return parse_duration(text)


async def _collect(args: argparse.Namespace, query: sources.Query | str) -> list[Trace]:
    if isinstance(query, str):
        return sources.read_file(query)
    if args.file:
        return sources.read_file(args.file)
    async with aiohttp.ClientSession(timeout=sources.client_timeout()) as session:
        if args.jaeger:
            return await sources.from_jaeger(session, args.jaeger, query)
        return await sources.from_admins(session, args.admin, query)
