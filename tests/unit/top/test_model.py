"""The snapshot math of `sidecar top` on exposition text from our real Metrics registry, with
answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from sidecar.telemetry.metrics import Metrics
from sidecar.top.model import (
    HistogramDelta,
    Row,
    Tracker,
    histogram_quantile,
    rows_between,
    sort_rows,
)
from sidecar.top.scrape import EndpointCount, Scrape, ScrapeError, parse_metrics

ADMIN = "http://127.0.0.1:15090"


def scrape(m: Metrics, at: float, **extra: object) -> Scrape:
    body, _ = m.render(None)
    return Scrape(ADMIN, at, parse_metrics(body.decode()), **extra)  # type: ignore[arg-type]


def by_name(rows: list[Row], kind: str = "upstream") -> dict[str, Row]:
    return {r.name: r for r in rows if r.kind == kind}


def ok(m: Metrics, upstream: str, seconds: float, n: int = 1) -> None:
    for _ in range(n):
        m.observe_client(upstream, "GET", 200, "", seconds)


def test_rates_and_success_rate_cover_only_the_window() -> None:
    m = Metrics("bff")
    ok(m, "users", 0.003, 500)  # before the window: must not count
    m.retry("users", "connect_failure")
    first = scrape(m, at=100.0)
    ok(m, "users", 0.003, 30)
    m.observe_client("users", "GET", 503, "503", 0.003)
    m.observe_client("users", "GET", 0, "upstream_connect_failure", 0.001)
    m.observe_client("users", "GET", 404, "", 0.002)  # the caller's mistake: a success
    for _ in range(4):
        m.retry("users", "connect_failure")
    for _ in range(6):
        m.rejected("users", "circuit_open")
    row = by_name(rows_between(first, scrape(m, at=102.0)))["users"]
    # calls = 33 attempts + 6 refused; 31 succeeded
    assert row.rps == pytest.approx(39 / 2)
    assert row.success_rate == pytest.approx(31 / 39)
    assert row.retries_per_s == pytest.approx(2.0)
    assert row.rejected_per_s == pytest.approx(3.0)


def test_percentiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    m = Metrics("bff")
    ok(m, "docs", 4.0, 1000)  # slow history before the window must not move p99
    first = scrape(m, at=0.0)
    ok(m, "docs", 0.007, 50)  # bucket (0.005, 0.01]
    ok(m, "docs", 0.2, 50)  # bucket (0.1, 0.25]
    row = by_name(rows_between(first, scrape(m, at=1.0)))["docs"]
    # p50: rank 50 is the top of (0.005, 0.01] → 0.01; p99: rank 99 → 0.1 + 0.15 * 49/50
    assert row.p50_s == pytest.approx(0.01)
    assert row.p99_s == pytest.approx(0.1 + 0.15 * 49 / 50)


def test_histogram_quantile_edges() -> None:
    inf = math.inf
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 4.0)]) is None  # no +Inf bucket: not a histogram
    # the first bucket interpolates from zero
    assert histogram_quantile(0.25, [(0.1, 4.0), (inf, 4.0)]) == pytest.approx(0.025)
    # a rank beyond the last finite bound yields that bound, as Prometheus does
    assert histogram_quantile(0.99, [(0.1, 1.0), (1.0, 2.0), (inf, 10.0)]) == 1.0
    assert HistogramDelta({0.1: 1.0, inf: 2.0}).quantile(0.5) == pytest.approx(0.1)


def test_a_restarted_sidecar_counts_its_new_totals_not_negative_rates() -> None:
    before = Metrics("bff")
    ok(before, "users", 0.003, 100)
    for _ in range(50):
        before.retry("users", "reset")
    first = scrape(before, at=10.0)
    after = Metrics("bff")  # the process restarted: every counter starts again
    ok(after, "users", 0.2, 8)
    after.observe_client("users", "GET", 503, "503", 0.2)
    after.retry("users", "reset")
    row = by_name(rows_between(first, scrape(after, at=12.0)))["users"]
    assert row.rps == pytest.approx(9 / 2)
    assert row.success_rate == pytest.approx(8 / 9)
    assert row.retries_per_s == pytest.approx(0.5)
    assert row.p50_s is not None and 0.1 < row.p50_s <= 0.25


def test_one_reset_series_among_many() -> None:
    m = Metrics("bff")
    ok(m, "users", 0.003, 10)
    first = scrape(m, at=0.0)
    ok(m, "users", 0.003, 5)
    second = scrape(m, at=1.0)
    # hand-edit: the 200 series went from 10 to 5 → reset, counts 5 (not -5, not 0)
    replaced = {
        name: {ls: (5.0 if "_count" in name or "_bucket" in name else v) for ls, v in s.items()}
        for name, s in second.series.items()
    }
    row = by_name(rows_between(first, Scrape(ADMIN, 1.0, replaced)))["users"]
    assert row.rps == pytest.approx(5.0)


def test_the_local_app_is_an_inbound_row_and_routes_are_rows_of_their_own() -> None:
    m = Metrics("bff", ["/users/{id}"])
    first = scrape(m, at=0.0)
    m.observe_client("bff", "GET", 200, "", 0.01)  # the inbound hop to the local app
    m.observe_client("bff", "GET", 500, "500", 0.01)
    m.observe_server("GET", "/users/{id}", 200, "", 0.02)
    m.observe_server("GET", "other", 503, "no_healthy_endpoints", 0.001)
    rows = rows_between(first, scrape(m, at=1.0))
    assert "bff" not in by_name(rows)  # not an upstream of itself
    app = by_name(rows, "inbound")["bff"]
    assert (app.rps, app.success_rate) == (2.0, 0.5)
    routes = by_name(rows, "route")
    assert routes["/users/{id}"].success_rate == 1.0
    assert routes["other"].success_rate == 0.0


def test_breaker_and_endpoints_prefer_the_admin_views_and_fall_back_to_gauges() -> None:
    m = Metrics("bff")
    m.breaker_state("users", "open")
    m.endpoints("users", 1, 2)
    m.endpoints("docs", 3, 0)
    first = scrape(m, at=0.0)
    from_gauges = by_name(rows_between(first, scrape(m, at=1.0)))
    assert from_gauges["users"].breaker == "open"
    assert (from_gauges["users"].endpoints_healthy, from_gauges["users"].endpoints_ejected) == (
        1,
        2,
    )
    assert from_gauges["docs"].breaker is None  # no transition yet, no admin view
    assert from_gauges["users"].success_rate is None and from_gauges["users"].rps == 0.0
    views = scrape(
        m,
        at=1.0,
        breakers={"users": "half_open", "docs": "closed"},
        endpoints={"users": EndpointCount(3, 0)},
    )
    from_views = by_name(rows_between(first, views))
    assert from_views["users"].breaker == "half_open"
    assert from_views["docs"].breaker == "closed"
    assert from_views["users"].endpoints_ejected == 0


def row(
    name: str,
    sr: float | None,
    p99: float | None = None,
    rps: float = 1.0,
    breaker: str | None = None,
    ejected: int | None = None,
) -> Row:
    return Row(
        ADMIN,
        "bff",
        "upstream",
        name,
        rps,
        sr,
        None,
        p99,
        breaker=breaker,
        endpoints_ejected=ejected,
    )


def test_worst_first_lowest_success_then_highest_p99_idle_last() -> None:
    rows = [
        row("fast-ok", 1.0, 0.01),
        row("idle", None, rps=0.0),
        row("idle-open", None, rps=0.0, breaker="open"),
        row("slow-ok", 1.0, 0.9),
        row("failing", 0.5, 0.01),
        row("flaky", 0.97, 0.02),
        row("ejecting", 1.0, 0.01, ejected=1),
    ]
    assert [r.name for r in sort_rows(rows)] == [
        "failing",
        "flaky",
        "idle-open",
        "ejecting",
        "slow-ok",
        "fast-ok",
        "idle",
    ]
    assert [r.name for r in sort_rows(rows, "p99")][:2] == ["slow-ok", "flaky"]
    assert sort_rows(rows, "name")[0].name == "ejecting"
    with pytest.raises(ValueError):
        sort_rows(rows, "colour")


def test_tracker_needs_two_scrapes_and_survives_an_outage() -> None:
    m = Metrics("bff")
    tracker = Tracker([ADMIN])
    assert tracker.update([scrape(m, at=0.0)]).rows == []
    ok(m, "users", 0.003, 10)
    down = tracker.update([ScrapeError(ADMIN, "cannot reach it")])
    assert down.rows == [] and down.reachable == 0 and down.window_s is None
    ok(m, "users", 0.003, 10)
    snap = tracker.update([scrape(m, at=4.0)])  # the delta spans the outage
    assert snap.window_s == 4.0 and snap.errors == []
    assert by_name(snap.rows)["users"].rps == pytest.approx(20 / 4)


RETRIEVE = ("demo.retrieval.v1.Retrieval", "Retrieve")


def test_grpc_methods_get_rows_with_their_status_codes() -> None:
    m = Metrics("bff")
    m.rpc.observe_client("retrieval", RETRIEVE, 0, 0.004)  # before the window
    first = scrape(m, at=10.0)
    for _ in range(16):
        m.rpc.observe_client("retrieval", RETRIEVE, 0, 0.004)
    for _ in range(3):
        m.rpc.observe_client("retrieval", RETRIEVE, 14, 0.001)  # UNAVAILABLE: a failure
    m.rpc.observe_client("retrieval", RETRIEVE, 5, 0.002)  # NOT_FOUND: an answer
    for _ in range(4):
        m.rpc.observe_server(("demo.Agent", "Ask"), 0, 0.05)
    m.rpc.observe_client("bff", ("demo.Agent", "Ask"), 0, 0.05)  # the inbound hop: not "out"
    rows = rows_between(first, scrape(m, at=12.0))
    out = by_name(rows, "rpc_out")
    assert set(out) == {"retrieval demo.retrieval.v1.Retrieval/Retrieve"}
    row = out["retrieval demo.retrieval.v1.Retrieval/Retrieve"]
    assert row.rps == pytest.approx(20 / 2)
    assert row.success_rate == pytest.approx(17 / 20)
    assert row.grpc_status == (("OK", 8.0), ("UNAVAILABLE", 1.5), ("NOT_FOUND", 0.5))
    assert row.p50_s is not None and 0.0025 <= row.p50_s <= 0.005
    served = by_name(rows, "rpc_in")["demo.Agent/Ask"]
    assert served.rps == pytest.approx(2.0) and served.success_rate == 1.0
    assert served.grpc_status == (("OK", 2.0),)
    # HTTP rows are unchanged by gRPC traffic, and carry no gRPC status.
    assert all(r.grpc_status is None for r in rows if r.kind in ("upstream", "inbound", "route"))


def test_no_grpc_traffic_no_grpc_rows() -> None:
    m = Metrics("bff")
    first = scrape(m, at=1.0)
    ok(m, "users", 0.003, 5)
    rows = rows_between(first, scrape(m, at=2.0))
    assert not [r for r in rows if r.kind in ("rpc_out", "rpc_in")]
