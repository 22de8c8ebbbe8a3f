"""What the HTTP/2 server and client share: window sizes, the header fields HTTP/2 forbids,
sending DATA within the peer's flow-control windows, and the rapid-reset limit."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from sidecar.transport.flow import WriteFlow
from sidecar.transport.h2conn import H2Conn

# The RFC's 65,535-byte default windows throttle a proxy (one RTT per 64 KiB): raise them.
# Memory stays bounded: at most one stream window per stream and one connection window per
# connection is ever buffered unread.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2; `te` only as
# "trailers". Framing fields are recomputed from the body we send.
CONNECTION_SPECIFIC = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-length",
        "http2-settings",
    }
)


class WindowWaiters:
    """Streams waiting for the peer to open its flow-control window again."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[None]] = {}

    async def wait(self, stream_id: int) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = fut
        try:
            await fut
        finally:
            self._waiters.pop(stream_id, None)

    def wake(self, stream_id: int) -> None:
        fut = self._waiters.get(stream_id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def fail(self, stream_id: int, exc: BaseException) -> None:
        fut = self._waiters.get(stream_id)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def wake_all(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(None)


async def send_data(
    conn: H2Conn,
    stream_id: int,
    data: bytes,
    flush: Callable[[], None],
    waiters: WindowWaiters,
    flow: WriteFlow,
    end_stream: bool = False,
) -> None:
    """Send `data` on a stream, waiting whenever the peer's window is shut (backpressure from
    the receiver) or the socket's write buffer is full (backpressure from the network). With
    `end_stream` the last DATA frame ends the stream (no separate empty frame). Raises
    ConnectionResetError once the stream is closed or reset."""
    total = len(data)
    if not total:
        if end_stream:
            conn.end_stream(stream_id)
            flush()
        return
    pos = 0
    while pos < total:
        window = conn.local_window(stream_id)
        if window <= 0:
            await waiters.wait(stream_id)
            continue
        n = min(window, conn.max_outbound_frame_size, total - pos)
        chunk = data if n == total else data[pos : pos + n]
        pos += n
        conn.send_data(stream_id, chunk, end_stream and pos == total)
        flush()
        await flow.drain()


def send_now(
    conn: H2Conn, stream_id: int, data: bytes, flow: WriteFlow, end_stream: bool = False
) -> bool:
    """Send `data` as one DATA frame if the peer's windows, its frame size and our socket let
    it go now (the usual case for a small body): True if sent. Saves send_data's coroutine."""
    n = len(data)
    if not n or flow.blocked or flow.closed or n > conn.max_outbound_frame_size:
        return False
    if n > conn.local_window(stream_id):
        return False
    conn.send_data(stream_id, data, end_stream)
    return True


class ResetRate:
    """CVE-2023-44487 (rapid reset): streams the peer opened and reset before we answered
    them, counted per connection in a sliding window; over `limit` in `window` seconds the
    connection is told ENHANCE_YOUR_CALM and closed. A pure counter with an injected clock."""

    __slots__ = ("_clock", "_limit", "_times", "_window")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Count one reset; True when the connection went over the limit."""
        now = self._clock()
        times = self._times
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        return len(times) > self._limit
