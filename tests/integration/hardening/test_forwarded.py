"""Client-supplied forwarding headers (issue 18, finding 8), over real sockets on both
listeners: overwritten unless the client is in `trusted_proxies`; X-Forwarded-For appended."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.hardening.conftest import UPSTREAM, exchange

SPOOFED = (
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: bank.example\r\n"
    b"Forwarded: for=6.6.6.6;proto=https;host=bank.example\r\n"
)


async def _seen(upstreams: Any, sidecar_factory: Any, listener: str, **extra: Any) -> tuple:
    up = await upstreams(UPSTREAM)
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": up.port},
            "discovery": {"static": {UPSTREAM: [f"127.0.0.1:{up.port}"]}},
            **extra,
        }
    )
    host = UPSTREAM if listener == "outbound" else "bff"
    request = f"GET /x HTTP/1.1\r\nHost: {host}\r\n".encode() + SPOOFED + b"\r\n"
    ex = await exchange(sc.bound_port(f"listeners.{listener}"), request, until=1)
    assert [r.status for r in ex.responses] == [200]
    (seen,) = up.seen
    return host, seen.headers, [v for k, v in seen.raw_headers if k == "forwarded"]


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_untrusted_clients_cannot_claim_a_scheme_or_host(
    upstreams, sidecar_factory, listener
):
    host, headers, forwarded = await _seen(upstreams, sidecar_factory, listener)
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == host
    assert headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"  # ours is always the last
    assert forwarded == [f"for=127.0.0.1;host={host};proto=http"]


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_trusted_proxies_keep_what_they_say(upstreams, sidecar_factory, listener):
    host, headers, forwarded = await _seen(
        upstreams, sidecar_factory, listener, trusted_proxies=["127.0.0.0/8"]
    )
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "bank.example"
    assert headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert forwarded == [
        f"for=6.6.6.6;proto=https;host=bank.example, for=127.0.0.1;host={host};proto=http"
    ]


async def test_a_trusted_list_without_the_client_still_overwrites(upstreams, sidecar_factory):
    _, headers, _ = await _seen(
        upstreams, sidecar_factory, "outbound", trusted_proxies=["10.0.0.0/8", "::1"]
    )
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == UPSTREAM
