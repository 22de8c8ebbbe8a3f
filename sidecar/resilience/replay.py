"""Bodies and retries: make a small request body replayable, and throw away a response body
we are not going to forward (a retried 5xx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from sidecar.http import EMPTY_BODY, Body, BytesBody, Request, Response

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


class ReplayBuffers:
    """`limits.retry_buffer_bytes` as a cap on the request bodies held for a possible retry by
    all in-flight requests together, not only on each: a thousand concurrent uploads can't
    make the sidecar buffer a thousand of them. A request that finds no room is sent
    unbuffered, so only a connect failure (no byte sent) can retry it."""

    __slots__ = ("capacity", "held")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, body: Body, limit: int) -> int:
        """Reserve room to buffer `body` (at most `limit` bytes); 0 when there is none or it
        is too large to buffer anyway."""
        length = body.length
        if length is not None and length > limit:
            return 0
        want = limit if length is None else length
        if want <= 0 or self.held + want > self.capacity:
            return 0
        self.held += want
        return want

    def give_back(self, n: int) -> None:
        self.held -= n

    async def buffered(
        self, request: Request, limit: int, send: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Make `request.body` replayable if there is room, then `send(request)` (every try);
        the room is given back, and the bytes dropped, once the tries are over."""
        held = self.take(request.body, limit)
        if not held:
            return await send(request)
        try:
            body = await buffer_for_replay(request.body, held)
            # Keep only what is actually held: a chunked body smaller than the limit, or
            # none (a body over it streams on and isn't replayable).
            actual = len(body.data) if isinstance(body, BytesBody) else 0
            self.give_back(held - actual)
            held = actual
            request.body = body
            return await send(request)
        finally:
            self.give_back(held)
            if held:
                request.body = EMPTY_BODY


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
