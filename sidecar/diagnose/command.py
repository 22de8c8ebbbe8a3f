"""`sidecar diagnose`: argument parsing and the glue from sources to reports (docs/diagnose.md).

The CLI registers it with `configure(subparser)` and runs `main(args)`; exit codes are 0 ok,
1 runtime failure (source unreachable, nothing to analyse), 2 usage error."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
from rich.console import Console

from sidecar.config import parse_duration
from sidecar.diagnose import html, report, sources
from sidecar.diagnose.analysis import NoMatchingTraces, diagnose
from sidecar.diagnose.model import Trace

MAX_LIMIT = 10000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Latency diagnosis of one operation from its traces."
    parser.add_argument("--service", required=True, help="service that serves the operation")
    parser.add_argument("--operation", default=None,
                        help='e.g. "GET /context" (a prefix or a concrete path also match); '
                             "default: the service's most frequent entry operation")
    src = parser.add_argument_group("trace source (one of)")
    src.add_argument("--jaeger", metavar="URL", help="Jaeger query API, e.g. http://localhost:16686")
    src.add_argument("--admin", metavar="URL", action="append", default=[],
                     help="a sidecar's admin address (repeat for every sidecar on the path)")
    src.add_argument("--file", metavar="PATH", help="Jaeger JSON saved from the Jaeger UI")
    parser.add_argument("--lookback", default="15m", help="how far back to look (default 15m)")
    parser.add_argument("--limit", type=int, default=200, help="traces to fetch (default 200)")
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
    try:
        traces = asyncio.run(_collect(args, query))
        if not traces:
            raise sources.SourceError(f"no traces found for service {args.service!r} "
                                      f"in the last {args.lookback}")
        result = diagnose(traces, args.service, args.operation)
    except (sources.SourceError, NoMatchingTraces) as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    if args.json:
        sys.stdout.write(report.render_json(result) + "\n")
    else:
        out = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
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


async def _collect(args: argparse.Namespace, query: sources.Query) -> list[Trace]:
    if args.file:
        return sources.read_file(args.file)
    async with aiohttp.ClientSession(timeout=sources.client_timeout()) as session:
        if args.jaeger:
            return await sources.from_jaeger(session, args.jaeger, query)
        return await sources.from_admins(session, args.admin, query)
