"""`sidecar top`: argument parsing and the scrape → snapshot → screen loop.

The CLI registers it with `configure(subparser)` and runs `main(args)`; exit codes are 0 ok,
1 no sidecar reachable (with --once), 2 usage error. Ctrl-C ends it quietly."""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from rich.console import Console
from rich.live import Live

from sidecar.top import render
from sidecar.top.model import SORT_KEYS, Snapshot, Tracker
from sidecar.top.scrape import normalise_admin, scrape_all

MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 3600.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Live per-upstream and per-route traffic of one or more sidecars: rps, success rate, "
        "p50/p99, inflight, breaker, ejected endpoints, retries; worst first."
    )
    parser.add_argument(
        "--admin",
        metavar="URL",
        action="append",
        required=True,
        help="a sidecar's admin address, e.g. http://127.0.0.1:15090 (repeat)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between scrapes, the window rates cover (default 1.0)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="scrape twice --interval apart, print one snapshot and exit",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the snapshot as JSON (implies --once)"
    )
    parser.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="health",
        help="row order (default health: lowest success rate, then highest p99)",
    )


def main(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not MIN_INTERVAL_S <= args.interval <= MAX_INTERVAL_S:
        err.print(f"error: --interval must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S:.0f}")
        return 2
    admins = list(dict.fromkeys(normalise_admin(a) for a in args.admin))
    tracker = Tracker(admins, args.sort)
    try:
        if args.once or args.json:
            return asyncio.run(_once(tracker, args.interval, args.json, err))
        return asyncio.run(_live(tracker, args.interval))
    except KeyboardInterrupt:
        return 0


def _timeout(interval: float) -> aiohttp.ClientTimeout:
    # A scrape that outlives the tick would only pile up; a little slack for slow machines.
    return aiohttp.ClientTimeout(total=max(2.0, interval), connect=min(2.0, interval + 0.5))


async def _once(tracker: Tracker, interval: float, as_json: bool, err: Console) -> int:
    async with aiohttp.ClientSession(timeout=_timeout(interval)) as session:
        first = tracker.update(await scrape_all(session, tracker.admins))
        if first.reachable == 0:
            return _unreachable(first, err)
        await asyncio.sleep(interval)  # the measuring window itself
        snapshot = tracker.update(await scrape_all(session, tracker.admins))
    if snapshot.window_s is None:
        return _unreachable(snapshot, err)
    if as_json:
        sys.stdout.write(render.render_json(snapshot) + "\n")
        for e in snapshot.errors:
            err.print(f"error: {e.message}", markup=False)
    else:
        out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
        out.print(render.render_table(snapshot))
    return 0


def _unreachable(snapshot: Snapshot, err: Console) -> int:
    for e in snapshot.errors:
        err.print(f"error: {e.message}", markup=False)
    return 1


async def _live(tracker: Tracker, interval: float) -> int:
    loop = asyncio.get_running_loop()
    console = Console(highlight=False)
    waiting = Snapshot([], [], tracker.admins, None)
    async with aiohttp.ClientSession(timeout=_timeout(interval)) as session:
        with Live(
            render.render_table(waiting),
            console=console,
            auto_refresh=False,
            screen=console.is_terminal,
            redirect_stderr=False,
        ) as live:
            while True:
                started = loop.time()
                snapshot = tracker.update(await scrape_all(session, tracker.admins))
                live.update(render.render_table(snapshot), refresh=True)
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
