"""A streaming body fed by a connection, with read-side flow control.

The producer (a protocol's data_received) feeds chunks; when more than `high_water` bytes wait
unread, the transport stops reading from the socket until the consumer catches up, so a slow
reader never makes us buffer a whole upload or download."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

HIGH_WATER = 64 * 1024


def _noop() -> None:
    pass


class StreamBody:
    __slots__ = (
        "_buffered",
        "_chunks",
        "_eof",
        "_error",
        "_on_abort",
        "_pause",
        "_paused",
        "_resume",
        "_waiter",
        "consumed",
        "length",
        "received_at",
        "replayable",
    )

    def __init__(
        self,
        length: int | None,
        pause: Callable[[], None] = _noop,
        resume: Callable[[], None] = _noop,
        on_abort: Callable[[], None] = _noop,
    ) -> None:
        self.length = length
        self.replayable = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._on_abort = on_abort
        self._paused = False
        self.consumed = False  # the consumer read to EOF
        # time.monotonic() when the producer delivered the last byte; 0.0 while it is still
        # arriving. Stamped once per body, so the resilience layers can tell time spent
        # waiting on the sender from time spent waiting on the receiver without polling.
        self.received_at = 0.0

    # ---- producer side
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        if not self.received_at:
            self.received_at = time.monotonic()
        self._wake()

    def set_error(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
        self._wake()

    def detach(self) -> None:
        """The producer's connection moves on (message complete): stop steering it."""
        if self._paused:
            self._paused = False
            self._resume()
        self._pause = self._resume = self._on_abort = _noop

    @property
    def error(self) -> BaseException | None:
        """Why the producer broke the body (e.g. PayloadTooLarge), if it did."""
        return self._error

    @property
    def throttled(self) -> bool:
        """True while reading from the producer is paused because the consumer is behind:
        the wait is then the consumer's doing, not the producer's."""
        return self._paused

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- consumer side
    def take_complete(self) -> bytes | None:
        """The whole body at once if all of it has already arrived (the common case for a
        small response: head and body in one read), else None. Lets the writer send head
        and body in one write instead of iterating."""
        if not self._eof or self._error is not None:
            return None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        self.consumed = True
        return data

    async def read(self) -> bytes:
        """Next chunk, or b"" at the end of the body."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                self.consumed = True
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4:
            self._paused = False
            self._resume()
        return chunk

    # The body is its own (single-pass) iterator: a class method rather than an async
    # generator, which mypyc can compile.
    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def abort(self) -> None:
        """The consumer gives up before EOF: the producing connection can't be reused."""
        if not self.at_eof:
            self._chunks.clear()
            self._on_abort()
