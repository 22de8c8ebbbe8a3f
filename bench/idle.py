"""Memory under many idle keep-alive clients: open N connections, make one request on each
(so each is a live keep-alive connection that has served traffic), leave them idle, read RSS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IdleResult:
    connections: int
    rss_before: int
    rss_with_idle: int
    unanswered: int  # connections whose setup request got no answer in time

    def to_json(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "unanswered": self.unanswered,
            "rss_before_bytes": self.rss_before,
            "rss_with_idle_bytes": self.rss_with_idle,
        }


async def _request(
    port: int, host: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """(reader, writer, answered). A request left unanswered keeps its connection open
    (it still counts as a held connection) but is reported."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    try:
        async with asyncio.timeout(timeout):
            await _read_response(reader)
    except TimeoutError:
        return reader, writer, False
    return reader, writer, True


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    if not 200 <= status < 300:
        raise RuntimeError(f"idle-connection setup got status {status}")
    length = 0
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "transfer-encoding":
            raise RuntimeError("expected a Content-Length response from the short-body upstream")
    await reader.readexactly(length)


async def _hold_idle(
    port: int, host: str, count: int, measure: Callable[[], int], settle: float, timeout: float
) -> IdleResult:
    before = measure()
    sem = asyncio.Semaphore(64)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        async with sem:
            return await _request(port, host, timeout)

    conns = await asyncio.gather(*(one() for _ in range(count)))
    try:
        # Let the server finish its per-request bookkeeping before sampling memory.
        await asyncio.sleep(settle)
        during = measure()
        for reader, _, _ in conns:
            if reader.at_eof():
                raise RuntimeError("the server closed an idle keep-alive connection too early")
    finally:
        for _, writer, _ in conns:
            writer.close()
    return IdleResult(count, before, during, sum(1 for *_, ok in conns if not ok))


def hold_idle(
    port: int,
    host: str,
    count: int,
    measure: Callable[[], int],
    settle: float = 0.5,
    timeout: float = 5.0,
) -> IdleResult:
    return asyncio.run(_hold_idle(port, host, count, measure, settle, timeout))
