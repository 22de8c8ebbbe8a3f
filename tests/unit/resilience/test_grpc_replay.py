"""The recording body: streams to the first try, replays to a retry, gives up past the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sidecar.resilience.grpc_replay import RecordingBody


class Source:
    length: int | None = None
    replayable = False

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            self.pulled += 1
            yield c


async def test_retry_replays_what_was_sent_then_continues() -> None:
    src = Source([b"a", b"b", b"c"])
    body = RecordingBody(src, limit=100)
    first = body.__aiter__()
    assert await first.__anext__() == b"a"  # the first try took one message, then failed
    assert body.replayable
    assert [c async for c in body] == [b"a", b"b", b"c"]
    assert src.pulled == 3
    # the superseded pass ends instead of stealing the retry's messages
    assert [c async for c in first] == []


async def test_over_the_limit_is_not_replayable() -> None:
    body = RecordingBody(Source([b"x" * 60, b"y" * 60]), limit=100)
    assert [c async for c in body] == [b"x" * 60, b"y" * 60]
    assert not body.replayable
