"""Write-side flow control: wait while the transport's write buffer is above its high mark."""

from __future__ import annotations

import asyncio


class WriteFlow:
    __slots__ = ("_paused", "_waiter", "closed")

    def __init__(self) -> None:
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    @property
    def blocked(self) -> bool:
        """The transport's write buffer is above its high mark."""
        return self._paused

    def connection_lost(self) -> None:
        self.closed = True
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("connection closed")
        if not self._paused:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed:
            raise ConnectionResetError("connection closed")
