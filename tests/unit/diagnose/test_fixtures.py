"""The ride-dispatch application (tests/fixtures/traces, HotROD's shape, see make_fixtures.py)
recorded as Jaeger JSON and as OTLP JSON lines: both give the same, known diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.diagnose import sources
from sidecar.diagnose.analysis import diagnose
from sidecar.diagnose.results import Diagnosis

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"
FILES = ["dispatch.jaeger.json", "dispatch.otlp.jsonl"]
FRONTEND = "frontend HTTP GET /dispatch"
DRIVER = "driver /driver.DriverService/FindNearest"


def run(name: str) -> Diagnosis:
    return diagnose(sources.read_file(FIXTURES / name), "frontend", None)


@pytest.mark.parametrize("name", FILES)
def test_dispatch_n_plus_one_deep_in_the_tree_is_the_biggest_fix(name: str) -> None:
    d = run(name)
    assert d.operation == "HTTP GET /dispatch" and d.latency.count == 10
    assert {h.name for h in d.hops} == {
        "customer HTTP GET /customer",
        "mysql SQL SELECT",
        DRIVER,
        "redis FindDriverIDs",
        "redis GetDriver",
        "route HTTP GET /route",
    }
    chain = d.critical_chain
    assert chain is not None and chain.text == "frontend → driver → redis GetDriver \u00d712"
    assert chain.share == pytest.approx(0.71, abs=0.02)
    # the largest saving of all the patterns: 11 of the 12 sequential 12 ms GetDriver calls
    top = d.patterns[0]
    assert (top.kind, top.hop, top.calls, top.path) == (
        "repeated_calls",
        "redis GetDriver",
        12,
        (FRONTEND, DRIVER),
    )
    assert top.saving_ms == pytest.approx(132, abs=2)
    pattern_findings = [f for f in d.findings if f.kind in ("repeated_calls", "sequential_calls")]
    assert pattern_findings[0] == top.finding
    assert pattern_findings[0].message.startswith(
        "in frontend → driver: redis GetDriver is called 12 times one after the other (N+1"
    )
    # customer, driver and route one after the other (route needs driver's answer: "may")
    [seq] = d.sequential
    assert seq.depth == 0 and "may save ~52 ms" in seq.finding.message
    # the route pool's ten calls overlap: not an N+1
    assert [p.hop for p in d.repeated] == ["redis GetDriver"]


@pytest.mark.parametrize("name", FILES)
def test_dispatch_errors_retries_and_gaps(name: str) -> None:
    d = run(name)
    route = next(h for h in d.hops if h.name == "route HTTP GET /route")
    assert (route.count, route.errors, route.retries) == (110, 10, 10)
    assert route.gap_before_p50_ms == pytest.approx(2.0, abs=0.05)
    redis = next(h for h in d.hops if h.name == "redis GetDriver")
    assert redis.errors == 3 and redis.count == 123
    kinds = [f.kind for f in d.findings]
    assert "hop_gap" in kinds and "errors" in kinds


def test_both_formats_agree() -> None:
    jaeger, otlp = run(FILES[0]), run(FILES[1])
    assert jaeger.hops == otlp.hops
    assert [f.message for f in jaeger.findings] == [f.message for f in otlp.findings]
