"""What `check-config` catches that would otherwise fail only at run time: address shapes,
ports, listeners that collide, names the code does not know, and files that can't be read.
Every problem is `field.path: reason`, all of them at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, build_config
from sidecar.config_check import file_problems


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build_config({"service": {"name": "bff"}, **data}, env={})
    return exc.value.problems


def test_an_endpoint_written_as_a_url_says_how_to_write_it() -> None:
    (found,) = problems({"discovery": {"static": {"user": ["http://127.0.0.1:8001/v1"]}}})
    assert found == (
        "discovery.static.user.0: invalid address 'http://127.0.0.1:8001/v1': an endpoint is "
        "host:port or https://host:port, without a path, query or user"
    )
    (found,) = problems({"discovery": {"static": {"user": ["ftp://127.0.0.1:8001"]}}})
    assert "scheme ftp:// is not supported, write host:port or https://host:port" in found


def test_an_https_endpoint_is_accepted() -> None:
    config = build_config(
        {"service": {"name": "bff"}, "discovery": {"static": {"user": ["https://user.internal"]}}},
        env={},
    )
    assert config.discovery.static["user"] == ["https://user.internal"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bad host:80", "'bad host' is not a host name or IP address"),
        ("127.0.0.1:0", "port 0 cannot be connected to"),
        ("127.0.0.1:65536", "expected host:port with port 0-65535"),
        ("127.0.0.1", "expected host:port"),
        ("user/v1:80", "'user/v1' is not a host name or IP address"),
    ],
)
def test_endpoint_shapes_and_ports(address: str, reason: str) -> None:
    (found,) = problems({"discovery": {"static": {"user": [address]}}})
    assert found.startswith("discovery.static.user.0: invalid address")
    assert reason in found


def test_good_endpoint_shapes_pass() -> None:
    good = ["10.0.0.1:8001", "[::1]:8001", "user-service:80", "user_svc.ns.svc:8080"]
    config = build_config({"service": {"name": "bff"}, "discovery": {"static": {"u": good}}}, {})
    assert config.discovery.static["u"] == good


def test_listener_port_out_of_range() -> None:
    (found,) = problems({"listeners": {"admin": "0.0.0.0:70000"}})
    assert found.startswith("listeners.admin: invalid address '0.0.0.0:70000'")


def test_service_address_is_a_host_not_a_url() -> None:
    (found,) = problems({"service": {"name": "bff", "address": "http://127.0.0.1"}})
    assert found.startswith("service.address: invalid address 'http://127.0.0.1'")
    assert "e.g. '127.0.0.1'" in found


def test_every_listener_collision_is_reported_at_once() -> None:
    found = problems(
        {
            "listeners": {
                "inbound": "0.0.0.0:9000",
                "outbound": "127.0.0.1:9000",
                "admin": "0.0.0.0:9090",
            },
            "upstreams": {"user": {"listen": "127.0.0.1:9090"}},
        }
    )
    assert found == [
        "listeners.outbound: listeners.inbound and listeners.outbound both listen on port 9000",
        "upstreams.user.listen: listeners.admin and upstreams.user.listen both listen on port 9090",
    ]


def test_port_zero_listeners_never_collide() -> None:
    config = build_config(
        {
            "service": {"name": "bff"},
            "listeners": {"inbound": "127.0.0.1:0", "outbound": "127.0.0.1:0"},
        },
        {},
    )
    assert config.listeners.inbound == "127.0.0.1:0"


def test_inbound_listener_on_the_apps_own_port_would_forward_to_itself() -> None:
    (found,) = problems(
        {"service": {"name": "bff", "port": 15000}, "listeners": {"inbound": "0.0.0.0:15000"}}
    )
    assert found.startswith("service.port: 127.0.0.1:15000 is the sidecar's own listeners.inbound")


def test_unknown_balancer_and_sampler_names() -> None:
    found = problems(
        {
            "upstreams": {"user": {"load_balancer": "fastest"}},
            "tracing": {"sampler": "sometimes", "propagators": ["w3c"]},
        }
    )
    assert any(
        p.startswith("upstreams.user.load_balancer: unknown load_balancer 'fastest': expected")
        and "'ewma'" in p
        for p in found
    ), found
    assert any(
        p.startswith("tracing.sampler: unknown sampler 'sometimes': expected") for p in found
    ), found
    assert any(p.startswith("tracing.propagators.0: unknown propagators 'w3c'") for p in found)


@pytest.mark.parametrize("endpoint", ["grpc://collector:4317", "http://collector", "collector"])
def test_otlp_endpoint_shape(endpoint: str) -> None:
    (found,) = problems({"tracing": {"endpoint": endpoint}})
    assert found.startswith(f"tracing.endpoint: invalid OTLP endpoint {endpoint!r}")


@pytest.mark.parametrize(
    "endpoint", ["http://jaeger:4317", "https://otel.example.com:443/v1/traces", "jaeger:4318"]
)
def test_good_otlp_endpoints_pass(endpoint: str) -> None:
    config = build_config({"service": {"name": "bff"}, "tracing": {"endpoint": endpoint}}, {})
    assert config.tracing.endpoint == endpoint


# ---------------------------------------------------------------- files


def test_missing_discovery_file_relative_to_the_config(tmp_path: Path) -> None:
    data = {"discovery": {"file": {"path": "endpoints.yaml"}}}
    assert file_problems(data, tmp_path) == [
        f"discovery.file.path: cannot read {tmp_path / 'endpoints.yaml'}: No such file or directory"
    ]
    (tmp_path / "endpoints.yaml").write_text("user: ['127.0.0.1:8001']\n")
    assert file_problems(data, tmp_path) == []


def test_unreadable_discovery_file(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yaml").mkdir()  # unreadable as a file, even for root
    (found,) = file_problems({"discovery": {"file": {"path": "endpoints.yaml"}}}, tmp_path)
    assert found.startswith("discovery.file.path: cannot read")
    assert "Is a directory" in found


def test_discovery_file_that_would_be_rejected_at_run_time(tmp_path: Path) -> None:
    (tmp_path / "endpoints.yaml").write_text("user: ['http://10.0.0.1:8001/v1']\n")
    (found,) = file_problems({"discovery": {"file": {"path": "endpoints.yaml"}}}, tmp_path)
    assert found.startswith("discovery.file.path: ")
    assert "invalid address 'http://10.0.0.1:8001/v1'" in found


def test_tls_files_are_checked_wherever_they_appear(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    data = {
        "upstreams": {
            "user": {"tls": {"ca_file": "ca.pem", "client_cert": "/nonexistent/client.pem"}}
        }
    }
    assert file_problems(data, tmp_path) == [
        "upstreams.user.tls.client_cert: cannot read /nonexistent/client.pem: "
        "No such file or directory"
    ]
