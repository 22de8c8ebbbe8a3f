"""Replaying a streamed gRPC request body for a retry, without waiting for it to end.

`buffer_for_replay` reads a body to its end before the first try, which would deadlock a
bidi or client-streaming call whose client waits for replies before sending more. Here the
body streams to the first try as it arrives and is recorded on the way, up to a limit; a
retry sends the recording, then continues with the rest. Over the limit, the body stops
being replayable and the retry layer does not retry (gRFC A6: retries stop once the buffer
limit is hit)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sidecar.http import Body


class RecordingBody:
    """Single consumer at a time: each `__aiter__` starts a new pass and ends the previous
    one (a retried try's body writer is stopped before the next try starts)."""

    __slots__ = ("_chunks", "_limit", "_pass", "_size", "_source", "length", "replayable")

    def __init__(self, source: Body, limit: int) -> None:
        self._source: AsyncIterator[bytes] = source.__aiter__()
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._pass = 0
        self.length = source.length
        self.replayable = source.length is None or source.length <= limit

    def __aiter__(self) -> _Pass:
        self._pass += 1
        return _Pass(self, self._pass)

    async def _next(self, index: int) -> bytes:
        if index < len(self._chunks):
            return self._chunks[index]
        chunk = await self._source.__anext__()
        if self.replayable:
            self._size += len(chunk)
            if self._size > self._limit:
                self.replayable = False
                self._chunks.clear()
            else:
                self._chunks.append(chunk)
        return chunk


class _Pass:
    __slots__ = ("_body", "_index", "_pass")

    def __init__(self, body: RecordingBody, number: int) -> None:
        self._body = body
        self._pass = number
        self._index = 0

    def __aiter__(self) -> _Pass:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        if body._pass != self._pass:
            raise StopAsyncIteration  # superseded by a retry's pass
        chunk = await body._next(self._index)
        self._index += 1
        return chunk
