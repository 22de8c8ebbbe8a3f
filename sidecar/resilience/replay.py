"""Bodies and retries: make a small request body replayable, and throw away a response body
we are not going to forward (a retried 5xx)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sidecar.http import Body, BytesBody

# A discarded body longer than this is aborted rather than read to the end: reading keeps the
# keep-alive connection reusable, aborting caps the work spent on an error page.
DRAIN_LIMIT = 64 * 1024


class PrefixedBody:
    """A streaming body whose first chunks were already read: yields them, then the rest.
    Not replayable."""

    __slots__ = ("_prefix", "_rest", "length", "replayable", "source")

    def __init__(self, prefix: list[bytes], rest: AsyncIterator[bytes], length: int | None):
        self._prefix = prefix
        self._rest = rest
        self.source = rest  # what the rest comes from (the client's stream, for timeouts)
        self.length = length
        self.replayable = False

    def __aiter__(self) -> PrefixedBody:
        return self

    async def __anext__(self) -> bytes:
        if self._prefix:
            return self._prefix.pop(0)
        return await self._rest.__anext__()


async def buffer_for_replay(body: Body, limit: int) -> Body:
    """Return a replayable equivalent of `body` if it fits in `limit` bytes.

    Reads at most `limit + 1` bytes. A body that fits becomes a `BytesBody`; one that does not
    (or whose Content-Length already says so, in which case nothing is read) comes back as a
    non-replayable body carrying the same bytes."""
    if body.replayable:
        return body
    if body.length is not None and body.length > limit:
        return body
    it = body.__aiter__()
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            return BytesBody(b"".join(chunks))
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return PrefixedBody(chunks, it, body.length)


async def discard_body(body: Body, limit: int = DRAIN_LIMIT) -> None:
    """Release a response body we will not forward, so its connection is freed."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    if isinstance(body, BytesBody):
        return
    abort = getattr(body, "abort", None)
    if abort is not None and body.length is not None and body.length > limit:
        abort()
        return
    read = 0
    async for chunk in body:
        read += len(chunk)
        if read > limit and abort is not None:
            abort()
            return
