"""Egress policy, DNS cache and dialer: names, forbidden addresses, TTLs, rebinding."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sidecar.config import EgressConfig, build_config
from sidecar.discovery.build import consul_names
from sidecar.egress.connect import ConnectHandler
from sidecar.egress.dialer import EgressDialer
from sidecar.egress.dns import DnsCache
from sidecar.egress.forward import authority_port
from sidecar.egress.policy import EgressPolicy
from sidecar.errors import BadRequest, UpstreamConnectFailure
from sidecar.http import EMPTY_BODY, Headers, Request
from sidecar.runtime import restart_needed
from tests.unit.resilience.fakes import FakeClock


def _policy(**kw: object) -> EgressPolicy:
    return EgressPolicy(
        EgressConfig.model_validate({"allow": ["api.example.com", "*.example.org"], **kw})
    )


def test_allow_list_exact_names_and_suffixes() -> None:
    policy = _policy()
    assert policy.allows("api.example.com")
    assert policy.allows("a.example.org") and policy.allows("a.b.example.org")
    assert not policy.allows("example.org")  # *.suffix is subdomains only
    assert not policy.allows("evilexample.org")
    assert not policy.allows("api.example.com.evil.net")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str | None) -> None:
    assert _policy().refusal(address) == reason


def test_allow_private_opens_only_the_listed_ranges() -> None:
    policy = _policy(allow_private=["10.1.0.0/16"])
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("10.2.0.1") == "private"


async def test_dns_is_cached_for_its_ttl_and_lookups_coalesce() -> None:
    clock = FakeClock()
    calls: list[str] = []
    gate = asyncio.Event()

    async def lookup(name: str) -> list[str]:
        calls.append(name)
        await gate.wait()
        return ["93.184.216.34"]

    dns = DnsCache(lookup, clock, ttl=30)
    first = asyncio.gather(*(dns.addresses("api.example.com") for _ in range(5)))
    await asyncio.sleep(0)
    gate.set()
    assert await first == [("93.184.216.34",)] * 5
    assert calls == ["api.example.com"]
    clock.advance(29)
    await dns.addresses("api.example.com")
    assert len(calls) == 1
    clock.advance(2)
    await dns.addresses("api.example.com")
    assert len(calls) == 2


async def test_dns_failures_are_connect_failures_cached_briefly() -> None:
    clock = FakeClock()
    calls = 0

    async def lookup(name: str) -> list[str]:
        nonlocal calls
        calls += 1
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    dns = DnsCache(lookup, clock, negative_ttl=5)
    for _ in range(2):
        with pytest.raises(UpstreamConnectFailure, match=r"cannot resolve 'x\.example\.com'"):
            await dns.addresses("x.example.com")
    assert calls == 1
    clock.advance(6)
    with pytest.raises(UpstreamConnectFailure):
        await dns.addresses("x.example.com")
    assert calls == 2


async def test_dialer_checks_the_address_it_returns_on_every_connect() -> None:
    # DNS rebinding: the name first resolves to a public address, then (after the TTL) to
    # the cloud metadata address. The second connect must be refused.
    clock = FakeClock()
    answers = [["93.184.216.34"], ["169.254.169.254"]]

    async def lookup(name: str) -> list[str]:
        return answers.pop(0)

    dialer = EgressDialer(_policy(), DnsCache(lookup, clock, ttl=30))
    assert await dialer.permitted("api.example.com") == ("93.184.216.34",)
    clock.advance(31)
    with pytest.raises(UpstreamConnectFailure, match=r"169\.254\.169\.254 \(link-local\)"):
        await dialer.permitted("api.example.com")
    with pytest.raises(UpstreamConnectFailure, match=r"169\.254\.169\.254 \(link-local\)"):
        await dialer("api.example.com", 443, 1.0)  # refused before any connect


async def test_dialer_skips_forbidden_addresses_for_a_permitted_one() -> None:
    async def lookup(name: str) -> list[str]:
        return ["10.0.0.5", "93.184.216.34"]

    dialer = EgressDialer(_policy(), DnsCache(lookup, FakeClock()))
    assert await dialer.permitted("api.example.com") == ("93.184.216.34",)


def _connect(target: str) -> Request:
    return Request("CONNECT", target, Headers([("host", target)]), EMPTY_BODY)


def test_connect_targets() -> None:
    handler = ConnectHandler(
        _policy(connect_ports=[443]),
        EgressDialer(_policy(), DnsCache(None, FakeClock())),
        lambda name: (1.0, 60.0),
    )
    assert handler.target(_connect("API.example.com:443")) == ("api.example.com", 443)
    for target, status in [
        ("api.example.com:80", 403),
        ("other.example.net:443", 403),
        ("10.0.0.1:443", 403),
        ("api.example.com", 400),
    ]:
        with pytest.raises(BadRequest) as err:
            handler.target(_connect(target))
        assert err.value.status == status, target


def test_authority_port() -> None:
    assert authority_port("api.example.com:8443") == 8443
    assert authority_port("api.example.com") is None
    assert authority_port("[::1]") is None
    assert authority_port("[::1]:9") == 9


def test_egress_names_with_a_policy_are_not_watched_in_consul() -> None:
    config = build_config(
        {
            "service": {"name": "a"},
            "egress": {"allow": ["api.example.com"]},
            "upstreams": {"api.example.com": {"tls": True}, "users": {}},
        },
        env={},
    )
    assert consul_names(config) == {"users"}


def test_an_egress_change_needs_no_restart() -> None:
    base = {"service": {"name": "svc"}}
    off = build_config(base, env={})
    on = build_config({**base, "egress": {"allow": ["api.example.com"]}}, env={})
    assert restart_needed(off, on) == [] and restart_needed(on, off) == []
