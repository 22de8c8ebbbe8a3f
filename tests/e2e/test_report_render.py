"""The HTML report as a person sees it: rendered by real headless Chromium, driven over the
Chrome DevTools Protocol. Bars present and ordered, no console errors, no network requests.

SIDECAR_UPDATE_SCREENSHOTS=1 also writes docs/img/diagnose-report.png."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.diagnose import html, sources
from sidecar.diagnose.analysis import diagnose
from tests.conftest import require_binary
from tests.unit.diagnose.builder import DOCS, RETR, USER, TraceBuilder, bff

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def synthetic_traces() -> list[TraceBuilder]:
    rnd = random.Random(7)
    out = []
    for i in range(200):
        u, r = 18 + rnd.random() * 6, 8 + rnd.random() * 4
        doc = 50 + rnd.expovariate(1 / 12)
        out.append(
            bff(
                [(USER, 1, u), (DOCS, 2 + u, doc), (RETR, 3 + u + doc, r)],
                total_ms=5 + u + doc + r,
                base_ms=i * 1000,
            )
        )
    return out


class Cdp:
    """A minimal DevTools Protocol client over aiohttp's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, 30)
        assert "error" not in reply, reply
        return dict(reply.get("result", {}))

    async def wait_event(self, method: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method}"
            await asyncio.sleep(0.02)

    async def evaluate(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Cdp]:
    binary = require_binary("chromium")
    profile = tmp_path / "profile"
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.returncode is None, "chromium exited"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        await asyncio.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = Cdp(ws)
                yield cdp
                cdp.reader.cancel()
    finally:
        proc.terminate()
        await proc.wait()


