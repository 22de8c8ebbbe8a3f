"""A body fed by one HTTP/2 stream's DATA frames, with per-stream flow control.

Bytes are acknowledged to the peer (so it may send more: WINDOW_UPDATE) only once the consumer
has read them; a slow consumer therefore holds at most one stream window in memory and the
peer, not us, waits. Trailers that end the stream are kept on the body (`trailers`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from sidecar.http import Headers


def _noop() -> None:
    pass


class H2Body:
    __slots__ = (
        "_ack",
        "_chunks",
        "_eof",
        "_error",
        "_on_abort",
        "_waiter",
        "buffered",
        "length",
        "received_at",
        "replayable",
        "trailers",
    )

    def __init__(
        self,
        length: int | None,
        ack: Callable[[int], None],
        on_abort: Callable[[], None] = _noop,
    ) -> None:
        self.length = length
        self.replayable = False
        self.trailers: Headers | None = None
        self.buffered = 0
        self._ack = ack
        self._on_abort = on_abort
        # (data, flow-controlled length: data plus padding)
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # time.monotonic() when the stream's END_STREAM came; 0.0 while the body is still
        # arriving (the deadline stages start the upstream's timers from here, as for
        # HTTP/1.1 bodies: a slow client is not a slow upstream).
        self.received_at = 0.0

    # ---- producer side (the connection)
    def feed(self, data: bytes, flow_len: int) -> None:
        if not data:
            if flow_len:
                self._ack(flow_len)  # padding only: nothing to hand over
            return
        self._chunks.append((data, flow_len))
        self.buffered += len(data)
        self._wake()

    def feed_eof(self, trailers: Headers | None = None) -> None:
        if trailers is not None:
            self.trailers = trailers
        self._eof = True
        if not self.received_at:
            self.received_at = time.monotonic()
        self._wake()

    def set_error(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
        self._wake()

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def throttled(self) -> bool:
        """True while received bytes wait for the consumer: the client's window is then
        held by us (unacknowledged data), so a pause in its sending is not its doing."""
        return self.buffered > 0

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- consumer side
    async def read(self) -> bytes:
        """Next chunk, or b"" at the end of the body."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data, flow_len = self._chunks.popleft()
        self.buffered -= len(data)
        self._ack(flow_len)
        return data

    def __aiter__(self) -> H2Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def abort(self) -> None:
        """The consumer gives up before the end: the stream is cancelled."""
        self._chunks.clear()
        self.buffered = 0
        if not self._eof:
            self._eof = True
            on_abort, self._on_abort = self._on_abort, _noop
            on_abort()
