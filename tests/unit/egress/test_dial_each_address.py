"""The egress dialer walks the permitted addresses of a name in DNS order on real loopback
sockets: a refused or silent address hands over to the next one within the connect timeout,
and the last error comes back when none answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.config import EgressConfig
from sidecar.egress.dialer import EgressDialer, attempt_share
from sidecar.egress.dns import DnsCache
from sidecar.egress.policy import EgressPolicy
from sidecar.errors import UpstreamConnectFailure
from tests.doubles.blackhole import Blackhole
from tests.unit.resilience.fakes import FakeClock

NAME = "api.example.com"
LIVE, DEAD, SILENT = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def _dialer(addresses: list[str], allow_private: list[str] | None = None) -> EgressDialer:
    async def lookup(name: str) -> list[str]:
        return addresses

    policy = EgressPolicy(
        EgressConfig.model_validate(
            {"allow": [NAME], "allow_private": allow_private or ["127.0.0.0/8"]}
        )
    )
    return EgressDialer(policy, DnsCache(lookup, FakeClock()))


@pytest.fixture
async def live_port() -> AsyncIterator[int]:
    """A listener on 127.0.0.1 only: the same port on 127.0.0.2 refuses."""
    server = await asyncio.start_server(lambda r, w: w.close(), LIVE, 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def test_each_attempt_gets_half_of_what_is_left_and_the_last_all_of_it() -> None:
    assert attempt_share(1.0, 3) == 0.5
    assert attempt_share(0.5, 2) == 0.25
    assert attempt_share(0.25, 1) == 0.25


async def test_a_refusing_first_address_hands_over_to_the_next(live_port: int) -> None:
    sock = await _dialer([DEAD, LIVE])(NAME, live_port, 2.0)
    with sock:
        assert sock.getpeername() == (LIVE, live_port)


async def test_a_silent_first_address_times_out_at_its_share(live_port: int) -> None:
    loop = asyncio.get_running_loop()
    with Blackhole(SILENT, live_port):
        started = loop.time()
        sock = await _dialer([SILENT, LIVE])(NAME, live_port, 0.4)
        took = loop.time() - started
    with sock:
        assert sock.getpeername() == (LIVE, live_port)
    assert 0.15 <= took < 0.4  # the silent one had half of the budget, not all of it


async def test_addresses_the_policy_refuses_are_skipped_not_dialled(live_port: int) -> None:
    # 127.0.0.2 would refuse quickly; it is not even tried: outside allow_private.
    sock = await _dialer([DEAD, LIVE], allow_private=["127.0.0.1/32"])(NAME, live_port, 2.0)
    with sock:
        assert sock.getpeername() == (LIVE, live_port)


async def test_none_answering_raises_the_last_error(live_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        await _dialer([DEAD, DEAD.replace(".2", ".4")])(NAME, live_port, 2.0)
    loop = asyncio.get_running_loop()
    with Blackhole(SILENT, live_port):
        started = loop.time()
        with pytest.raises(TimeoutError):
            await _dialer([DEAD, SILENT])(NAME, live_port, 0.3)
        assert loop.time() - started < 0.6  # the budget is the connect timeout, in total


async def test_all_addresses_refused_by_policy_is_a_connect_failure() -> None:
    with pytest.raises(UpstreamConnectFailure, match=r"127\.0\.0\.2 \(loopback\)"):
        await _dialer([DEAD], allow_private=["10.0.0.0/8"])(NAME, 80, 1.0)