async def test_report_renders_offline_with_ordered_bars(chromium: Cdp, tmp_path: Path) -> None:
    d = diagnose([b.trace() for b in synthetic_traces()], "bff", "GET /context")
    page = html.render(d)
    # nothing that could fetch: no src/href attributes, stylesheets imports or url() at all
    assert not re.search(r"\b(?:src|href)\s*=|@import|url\(|https?://", page)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")

    cdp = chromium
    for domain in ("Page", "Runtime", "Log", "Network"):
        await cdp.call(f"{domain}.enable")
    await cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=1100,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    await cdp.call("Page.navigate", url=path.as_uri())
    await cdp.wait_event("Page.loadEventFired")

    bars = await cdp.evaluate(
        "[...document.querySelectorAll('#waterfall-p50 g.bar')].map(g => {"
        " const r = g.querySelector('rect').getBoundingClientRect();"
        " return {name: g.dataset.name, x: r.x, w: r.width, y: r.y,"
        "         critical: g.dataset.critical}; })"
    )
    names = [b["name"] for b in bars]
    assert names == [
        "bff GET /context/{user_id}",
        "user-service GET /users/{id}",
        "document-service GET /documents/{id}",
        "retrieval-service POST /retrieve",
    ]
    assert [b["y"] for b in bars] == sorted(b["y"] for b in bars)
    root, user, docs, retr = bars
    assert root["x"] < user["x"] < docs["x"] < retr["x"]  # one after the other, on screen
    assert user["x"] + user["w"] <= docs["x"] + 1 and docs["x"] + docs["w"] <= retr["x"] + 1
    assert docs["w"] > user["w"] > retr["w"] > 0
    assert all(b["critical"] == "true" for b in bars)
    assert await cdp.evaluate("document.querySelectorAll('#waterfall-p99 g.bar').length") == 4
    note = await cdp.evaluate(
        "document.querySelector('#waterfall-p50 .sequential-note').textContent"
    )
    assert "concurrent may" in note and "at p50" in note
    slowest = await cdp.evaluate("document.getElementById('slowest').innerText")
    assert slowest.startswith("Slowest hop: document-service GET /documents/{id}: ")
    assert await cdp.evaluate("document.querySelectorAll('#histogram rect.hist').length") > 3

    errors = [
        e
        for e in cdp.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (
            e.get("method") == "Runtime.consoleAPICalled"
            and e["params"]["type"] in ("error", "assert")
        )
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    requested = [
        e["params"]["request"]["url"]
        for e in cdp.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested == [path.as_uri()]

    height = await cdp.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    await cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=1100,
        height=int(height),
        deviceScaleFactor=1,
        mobile=False,
    )
    shot = await cdp.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("SIDECAR_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "img" / "diagnose-report.png").write_bytes(png)


async def test_nested_repeated_calls_are_marked_on_the_waterfall(
    chromium: Cdp, tmp_path: Path
) -> None:
    """The ride-dispatch fixture: redis GetDriver x12 under frontend → driver is drawn nested
    under driver, starred on the critical path, marked beside its bar, and the mark's note
    under the chart says where it is and what it could save; the operation's own sequential
    calls keep their bracket, clear of the mark."""
    fixture = ROOT / "tests" / "fixtures" / "traces" / "dispatch.otlp.jsonl"
    d = diagnose(sources.read_file(fixture), "frontend", None)
    path = tmp_path / "dispatch.html"
    path.write_text(html.render(d), encoding="utf-8")
    cdp = chromium
    await cdp.call("Page.enable")
    await cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=1100,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    await cdp.call("Page.navigate", url=path.as_uri())
    await cdp.wait_event("Page.loadEventFired")
    info = await cdp.evaluate(
        "(() => { const w = document.querySelector('#waterfall-p50');"
        " const bars = [...w.querySelectorAll('g.bar')];"
        " const bar = bars.find(g => g.dataset.name === 'redis GetDriver');"
        " const driver = bars.find(g => g.dataset.name.startsWith('driver '));"
        " const label = bar.querySelector('text');"
        " const mark = bar.querySelector('.pattern-mark');"
        " const note = w.querySelector('.repeated-note');"
        " const bracket = w.querySelector('.sequential-note path').getBoundingClientRect();"
        " const r = bar.querySelector('rect').getBoundingClientRect();"
        " const m = mark.getBoundingClientRect();"
        " const last = bars[bars.length - 1].getBoundingClientRect();"
        " return {label: label.textContent,"
        "   indent: label.getBoundingClientRect().x"
        "     - driver.querySelector('text').getBoundingClientRect().x,"
        "   repeated: bar.dataset.repeated, critical: bar.dataset.critical,"
        "   barRight: r.right, barTop: r.top, barBottom: r.bottom,"
        "   markLeft: m.left, markRight: m.right, markMid: m.top + m.height / 2,"
        "   mark: mark.textContent, bracketLeft: bracket.left,"
        "   noteTop: note.getBoundingClientRect().top, lastBottom: last.bottom,"
        "   note: note.querySelector('text').textContent, noteMark: note.dataset.mark,"
        "   path: note.dataset.path}; })()"
    )
    assert info["label"].startswith("redis GetDriver \u00d712") and info["label"].endswith("★")
    assert info["indent"] > 0  # drawn one level below driver
    assert (info["repeated"], info["critical"]) == ("true", "true")
    assert info["barRight"] < info["markLeft"] < info["markRight"] < info["bracketLeft"]
    assert info["barTop"] <= info["markMid"] <= info["barBottom"]
    assert info["mark"] == info["noteMark"] == "\u2460"
    assert info["noteTop"] >= info["lastBottom"]  # under the chart, over no bar
    assert info["note"].startswith(
        "\u2460 in frontend \u2192 driver: redis GetDriver \u00d712 one after the other;"
    )
    assert "batched or concurrent may save ~132 ms at p50" in info["note"]
    assert info["path"] == "frontend HTTP GET /dispatch > driver /driver.DriverService/FindNearest"
    chain = await cdp.evaluate("document.getElementById('critical-chain').innerText")
    assert "frontend \u2192 driver \u2192 redis GetDriver \u00d712" in chain
    kinds = await cdp.evaluate(
        "[...document.querySelectorAll('ul.findings li')].map(li => li.dataset.kind)"
    )
    assert kinds.index("repeated_calls") < kinds.index("sequential_calls")
