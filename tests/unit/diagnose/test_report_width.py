"""The text report at any width: piped into a CI log at 80 columns, the hop names (what the
reader needs) stay whole; numeric columns go first, and the name wraps only as a last resort."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sidecar.demo import command as demo
from sidecar.diagnose import report
from sidecar.diagnose.analysis import diagnose
from tests.unit.diagnose.builder import ROOT_OP, TraceBuilder, jaeger_response, meshed

# the demo's hops, as its sidecars name them
DEMO_USER = ("user-service", "GET /users/{id}")
DEMO_DOCS = ("document-service", "GET /documents")
DEMO_RETR = ("retrieval-service", "POST /retrieve")


def demo_traces(n: int = 40) -> list[TraceBuilder]:
    """The demo's "before" phase: the bff behind its sidecar calling the three services one
    after the other, document-service slowed down."""
    return [
        meshed(
            [(DEMO_USER, 1, 24), (DEMO_DOCS, 26, 240 + i), (DEMO_RETR, 268 + i, 78)],
            total_ms=350 + i,
            base_ms=i * 1000,
        )
        for i in range(n)
    ]


def piped_console(monkeypatch: pytest.MonkeyPatch, columns: int) -> tuple[Console, io.StringIO]:
    """A console as the demo makes it (`Console()`), writing to a pipe with COLUMNS set."""
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    return Console(file=out), out


def test_demo_diagnosis_at_80_columns_shows_every_hop_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    console, out = piped_console(monkeypatch, 80)
    assert console.width == 80 and not console.is_terminal
    diag = demo.diagnose_traces(jaeger_response(demo_traces()), console, tmp_path)
    assert diag is not None and diag.slowest == "document-service"
    text = out.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for service, op in (DEMO_USER, DEMO_DOCS, DEMO_RETR):
        name = f"{service} {op}"
        assert any(line.startswith(name) for line in lines), text  # a table row, whole
    assert "…" not in text
    header = next(line for line in lines if line.startswith("downstream hop"))
    assert "p50" in header and "crit p99" in header


def test_numeric_columns_go_before_the_name_and_long_names_wrap() -> None:
    long_service = "recommendation-candidate-generation-service"
    long_op = "POST /v2/candidates/{tenant}/generate"
    builders = [
        meshed(
            [((long_service, long_op), 1, 30), (DEMO_DOCS, 32, 50)], total_ms=90, base_ms=i * 1000
        )
        for i in range(10)
    ]
    d = diagnose([b.trace() for b in builders], "bff", ROOT_OP)
    wide = io.StringIO()
    report.render_text(d, Console(file=wide, width=200))
    assert "breaker" in wide.getvalue() and "narrow output" not in wide.getvalue()

    narrow = io.StringIO()
    report.render_text(d, Console(file=narrow, width=70))
    text = narrow.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 70
    header = next(line for line in text.splitlines() if line.startswith("downstream"))
    assert [c.strip() for c in header.split("┃")[1:]] == ["p50", "crit p99"]
    assert "narrow output: calls, p99, self p50" in " ".join(text.split())
    # wrapped at a word boundary, never cut: the whole name is there, in order
    assert f"{long_service} {long_op}" in " ".join(
        line.split("│")[0].strip() for line in text.splitlines() if "│" in line
    )
