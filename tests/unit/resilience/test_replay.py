from sidecar.http import BytesBody
from sidecar.resilience.replay import PrefixedBody, buffer_for_replay, discard_body
from tests.unit.resilience.fakes import StreamingBody


async def _read(body) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([c async for c in body])


async def test_small_streaming_body_becomes_replayable() -> None:
    body = await buffer_for_replay(StreamingBody([b"ab", b"cd"]), limit=10)
    assert body.replayable
    assert await _read(body) == b"abcd"
    assert await _read(body) == b"abcd"


async def test_large_body_keeps_every_byte_but_is_not_replayable() -> None:
    src = StreamingBody([b"aaaa", b"bbbb", b"cccc", b"dddd"])
    body = await buffer_for_replay(src, limit=6)
    assert isinstance(body, PrefixedBody)
    assert not body.replayable
    assert await _read(body) == b"aaaabbbbccccdddd"


async def test_known_length_over_limit_is_not_read() -> None:
    src = StreamingBody([b"x" * 100], length=100)
    body = await buffer_for_replay(src, limit=10)
    assert body is src
    assert src.chunks  # untouched


async def test_replayable_body_is_returned_as_is() -> None:
    b = BytesBody(b"x")
    assert await buffer_for_replay(b, 0) is b


async def test_discard_drains_small_and_aborts_large() -> None:
    small = StreamingBody([b"err"], length=3)
    await discard_body(small)
    assert small.consumed and not small.aborted
    large = StreamingBody([b"x" * 10], length=10)
    await discard_body(large, limit=5)
    assert large.aborted
    chunked = StreamingBody([b"x" * 4, b"y" * 4, b"z" * 4])
    await discard_body(chunked, limit=6)
    assert chunked.aborted and not chunked.consumed


async def test_discard_prefers_aclose() -> None:
    class Closable(StreamingBody):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    b = Closable([b"x"])
    await discard_body(b)
    assert b.closed and not b.consumed
