"""Config of endpoint health: `health_check` (off by default) and the outlier counters."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, build_config


def test_health_check_is_off_by_default_and_merges_over_default() -> None:
    cfg = build_config(
        {
            "service": {"name": "bff"},
            "upstreams": {
                "default": {"health_check": {"path": "/ready", "interval": "2s"}},
                "users": {"health_check": {"timeout": "250ms"}},
            },
        },
        env={},
    )
    assert build_config({"service": {"name": "bff"}}, env={}).policy("x").health_check is None
    hc = cfg.policy("users").health_check
    assert hc is not None
    assert (hc.path, hc.interval, hc.timeout) == ("/ready", 2.0, 0.25)
    assert (hc.unhealthy_threshold, hc.healthy_threshold) == (3, 2)


@pytest.mark.parametrize(
    ("health_check", "problem"),
    [
        ({"interval": "0s"}, "upstreams.users.health_check.interval: must be greater than 0"),
        ({"path": "healthz"}, "upstreams.users.health_check.path: String should match"),
        ({"path": "/a b"}, "upstreams.users.health_check.path: String should match"),
        ({"unhealthy_threshold": 0}, "upstreams.users.health_check.unhealthy_threshold: "),
        ({"expected": [200]}, "upstreams.users.health_check.expected: unknown key"),
    ],
)
def test_health_check_errors_name_the_field(health_check: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            {"service": {"name": "bff"}, "upstreams": {"users": {"health_check": health_check}}},
            env={},
        )
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_outlier_counters_defaults_and_off() -> None:
    od = build_config({"service": {"name": "bff"}}, env={}).policy("x").outlier_detection
    assert (od.consecutive_local_origin_failure, od.consecutive_gateway_failure) == (3, 0)
    cfg = build_config(
        {
            "service": {"name": "bff"},
            "upstreams": {
                "default": {
                    "outlier_detection": {
                        "consecutive_local_origin_failure": 0,
                        "consecutive_gateway_failure": 4,
                    }
                }
            },
        },
        env={},
    )
    od = cfg.policy("x").outlier_detection
    assert (od.consecutive_local_origin_failure, od.consecutive_gateway_failure) == (0, 4)
