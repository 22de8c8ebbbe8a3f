"""`sidecar top` as a person sees it: a snapshot of a real sidecar under traffic (slow, flaky
and dead upstreams), rendered by rich to SVG and photographed by headless Chromium.

SIDECAR_UPDATE_SCREENSHOTS=1 also writes docs/img/sidecar-top.png."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console
from rich.terminal_theme import MONOKAI

from sidecar.app import Sidecar
from sidecar.config import build_config
from sidecar.top.model import Snapshot, Tracker
from sidecar.top.render import render_table
from sidecar.top.scrape import scrape_all
from tests.conftest import free_port, require_binary
from tests.doubles.upstream import Upstream
from tests.integration.top_traffic import Busy, drive

ROOT = Path(__file__).resolve().parents[2]
WIDTH_COLUMNS = 118


def dead() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens: connect refused


@pytest.fixture
async def shop() -> AsyncIterator[Busy]:
    """A bff whose upstreams are healthy, slow, half-dead and dead."""
    doubles = [Upstream(n) for n in ("bff-app", "user", "document", "retrieval")]
    app, user, document, retrieval = [await d.start() for d in doubles]
    user.delay, document.delay, retrieval.delay = 0.004, 0.06, 0.015
    sc = Sidecar(
        build_config(
            {
                "service": {"name": "bff", "port": app.port},
                "listeners": {
                    k: f"127.0.0.1:{free_port()}" for k in ("inbound", "outbound", "admin")
                },
                "tracing": {"exporter": "none"},
                "discovery": {
                    "static": {
                        "user-service": [f"127.0.0.1:{user.port}"],
                        "document-service": [f"127.0.0.1:{document.port}"],
                        "retrieval-service": [f"127.0.0.1:{retrieval.port}", dead()],
                        "billing-service": [dead()],
                    }
                },
                "upstreams": {
                    "billing-service": {
                        "outlier_detection": {
                            "enabled": False
                        },  # the breaker, not ejection, takes it out
                        "circuit_breaker": {"consecutive_failures": 3, "reset_timeout": "60s"},
                    }
                },
                "metrics": {
                    "route_templates": [
                        "/context/{user_id}",
                        "/users/{id}",
                        "/documents/{id}",
                        "/retrieve",
                    ]
                },
            },
            env={},
        )
    )
    await sc.start()
    b = Busy(
        sc,
        f"http://{sc.config.listeners.admin}",
        f"http://127.0.0.1:{sc.bound_port('listeners.inbound')}",
        f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}",
    )
    calls = [
        (b.inbound + "/context/7", {}),
        (b.outbound + "/users/7", {"Host": "user-service"}),
        (b.outbound + "/documents/7", {"Host": "document-service"}),
        (b.outbound + "/retrieve", {"Host": "retrieval-service"}),
        (b.outbound + "/charges/7", {"Host": "billing-service"}),
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(drive(calls, stop, pause=0.005)) for _ in range(3)]
    try:
        yield b
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await sc.drain(timeout=1)
        await sc.stop()
        for d in doubles:
            await d.stop()


async def snapshot_of(admin: str, interval: float = 2.0) -> Snapshot:
    """What `sidecar top --once --interval 2` computes: two scrapes `interval` apart."""
    tracker = Tracker([admin])
    async with aiohttp.ClientSession() as session:
        tracker.update(await scrape_all(session, [admin]))
        await asyncio.sleep(interval)  # the measuring window
        return tracker.update(await scrape_all(session, [admin]))


def svg_size(svg: str) -> tuple[int, int]:
    match = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg)
    assert match, "rich's SVG has a viewBox"
    return int(float(match[1])) + 1, int(float(match[2])) + 1


async def screenshot(svg_path: Path, png_path: Path, size: tuple[int, int]) -> None:
    binary = require_binary("chromium")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={svg_path.parent / 'profile'}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={png_path}",
        svg_path.as_uri(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def settled(sc: Sidecar, within: float = 30) -> None:
    """Steady state before the window: the dead upstream's breaker is open and the dead
    retrieval endpoint ejected (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        breaker = sc.breakers.get("billing-service")
        cluster = sc.clusters.get("retrieval-service")
        now = sc.clock.monotonic()
        if (
            breaker is not None
            and breaker.snapshot()["state"] == "open"
            and cluster is not None
            and any(s.is_ejected(now) for s in cluster.states)
        ):
            return
        assert loop.time() < deadline, "breaker never opened or endpoint never ejected"
        await asyncio.sleep(0.05)


async def test_top_screenshot(shop: Busy, tmp_path: Path) -> None:
    await settled(shop.sidecar)
    snap = await snapshot_of(shop.admin)
    names = [r.name for r in snap.rows if r.kind == "upstream"]
    assert names[0] == "billing-service", names  # dead: worst first
    by_name: dict[str, Any] = {r.name: r for r in snap.rows}
    assert by_name["billing-service"].breaker == "open"
    assert by_name["retrieval-service"].endpoints_ejected == 1
    assert by_name["user-service"].success_rate == 1.0
    # Of equally healthy upstreams, the slower (by this window's p99) ranks first. Compared
    # on the snapshot's own p99s: a CPU hiccup in a 2 s window may make user-service's p99
    # the larger one, and then it must come first.
    doc, user = by_name["document-service"], by_name["user-service"]
    if doc.success_rate == user.success_rate == 1.0 and doc.p99_s != user.p99_s:
        slower = "document-service" if doc.p99_s > user.p99_s else "user-service"
        faster = "user-service" if slower == "document-service" else "document-service"
        assert names.index(slower) < names.index(faster), (names, doc.p99_s, user.p99_s)

    console = Console(
        record=True,
        width=WIDTH_COLUMNS,
        color_system="truecolor",
        force_terminal=True,
        file=io.StringIO(),
    )
    console.print(render_table(snap))
    svg = console.export_svg(title="sidecar top --admin http://127.0.0.1:15090", theme=MONOKAI)
    svg_path, png_path = tmp_path / "sidecar-top.svg", tmp_path / "sidecar-top.png"
    svg_path.write_text(svg, encoding="utf-8")
    await screenshot(svg_path, png_path, svg_size(svg))
    png = png_path.read_bytes()
    assert png_size(png) == svg_size(svg) and len(png) > 20_000
    if os.environ.get("SIDECAR_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "img" / "sidecar-top.png").write_bytes(png)
