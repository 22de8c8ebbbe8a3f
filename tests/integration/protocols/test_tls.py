"""TLS origination to upstreams, against certificates made in the test (`trustme`)."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from sidecar.config import ConfigError, build_config
from tests.integration.protocols.tls_upstream import TlsUpstream


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstreams() -> AsyncIterator[Callable[..., Any]]:
    started: list[TlsUpstream] = []

    async def start(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> TlsUpstream:
        up = await TlsUpstream(cert, client_ca).start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


def _pem(tmp_path: Path, name: str, blob: Any) -> str:
    path = tmp_path / name
    blob.write_to_path(str(path))
    return str(path)


def _config(port: int, tls: dict[str, Any] | bool | None, **extra: Any) -> dict[str, Any]:
    upstream: dict[str, Any] = {"retries": {"attempts": 0}}
    if tls is not None:
        upstream["tls"] = tls
    return {
        "service": {"name": "app"},
        "discovery": {"static": {"secure-api": [f"https://127.0.0.1:{port}"]}},
        "upstreams": {"secure-api": {**upstream, **extra}},
    }


async def _get(sc: Any, path: str = "/hello") -> tuple[int, dict[str, str], Any]:
    url = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Host": "secure-api"}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def test_verified_tls_with_sni_and_pooled_connections(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    up = await tls_upstreams(ca.issue_cert("secure-api"))
    sc = await sidecar_factory(_config(up.port, {"ca_file": _pem(tmp_path, "ca.pem", ca.cert_pem)}))
    for i in range(10):
        status, _, body = await _get(sc, f"/n/{i}")
        assert status == 200 and body["path"] == f"/n/{i}"
    # One handshake: the nine later requests reused the pooled TLS connection.
    assert up.handshakes == 1
    assert up.server_names == ["secure-api"]  # the upstream's name, the endpoint being an IP
    admin = sc.config.listeners.admin
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{admin}/admin/endpoints") as resp,
    ):
        endpoints = await resp.json()
    # A connection opened later (the pool emptied) resumes the TLS session.
    sc.client.close()
    status, _, _ = await _get(sc, "/after")
    assert status == 200
    assert up.handshakes == 2
    assert up.resumed == [False] * 10 + [True]
    assert endpoints["secure-api"][0]["tls"] == {
        "enabled": True,
        "sni": None,
        "verify": True,
        "alpn": [],
    }


async def test_wrong_ca_is_refused_with_the_reason(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    up = await tls_upstreams(ca.issue_cert("secure-api"))
    other = trustme.CA()
    sc = await sidecar_factory(
        _config(up.port, {"ca_file": _pem(tmp_path, "other.pem", other.cert_pem)})
    )
    status, headers, body = await _get(sc)
    assert status == 502
    assert headers["x-sidecar-error"] == "upstream_connect_failure"
    assert "certificate not accepted" in body["message"]
    assert "unable to get local issuer certificate" in body["message"]


async def test_system_trust_by_default_refuses_a_private_ca(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
) -> None:
    up = await tls_upstreams(ca.issue_cert("secure-api"))
    sc = await sidecar_factory(_config(up.port, None))  # https:// endpoint, no tls policy
    status, headers, body = await _get(sc)
    assert status == 502 and headers["x-sidecar-error"] == "upstream_connect_failure"
    assert "certificate" in body["message"]
    sc2 = await sidecar_factory(_config(up.port, {"verify": False}))
    status, _, _ = await _get(sc2)
    assert status == 200


async def test_sni_is_sent_and_checked_against_the_certificate(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    up = await tls_upstreams(ca.issue_cert("api.internal"))
    ca_file = _pem(tmp_path, "ca.pem", ca.cert_pem)
    good = await sidecar_factory(_config(up.port, {"ca_file": ca_file, "sni": "api.internal"}))
    status, _, _ = await _get(good)
    assert status == 200
    assert up.server_names == ["api.internal"]
    wrong = await sidecar_factory(_config(up.port, {"ca_file": ca_file, "sni": "evil.example"}))
    status, headers, body = await _get(wrong)
    assert status == 502 and headers["x-sidecar-error"] == "upstream_connect_failure"
    assert "'evil.example'" in body["message"] and "mismatch" in body["message"].lower()


async def test_client_certificate_is_presented_when_configured(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    client_ca = trustme.CA()
    up = await tls_upstreams(ca.issue_cert("secure-api"), client_ca)
    ca_file = _pem(tmp_path, "ca.pem", ca.cert_pem)
    client = client_ca.issue_cert("client.example")
    chain = _pem(tmp_path, "client.pem", client.private_key_and_cert_chain_pem)
    sc = await sidecar_factory(_config(up.port, {"ca_file": ca_file, "client_cert": chain}))
    status, _, body = await _get(sc)
    assert status == 200
    assert "client.example" in body["client"]
    plain = await sidecar_factory(_config(up.port, {"ca_file": ca_file}))
    status, _, body = await _get(plain)
    assert status == 200 and body["client"] == ""


def test_check_config_accepts_https_endpoints_and_explains_other_shapes(tmp_path: Path) -> None:
    ok = build_config(
        {
            "service": {"name": "a"},
            "discovery": {"static": {"x": ["https://api.example.com", "10.0.0.1:8443"]}},
            "upstreams": {"x": {"tls": True}},
        },
        env={},
    )
    assert ok.upstreams["x"].tls is not None and ok.upstreams["x"].tls.verify
    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "service": {"name": "a"},
                "discovery": {
                    "static": {"x": ["ftp://a:1", "https://a:443/v1", "a"]},
                },
                "upstreams": {"x": {"tls": {"ca_file": str(tmp_path / "missing.pem")}}},
            },
            env={},
        )
    problems = "\n".join(err.value.problems)
    assert "discovery.static.x.0: invalid address 'ftp://a:1': scheme ftp://" in problems
    assert "without a path" in problems
    assert "discovery.static.x.2: invalid address 'a'" in problems
    assert "upstreams.x.tls.ca_file: file" in problems and "not found" in problems


async def test_websocket_tunnel_to_a_tls_upstream(
    sidecar_factory: Callable[..., Any], ca: trustme.CA, tmp_path: Path
) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("secure-api").configure_cert(server_ctx)
    async with serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        sc = await sidecar_factory(
            _config(port, {"ca_file": _pem(tmp_path, "ca.pem", ca.cert_pem)})
        )
        outbound = sc.bound_port("listeners.outbound")
        async with connect("ws://secure-api/", host="127.0.0.1", port=outbound) as ws:
            payload = os.urandom(256 * 1024)
            await ws.send(payload)
            assert await ws.recv() == payload


async def _endpoint_state(sc: Any) -> dict[str, Any]:
    admin = sc.config.listeners.admin
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{admin}/admin/endpoints") as resp,
    ):
        endpoints: dict[str, Any] = (await resp.json())["secure-api"][0]
        return endpoints


async def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_health_checks_of_a_tls_upstream_go_over_tls(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """Probes use the upstream's TLS policy (trust, server name): a plaintext probe to a TLS
    port would fail every time and take a healthy endpoint out of rotation."""
    up = await tls_upstreams(ca.issue_cert("secure-api"))
    check = {"path": "/healthz", "interval": "50ms", "timeout": "1s", "healthy_threshold": 1}
    sc = await sidecar_factory(
        _config(
            up.port,
            {"ca_file": _pem(tmp_path, "ca.pem", ca.cert_pem)},
            health_check=check,
        )
    )

    async def healthy_after_two_probes() -> bool:
        state = await _endpoint_state(sc)
        return up.paths.count("/healthz") >= 2 and state["active"] == "healthy"

    await _until(healthy_after_two_probes, "two TLS health checks passing")
    assert set(up.server_names) == {"secure-api"}  # verified against the upstream's name
    status, _, body = await _get(sc, "/served")
    assert status == 200 and body["path"] == "/served"


async def test_health_checks_fail_when_the_certificate_is_not_trusted(
    sidecar_factory: Callable[..., Any],
    tls_upstreams: Callable[..., Any],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    up = await tls_upstreams(ca.issue_cert("secure-api"))
    other = trustme.CA()
    check = {"interval": "50ms", "timeout": "1s", "unhealthy_threshold": 2}
    sc = await sidecar_factory(
        _config(
            up.port,
            {"ca_file": _pem(tmp_path, "other.pem", other.cert_pem)},
            health_check=check,
        )
    )

    async def unhealthy() -> bool:
        return bool((await _endpoint_state(sc))["active"] == "unhealthy")

    await _until(unhealthy, "the endpoint to fail its health checks")
    assert up.paths == []  # no probe got past the handshake
    assert up.handshakes >= 2
