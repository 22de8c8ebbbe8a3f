"""Egress to allow-listed external hosts: TLS origination (full L7 policy) and CONNECT
tunnels (end-to-end TLS), with DNS answered by a resolver seam so the external names land on
a loopback TLS server; refusals for names outside the list, forbidden addresses and ports."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import trustme

from sidecar.app import Sidecar
from sidecar.config import build_config
from tests.conftest import free_port, require_binary
from tests.integration.protocols.tls_upstream import TlsUpstream

API = "api.example.test"
MULTI = "multi.example.test"  # its first address refuses, its second is the upstream
DEAD = "dead.example.test"  # every address refuses
DNS = {
    API: ["127.0.0.1"],
    MULTI: ["127.0.0.2", "127.0.0.1"],
    DEAD: ["127.0.0.2", "127.0.0.4"],
    "metadata.example.test": ["169.254.169.254"],
    "intranet.example.test": ["10.20.30.40"],
}


async def fake_dns(name: str) -> list[str]:
    if name in DNS:
        return DNS[name]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class Env:
    def __init__(self, sc: Sidecar, up: TlsUpstream, ca_file: str) -> None:
        self.sc, self.up, self.ca_file = sc, up, ca_file
        self.proxy = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"

    def sample(self, name: str, **labels: str) -> float:
        value = self.sc.metrics.registry.get_sample_value(name, {"service": "app", **labels})
        return 0.0 if value is None else value


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    up = await TlsUpstream(ca.issue_cert(API, MULTI, DEAD)).start()
    config = build_config(
        {
            "service": {"name": "app"},
            "listeners": {k: f"127.0.0.1:{free_port()}" for k in ("inbound", "outbound", "admin")},
            "tracing": {"exporter": "none"},
            "egress": {
                "allow": [API, MULTI, DEAD, "metadata.example.test", "intranet.example.test"],
                "allow_private": ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.4/32"],
                "connect_ports": [443, up.port],
            },
            "upstreams": {
                "default": {"retries": {"attempts": 0}},
                API: {"tls": {"ca_file": ca_file}},
                MULTI: {"tls": {"ca_file": ca_file}},
                DEAD: {"tls": {"ca_file": ca_file}},
            },
        },
        env={},
    )
    sc = Sidecar(config, host_lookup=fake_dns)
    await sc.start()
    yield Env(sc, up, ca_file)
    await sc.drain(timeout=1)
    await sc.stop()
    await up.stop()


async def _get(env: Env, host: str, path: str = "/hello") -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{env.proxy}{path}", headers={"Host": host}) as resp,
    ):
        return resp.status, dict(resp.headers), json.loads(await resp.read())


async def test_tls_origination_to_an_allow_listed_name(env: Env) -> None:
    status, _, body = await _get(env, f"{API}:{env.up.port}", "/v1/models")
    assert status == 200 and body["path"] == "/v1/models"
    assert body["host"] == f"{API}:{env.up.port}"
    assert env.up.server_names == [API]  # SNI: the external name, verified against its cert
    # The app's plain-HTTP call, HTTP_PROXY style (absolute URI), same route.
    response = await asyncio.to_thread(
        requests.get, f"http://{API}:{env.up.port}/v2", proxies={"http": env.proxy}, timeout=5
    )
    assert response.status_code == 200 and response.json()["path"] == "/v2"
    assert env.up.handshakes == 1  # pooled like any upstream
    client = env.sample(
        "http_client_request_duration_seconds_count",
        upstream=API,
        http_request_method="GET",
        http_response_status_code="200",
        error_type="",
    )
    assert client == 2


async def test_connect_tunnel_with_requests_https_proxy(env: Env) -> None:
    def call() -> tuple[int, Any]:
        # HTTPS_PROXY as the app would set it; the response is closed so the tunnel ends.
        with (
            requests.Session() as session,
            session.get(
                f"https://{API}:{env.up.port}/through-connect",
                proxies={"https": env.proxy},
                verify=env.ca_file,
                timeout=5,
            ) as response,
        ):
            return response.status_code, response.json()

    status, body = await asyncio.to_thread(call)
    assert status == 200 and body["path"] == "/through-connect"
    assert env.up.server_names == [API]  # the app's own TLS, end to end

    deadline = asyncio.get_running_loop().time() + 5
    while len(env.sc.state.tunnels):  # the tunnel ends when the app's connection closes
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert env.sample("sidecar_upgrades_total", upstream=API, protocol="connect") == 1
    assert env.sample("sidecar_tunnel_bytes_total", upstream=API, direction="sent") > 0
    assert env.sample("sidecar_tunnel_bytes_total", upstream=API, direction="received") > 0


async def test_connect_tunnel_with_curl(env: Env) -> None:
    curl = require_binary("curl")
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "--max-time", "5", "--cacert", env.ca_file, "-x", env.proxy,
        f"https://{API}:{env.up.port}/curl",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["path"] == "/curl"


async def test_a_refusing_address_hands_over_to_the_next_one(env: Env) -> None:
    status, _, body = await _get(env, f"{MULTI}:{env.up.port}", "/second-address")
    assert status == 200 and body["path"] == "/second-address"
    assert env.up.server_names == [MULTI]  # TLS to the name, on the address that answered
    # CONNECT tunnels walk the addresses the same way.
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(env))
    target = f"{MULTI}:{env.up.port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")


async def test_every_address_refusing_is_a_connect_failure(env: Env) -> None:
    status, headers, body = await _get(env, f"{DEAD}:{env.up.port}")
    assert status == 502 and headers["x-sidecar-error"] == "upstream_connect_failure"
    assert body["error"] == "upstream_connect_failure"
    # The last address's error, in the message an unanswered connect has always had.
    assert body["message"].startswith(f"connect to {DEAD}:{env.up.port} failed: ")
    assert "127.0.0.4" in body["message"]


async def test_names_outside_the_allow_list_have_no_route(env: Env) -> None:
    status, headers, body = await _get(env, "other.example.test")
    assert status == 404 and headers["x-sidecar-error"] == "no_route"
    assert body["error"] == "no_route"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("metadata.example.test", "link-local"), ("intranet.example.test", "private")],
)
async def test_allow_listed_name_resolving_to_a_forbidden_address_is_refused(
    env: Env, name: str, reason: str
) -> None:
    status, headers, body = await _get(env, name)
    assert status == 502 and headers["x-sidecar-error"] == "upstream_connect_failure"
    assert f"({reason})" in body["message"] and "egress.allow_private" in body["message"]
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(env))
    writer.write(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n".encode())
    status_line, reply = await _reply(reader)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 502")
    assert reply["error"] == "upstream_connect_failure" and f"({reason})" in reply["message"]
    assert env.sample("sidecar_tunnel_connect_errors_total", upstream=name) == 1


async def test_an_http2_caller_gets_the_same_address_check(env: Env) -> None:
    """An HTTP/2 caller (gRPC, h2c) reaches the upstream through the HTTP/2 client: its
    connections go through the same egress dialer, so a forbidden address is refused too."""
    curl = require_binary("curl")
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "--max-time", "5", "--http2-prior-knowledge", "-D", "-",
        "-H", "Host: metadata.example.test", f"{env.proxy}/latest/meta-data",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    head, _, body = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/2 502"), head
    assert "x-sidecar-error: upstream_connect_failure" in head
    message = json.loads(body)["message"]
    assert "(link-local)" in message and "egress.allow_private" in message


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        ("elsewhere.example.test:443", 403, "not listed in egress.allow"),
        ("127.0.0.1:443", 403, "not listed in egress.allow"),
        (f"{API}:8443", 403, "egress.connect_ports"),
        (f"{API}", 400, "host:port"),
    ],
)
async def test_connect_outside_the_allow_list_or_ports_is_refused(
    env: Env, target: str, status: int, message: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(env))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status_line, reply = await _reply(reader)
    writer.close()
    assert status_line.startswith(f"HTTP/1.1 {status}".encode())
    assert reply["error"] == "bad_request" and message in reply["message"]


async def test_connect_without_egress_is_still_405(sidecar_factory: Callable[..., Any]) -> None:
    sc = await sidecar_factory({"service": {"name": "app"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.bound_port("listeners.outbound"))
    writer.write(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
    status_line, reply = await _reply(reader)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 405") and reply["error"] == "bad_request"


def _port(env: Env) -> int:
    return env.sc.bound_port("listeners.outbound")


async def _reply(reader: asyncio.StreamReader) -> tuple[bytes, Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head.split(b"\r\n")[0], json.loads(await reader.readexactly(length))
