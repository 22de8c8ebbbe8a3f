"""The upstream pool over real loopback sockets: stale idle connections are found before a
request is written to them, and the connection budget's eviction order."""

from __future__ import annotations

import asyncio
import select
import socket

from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.client import STALE_CHECK_AFTER, EndpointPool
from sidecar.vocab.endpoint import Endpoint
from tests.unit.discovery.fakes import eventually


async def _server() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    peers: list[asyncio.StreamWriter] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    return server, peers


async def test_an_idle_connection_closed_by_the_upstream_is_not_reused() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pool = EndpointPool(Endpoint("127.0.0.1", port), "up", 1.0, 60.0)
    conn, reused = await pool.acquire()
    assert not reused
    pool.release(conn)
    peer, _ = listener.accept()  # already queued: does not block
    # The upstream closes; the FIN reaches our socket, but the loop has not run since.
    peer.close()
    transport = conn._transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    readable, _, _ = select.select([sock.fileno()], [], [], 2.0)  # blocks: no loop turn
    assert readable and not conn.closed
    conn.idle_since -= STALE_CHECK_AFTER + 0.1
    listener.setblocking(False)
    fresh, reused = await pool.acquire()
    assert not reused and fresh is not conn, "a stale connection must not carry a request"
    fresh.close()
    listener.close()


async def test_a_recently_used_connection_is_reused_without_a_check() -> None:
    server, peers = await _server()
    port = server.sockets[0].getsockname()[1]
    pool = EndpointPool(Endpoint("127.0.0.1", port), "up", 1.0, 60.0)
    conn, _ = await pool.acquire()
    pool.release(conn)
    again, reused = await pool.acquire()
    assert reused and again is conn
    conn.close()
    server.close()


class _Conn:
    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_budget_evicts_the_connection_idle_longest_and_refuses_when_none_is_idle() -> None:
    budget = ConnectionBudget(2)
    a, b, c, d = _Conn(), _Conn(), _Conn(), _Conn()
    assert budget.admit(a) and budget.admit(b)
    budget.busy(a)
    budget.busy(b)
    budget.idle(b)
    budget.idle(a)  # b has been idle longer than a
    assert budget.admit(c)
    assert b.evicted and not a.evicted and len(budget) == 2
    budget.busy(a)
    budget.busy(c)
    assert not budget.admit(d), "every slot busy: refused"
    budget.release(a)
    assert budget.admit(d)


async def test_every_connection_of_a_busy_endpoint_is_kept_for_reuse() -> None:
    # 300 requests in flight at once (the bench's c=256 and then some): when they finish, all
    # 300 connections go back to the pool and carry the next 300 requests. A cap of 128 idle
    # closed the rest, so every burst dialled ~170 connections again.
    server, peers = await _server()
    port = server.sockets[0].getsockname()[1]
    pool = EndpointPool(Endpoint("127.0.0.1", port), "up", 5.0, 60.0)
    first = [conn for conn, _ in await asyncio.gather(*(pool.acquire() for _ in range(300)))]
    for conn in first:
        pool.release(conn)
    again = [pool.take_idle() for _ in range(300)]
    assert all(conn is not None for conn in again)
    assert {id(c) for c in again} == {id(c) for c in first}
    for conn in first:
        conn.close()
    server.close()


async def test_connections_idle_past_the_timeout_are_closed_without_traffic() -> None:
    # Keeping up to 1,024 idle connections is only bounded if the ones a burst left behind
    # go away on their own, also when no request comes to pick them up.
    server, peers = await _server()
    port = server.sockets[0].getsockname()[1]
    pool = EndpointPool(Endpoint("127.0.0.1", port), "up", 5.0, 0.2)
    conns = [conn for conn, _ in await asyncio.gather(*(pool.acquire() for _ in range(5)))]
    for conn in conns:
        pool.release(conn)
    assert not any(conn.closed for conn in conns)
    await eventually(lambda: all(conn.closed for conn in conns), within=5.0)
    assert pool.take_idle() is None
    server.close()


async def test_a_connection_used_again_is_not_closed_by_an_earlier_idle_deadline() -> None:
    server, peers = await _server()
    port = server.sockets[0].getsockname()[1]
    pool = EndpointPool(Endpoint("127.0.0.1", port), "up", 5.0, 0.6)
    old, _ = await pool.acquire()
    busy, _ = await pool.acquire()
    pool.release(old)  # arms the sweep for 0.6 s from now
    await asyncio.sleep(0.4)  # not synchronisation: the age `old` has when `busy` goes idle
    pool.release(busy)  # idle from now: due 0.4 s after `old`
    await eventually(lambda: old.closed, within=5.0)
    assert not busy.closed, "closed before its own idle timeout"
    assert pool.take_idle() is busy
    busy.close()
    server.close()
