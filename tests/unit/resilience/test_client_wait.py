"""Time spent waiting on the client's body is not the upstream's (issue 18, finding 4).

Real (short) timers: the holds compare time.monotonic() stamps that the body takes when its
last byte arrives."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.clock import SystemClock
from sidecar.config import RetriesConfig
from sidecar.errors import BadRequest, UpstreamTimeout
from sidecar.http import Request, Response
from sidecar.resilience.deadline import DeadlineLayer, TryHold, arriving
from sidecar.resilience.expiry import Expiry, LoopRef
from sidecar.resilience.replay import buffer_for_replay
from sidecar.resilience.retry import RetryLayer
from sidecar.stack import Handler
from sidecar.transport.body import StreamBody
from tests.unit.resilience.fakes import make_request, response


async def test_expiry_hold_moves_the_timer_to_after_the_body() -> None:
    """Due 50 ms after a try began, but the body completes at ~70 ms: the timer first looks
    again at 100 ms (still the client's time), then fires 50 ms after the body was in."""
    loop = asyncio.get_running_loop()
    body = StreamBody(1)
    loop.call_later(0.07, body.feed_eof)
    started = loop.time()
    expiry = Expiry(LoopRef().timers(), 0.05, TryHold(body, 0.05))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert expiry.close() is True
    assert loop.time() - started >= 0.115


def _upstream_reading(body: StreamBody, answer_after: float) -> Handler:
    """An upstream that reads the whole request body, then answers after `answer_after`."""

    async def handler(request: Request) -> Response:
        async for _ in body:
            pass
        await asyncio.sleep(answer_after)
        return response(200)

    return handler


async def _feed_slowly(body: StreamBody, parts: int, gap: float) -> None:
    for _ in range(parts):
        await asyncio.sleep(gap)
        body.feed(b"x")
    body.feed_eof()


async def test_total_starts_when_the_body_is_complete() -> None:
    body = StreamBody(5)
    req = make_request("POST", body=body)
    handler = DeadlineLayer(0.2, SystemClock()).wrap(_upstream_reading(body, 0.1))
    feeder = asyncio.create_task(_feed_slowly(body, 5, 0.03))  # complete after ~0.15 s
    resp = await handler(req)  # 0.15 + 0.1 > 0.2, but the upstream used only 0.1 of it
    await feeder
    assert resp.status == 200


async def test_a_client_that_stalls_its_body_gets_408() -> None:
    body = StreamBody(5)
    body.feed(b"x")
    req = make_request("POST", body=body)
    handler = DeadlineLayer(0.1, SystemClock()).wrap(_upstream_reading(body, 0.0))
    with pytest.raises(BadRequest) as info:
        await handler(req)
    assert info.value.status == 408 and info.value.code == "bad_request"


async def test_a_slow_upstream_after_a_slow_body_is_still_a_timeout() -> None:
    body = StreamBody(3)
    req = make_request("POST", body=body)
    handler = DeadlineLayer(0.15, SystemClock()).wrap(_upstream_reading(body, 5.0))
    feeder = asyncio.create_task(_feed_slowly(body, 3, 0.03))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await handler(req)
    await feeder
    assert 0.2 <= loop.time() - started < 1.0  # ~0.09 s of body + 0.15 s of upstream


async def test_per_try_starts_when_the_body_is_complete() -> None:
    body = StreamBody(5)
    req = make_request("POST", body=body)
    layer = RetryLayer("up", RetriesConfig(attempts=0), 0.1, 65536, SystemClock())
    handler = layer.wrap(_upstream_reading(body, 0.05))
    feeder = asyncio.create_task(_feed_slowly(body, 5, 0.04))  # ~0.2 s: twice the per-try
    resp = await handler(req)
    await feeder
    assert resp.status == 200


async def test_a_body_the_upstream_does_not_read_counts_against_it() -> None:
    """Held back by us because the upstream is not reading: the upstream's time."""
    paused: list[bool] = []
    body = StreamBody(None, pause=lambda: paused.append(True))
    body.feed(b"x" * 70_000)  # over the high-water mark: reading from the client pauses
    assert paused and body.throttled

    async def never_reads(request: Request) -> Response:
        await asyncio.sleep(5)
        return response(200)

    layer = RetryLayer("up", RetriesConfig(attempts=0), 0.05, 65536, SystemClock())
    with pytest.raises(UpstreamTimeout):
        await layer.wrap(never_reads)(make_request("POST", body=body))


async def test_a_replay_wrapper_still_shows_the_client_stream() -> None:
    body = StreamBody(None)
    body.feed(b"x" * 10)
    wrapped = asyncio.create_task(buffer_for_replay(body, 4))
    assert arriving(await wrapped) is body  # over the buffer: a prefix + the live stream
    body.feed_eof()
    assert arriving(body) is None
