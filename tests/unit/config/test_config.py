from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import ConfigError, build_config, parse_duration, parse_size, redacted


def problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build_config(data, env=env or {})
    return exc.value.problems


def test_defaults_follow_design():
    c = build_config({"service": {"name": "bff"}}, env={})
    p = c.policy("anything")
    assert (p.timeouts.connect, p.timeouts.per_try, p.timeouts.total) == (1.0, 3.0, 10.0)
    assert p.circuit_breaker.failure_ratio == 0.5 and p.circuit_breaker.reset_timeout == 30.0
    assert p.load_balancer == "ewma"
    assert c.listeners.outbound == "127.0.0.1:15001"
    assert c.limits.retry_buffer_bytes == 65536
    assert c.logging.access_log is False


def test_every_problem_reported_at_once_with_field_paths():
    found = problems(
        {
            "service": {"name": "bff"},
            "upstreams": {"default": {"timeouts": {"per_try": "3 secs"}}},
            "tracing": {"ratio": 2},
            "bogus": 1,
        }
    )
    assert any(p.startswith("upstreams.default.timeouts.per_try: invalid duration") for p in found)
    assert "bogus: unknown key" in found
    assert any(p.startswith("tracing.ratio:") for p in found)


def test_service_name_required():
    assert any(p.startswith("service") for p in problems({}))


def test_upstream_policy_deep_merged_over_default():
    c = build_config(
        {
            "service": {"name": "bff"},
            "upstreams": {
                "default": {
                    "timeouts": {"per_try": "2s", "total": "5s"},
                    "load_balancer": "random",
                },
                "document-service": {"timeouts": {"per_try": "1s"}},
            },
        },
        env={},
    )
    doc = c.policy("document-service")
    assert (doc.timeouts.per_try, doc.timeouts.total, doc.load_balancer) == (1.0, 5.0, "random")
    assert c.policy("other").timeouts.per_try == 2.0


def test_error_path_names_the_upstream_key_the_user_wrote():
    found = problems(
        {
            "service": {"name": "bff"},
            "upstreams": {"document-service": {"timeouts": {"per_tri": "1s"}}},
        }
    )
    assert found == ["upstreams.document-service.timeouts.per_tri: unknown key"]


def test_env_overrides_and_standard_variables():
    env = {
        "SIDECAR_DISCOVERY__CONSUL__WAIT": "30s",
        "SIDECAR_LIMITS__MAX_CONNECTIONS": "5",
        "CONSUL_HTTP_ADDR": "consul:8500",
        "CONSUL_HTTP_TOKEN": "s3cret",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_SERVICE_NAME": "renamed",
    }
    c = build_config({"service": {"name": "bff"}}, env=env)
    assert c.discovery.consul is not None
    assert c.discovery.consul.address == "http://consul:8500"
    assert c.discovery.consul.wait == 30.0
    assert c.limits.max_connections == 5
    assert c.tracing.endpoint == "http://jaeger:4317" and c.tracing.ratio == 0.25
    assert c.service.name == "renamed"
    assert redacted(c)["discovery"]["consul"]["token"] == "<redacted>"
    assert "s3cret" not in str(redacted(c))


def test_bad_env_value_reported_with_path():
    found = problems({"service": {"name": "bff"}}, env={"SIDECAR_LIMITS__MAX_CONNECTIONS": "many"})
    assert any(p.startswith("limits.max_connections:") for p in found)


def test_retry_conditions_validated():
    found = problems(
        {
            "service": {"name": "bff"},
            "upstreams": {"default": {"retries": {"on": [404, "sometimes"]}}},
        }
    )
    assert len(found) == 1 and "404" in found[0]


def test_duplicate_listen_ports_rejected():
    found = problems(
        {
            "service": {"name": "bff"},
            "listeners": {"inbound": "0.0.0.0:9000", "admin": "0.0.0.0:9000"},
        }
    )
    assert any("both listen on port 9000" in p for p in found)


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("3s", 3.0), ("1m", 60.0), ("1h", 3600.0), (2, 2.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "n"), [("64KiB", 65536), ("8MiB", 8 * 1024 * 1024), (10, 10)])
def test_sizes(text, n):
    assert parse_size(text) == n


@given(st.text(max_size=12))
def test_duration_parser_never_crashes_on_garbage(text):
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= 0


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_roundtrip(n, unit):
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


def test_listener_connection_budgets_default_to_limits_and_are_checked():
    c = build_config({"service": {"name": "bff"}}, env={})
    assert c.listeners.inbound_max_connections is None  # each listener: limits.max_connections
    c = build_config(
        {"service": {"name": "bff"}, "listeners": {"inbound_max_connections": 500}}, env={}
    )
    assert c.listeners.inbound_max_connections == 500
    found = problems({"service": {"name": "bff"}, "listeners": {"outbound_max_connections": 0}})
    assert [p.split(":")[0] for p in found] == ["listeners.outbound_max_connections"]
