"""Config keys of HTTP/2 and gRPC: upstreams.<name>.protocol, limits.h2_max_concurrent_streams,
gRPC codes in retries.on."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, build_config


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build_config(data, env={})
    return exc.value.problems


def test_defaults() -> None:
    c = build_config({"service": {"name": "bff"}}, env={})
    assert c.policy("x").protocol == "auto"
    assert c.limits.h2_max_concurrent_streams == 100


def test_protocol_and_grpc_retry_codes_accepted() -> None:
    c = build_config(
        {
            "service": {"name": "bff"},
            "upstreams": {
                "greeter": {
                    "protocol": "h2c",
                    "retries": {"on": ["connect_failure", "unavailable", "resource_exhausted"]},
                }
            },
            "limits": {"h2_max_concurrent_streams": 250},
        },
        env={},
    )
    assert c.policy("greeter").protocol == "h2c"
    assert c.policy("greeter").retries.on == [
        "connect_failure",
        "unavailable",
        "resource_exhausted",
    ]
    assert c.limits.h2_max_concurrent_streams == 250


def test_bad_values_name_their_field() -> None:
    found = problems(
        {
            "service": {"name": "bff"},
            "upstreams": {"greeter": {"protocol": "h3", "retries": {"on": ["unavailabel"]}}},
            "limits": {"h2_max_concurrent_streams": 0},
        }
    )
    assert any(p.startswith("upstreams.greeter.protocol:") for p in found), found
    assert any(
        p.startswith("upstreams.greeter.retries.on:") and "unavailable" in p for p in found
    ), found
    assert any(p.startswith("limits.h2_max_concurrent_streams:") for p in found), found
