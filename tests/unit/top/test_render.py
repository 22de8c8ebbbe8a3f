"""The table people read and the JSON programs read."""

from __future__ import annotations

import json

from rich.console import Console

from sidecar.top.model import Row, Snapshot
from sidecar.top.render import render_json, render_table
from sidecar.top.scrape import ScrapeError

A, B = "http://127.0.0.1:1", "http://127.0.0.1:2"


def snapshot() -> Snapshot:
    rows = [
        Row(A, "bff", "upstream", "docs", 12.5, 0.5, 0.004, 1.2, 3, "open", 1, 1, 2.0, 6.0),
        Row(B, "bff", "route", "/users/{id}", 40.0, 1.0, 0.0021, 0.0456),
        Row(A, "bff", "inbound", "bff", 0.0, None, None, None, 0),
    ]
    return Snapshot(rows, [ScrapeError("http://127.0.0.1:3", "cannot reach it")], [A, B, "x"], 1.0)


def test_table_shows_every_row_column_and_error() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_table(snapshot()))
    text = console.export_text()
    assert "sidecar top · 2/3 sidecars · 1.0s window" in text
    for cell in (
        "docs",
        "50.00%",
        "4.0ms",
        "1.20s",
        "open",
        "1/2",
        "2.0",
        "2.1ms",
        "45.6ms",
        "100%",
        "✗ cannot reach it",
    ):
        assert cell in text, cell
    # two sidecars report the same service: the address tells them apart
    assert "bff@127.0.0.1:1" in text and "bff@127.0.0.1:2" in text
    assert text.index("docs") < text.index("/users/{id}") < text.index(" in ")


def test_json_is_stable_and_in_milliseconds() -> None:
    doc = json.loads(render_json(snapshot()))
    assert list(doc) == ["version", "window_s", "admins", "rows", "errors"]
    first = doc["rows"][0]
    assert first == {
        "admin": A,
        "service": "bff",
        "kind": "upstream",
        "name": "docs",
        "rps": 12.5,
        "success_rate": 0.5,
        "p50_ms": 4.0,
        "p99_ms": 1200.0,
        "inflight": 3,
        "breaker": "open",
        "endpoints": {"healthy": 1, "ejected": 1},
        "retries_per_s": 2.0,
        "rejected_per_s": 6.0,
        "grpc_status": None,
    }
    assert doc["rows"][2]["success_rate"] is None and doc["rows"][2]["endpoints"] is None
    assert doc["errors"] == [{"admin": "http://127.0.0.1:3", "error": "cannot reach it"}]


def test_grpc_rows_show_status_codes_in_table_and_json() -> None:
    grpc = Row(
        A, "bff", "rpc_out", "retrieval demo.retrieval.v1.Retrieval/Retrieve", 10.0, 0.85,
        0.004, 0.009, grpc_status=(("OK", 8.5), ("UNAVAILABLE", 1.5)),
    )  # fmt: skip
    snap = Snapshot([grpc, *snapshot().rows], [], [A, B], 1.0)
    console = Console(record=True, width=220, color_system=None)
    console.print(render_table(snap))
    text = console.export_text()
    assert "GRPC STATUS/S" in text and "grpc out" in text
    assert "OK 8.5 · UNAVAILABLE 1.5" in text
    doc = json.loads(render_json(snap))
    assert doc["rows"][0]["grpc_status"] == {"OK": 8.5, "UNAVAILABLE": 1.5}
    assert doc["rows"][1]["grpc_status"] is None


def test_http_only_table_has_no_grpc_column() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_table(snapshot()))
    assert "GRPC" not in console.export_text()
