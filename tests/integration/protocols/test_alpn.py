"""HTTP/2 and gRPC to TLS upstreams: ALPN `h2` in the handshake, with the TLS policy's trust,
server name and session resumption; `protocol: auto` speaks what the server chose."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import trustme

from sidecar.app import Sidecar
from tests.doubles.grpc_upstream import GrpcUpstream, channel, method
from tests.integration.protocols.hello_relay import HelloRelay
from tests.integration.protocols.test_h2_listeners import curl
from tests.integration.protocols.tls_upstream import TlsH2Upstream, TlsUpstream


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def stoppers() -> AsyncIterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, GrpcUpstream):
            thing.release.set()
        await thing.stop()


def _outbound(sc: Sidecar) -> int:
    return sc.bound_port("listeners.outbound")


def _config(name: str, port: int, ca_file: str, **upstream: Any) -> dict[str, Any]:
    return {
        "service": {"name": "caller"},
        "discovery": {"static": {name: [f"https://127.0.0.1:{port}"]}},
        "upstreams": {name: {"tls": {"ca_file": ca_file}, **upstream}},
    }


async def _grpc_tls_upstream(ca: trustme.CA, stoppers: list[Any], name: str) -> HelloRelay:
    """A grpcio server with TLS for `name`, behind a relay that records ClientHellos."""
    cert = ca.issue_cert(name)
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    up = await GrpcUpstream(name).start(credentials=creds)
    stoppers.append(up)
    relay = await HelloRelay(up.port).start()
    stoppers.append(relay)
    return relay


async def test_grpc_to_a_tls_upstream_unary_and_streaming(
    sidecar_factory: Callable[..., Any], ca: trustme.CA, ca_file: str, stoppers: list[Any]
) -> None:
    # Before ALPN: the sidecar spoke HTTP/2 cleartext to the TLS port, and the call failed.
    relay = await _grpc_tls_upstream(ca, stoppers, "greeter")
    sc = await sidecar_factory(_config("greeter", relay.port, ca_file))
    async with channel(_outbound(sc), "greeter") as ch:
        assert await method(ch, "unary_unary", "Say")(b"tls", timeout=5) == b"hello tls"
        got = [m async for m in method(ch, "unary_stream", "Count")(b"4", timeout=5)]
        assert got == [b"0", b"1", b"2", b"3"]
        call = method(ch, "stream_stream", "Chat")(timeout=5)
        for word in (b"one", b"two"):
            await call.write(word)
            assert await call.read() == b"echo " + word
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    # One multiplexed TLS connection, verified against the upstream's name (the endpoint is an
    # address), offering h2 first under protocol auto.
    assert [h.server_name for h in relay.hellos] == ["greeter"]
    assert relay.hellos[0].alpn == ["h2", "http/1.1"]


@pytest.mark.parametrize("protocol", ["h2", "h2c"])
async def test_required_http2_offers_only_h2_and_sends_https_scheme(
    sidecar_factory: Callable[..., Any],
    ca: trustme.CA,
    ca_file: str,
    stoppers: list[Any],
    protocol: str,
) -> None:
    up = await TlsH2Upstream(cert=ca.issue_cert("h2svc")).start()
    stoppers.append(up)
    relay = await HelloRelay(up.port).start()
    stoppers.append(relay)
    sc = await sidecar_factory(_config("h2svc", relay.port, ca_file, protocol=protocol))
    # An HTTP/1.1 caller reaches the HTTP/2-over-TLS upstream.
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            url = f"http://127.0.0.1:{_outbound(sc)}/items/{i}"
            async with s.get(url, headers={"Host": "h2svc"}) as r:
                assert r.status == 200, await r.text()
                got = await r.json()
            assert got["protocol"] == "h2" and got["path"] == f"/items/{i}"
    assert up.connections == 1  # streams multiplexed on one connection
    assert dict(up.seen[-1])[":scheme"] == "https"
    assert up.server_names == ["h2svc"]
    assert [h.alpn for h in relay.hellos] == [["h2"]]
    # A new connection (the pool closed) resumes the TLS session on the h2 context.
    sc.h2_client.close()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{_outbound(sc)}/again", headers={"Host": "h2svc"}) as r,
    ):
        assert r.status == 200
    assert up.resumed == [False, True]


async def test_required_http2_refused_when_the_server_chooses_http1(
    sidecar_factory: Callable[..., Any], ca: trustme.CA, ca_file: str, stoppers: list[Any]
) -> None:
    up = await TlsUpstream(ca.issue_cert("old-api"), alpn=["http/1.1"]).start()
    stoppers.append(up)
    sc = await sidecar_factory(
        _config("old-api", up.port, ca_file, protocol="h2", retries={"attempts": 0})
    )
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{_outbound(sc)}/x", headers={"Host": "old-api"}) as r,
    ):
        assert r.status == 502
        assert r.headers["x-sidecar-error"] == "upstream_connect_failure"
        message = (await r.json())["message"]
    # (an OpenSSL server whose protocols don't overlap the offer chooses none)
    assert message == (
        f"TLS to 127.0.0.1:{up.port}: the server chose no ALPN protocol (offered: h2); "
        "HTTP/2 over TLS needs h2"
    )
    assert up.paths == []  # not a request reached it


async def test_auto_speaks_http1_to_a_tls_server_that_chose_it_and_remembers(
    sidecar_factory: Callable[..., Any], ca: trustme.CA, ca_file: str, stoppers: list[Any]
) -> None:
    up = await TlsUpstream(ca.issue_cert("old-api"), alpn=["http/1.1"]).start()
    stoppers.append(up)
    sc = await sidecar_factory(_config("old-api", up.port, ca_file))
    for i in range(3):  # an HTTP/2 caller: auto tries HTTP/2 first, once
        rc, out, err = await curl(
            "--http2-prior-knowledge",
            "-H",
            "Host: old-api",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{_outbound(sc)}/v/{i}",
        )
        assert rc == 0, err
        body, code = out.rsplit("\n", 1)
        assert code == "200", body
        assert json.loads(body)["path"] == f"/v/{i}"
    # the h2 attempt's handshake, then one pooled HTTP/1.1 connection
    assert up.handshakes == 2
    assert up.paths == ["/v/0", "/v/1", "/v/2"]


async def test_grpc_to_a_tls_server_that_chose_http1_is_unavailable_with_the_reason(
    sidecar_factory: Callable[..., Any], ca: trustme.CA, ca_file: str, stoppers: list[Any]
) -> None:
    up = await TlsUpstream(ca.issue_cert("old-api"), alpn=["http/1.1"]).start()
    stoppers.append(up)
    sc = await sidecar_factory(_config("old-api", up.port, ca_file, retries={"attempts": 0}))
    async with channel(_outbound(sc), "old-api") as ch:
        for _ in range(2):  # learnt in the handshake, then known
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await method(ch, "unary_unary", "Say")(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "gRPC needs HTTP/2" in (info.value.details() or "")
            md = dict(info.value.trailing_metadata() or ())
            assert md.get("x-sidecar-error") == "upstream_connect_failure"
    assert up.handshakes == 1 and up.paths == []


async def test_auto_falls_back_to_http1_with_a_streamed_body_nothing_was_sent(
    sidecar_factory: Callable[..., Any],
    ca: trustme.CA,
    ca_file: str,
    stoppers: list[Any],
    tmp_path: Path,
) -> None:
    up = await TlsUpstream(ca.issue_cert("old-api"), alpn=["http/1.1"]).start()
    stoppers.append(up)
    sc = await sidecar_factory(
        {**_config("old-api", up.port, ca_file), "limits": {"retry_buffer_bytes": 1024}}
    )
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 500_000)  # past the replay buffer: not replayable
    rc, out, err = await curl(
        "--http2-prior-knowledge",
        "-H",
        "Host: old-api",
        "--data-binary",
        f"@{body}",
        "-w",
        "\n%{http_code}",
        f"http://127.0.0.1:{_outbound(sc)}/upload",
    )
    assert rc == 0, err
    got, code = out.rsplit("\n", 1)
    assert code == "200", got
    assert up.paths == ["/upload"]
