"""Parsing what an admin port answers."""

from __future__ import annotations

from sidecar.telemetry.metrics import Metrics
from sidecar.top.scrape import (
    EndpointCount,
    labels_of,
    normalise_admin,
    parse_breakers,
    parse_endpoints,
    parse_metrics,
)


def test_metrics_text_becomes_samples_by_name_and_label_set() -> None:
    m = Metrics("bff")
    m.observe_client("users", "GET", 200, "", 0.02)
    m.retry("users", "reset")
    series = parse_metrics(m.render(None)[0].decode())
    assert not any(name.endswith("_created") for name in series)
    retries = series["sidecar_retries_total"]
    assert retries == {labels_of({"service": "bff", "upstream": "users", "reason": "reset"}): 1.0}
    buckets = series["http_client_request_duration_seconds_bucket"]
    le = {dict(ls)["le"]: v for ls, v in buckets.items()}
    assert le["0.01"] == 0.0 and le["0.025"] == 1.0 and le["+Inf"] == 1.0


def test_admin_views_shape() -> None:
    assert parse_breakers(
        {"users": {"state": "open", "calls_in_window": 3}, "bad": "x", "worse": {"state": 2}}
    ) == {"users": "open"}
    assert parse_breakers([]) == {}
    doc = {
        "users": [{"address": "a", "ejected": True}, {"address": "b", "ejected": False}],
        "docs": [],
        "bad": {},
    }
    assert parse_endpoints(doc) == {"users": EndpointCount(1, 1), "docs": EndpointCount(0, 0)}


def test_admin_addresses_get_a_scheme_and_lose_the_trailing_slash() -> None:
    assert normalise_admin("127.0.0.1:15090") == "http://127.0.0.1:15090"
    assert normalise_admin(" https://h:1/ ") == "https://h:1"
