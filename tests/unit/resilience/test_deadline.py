import asyncio

import pytest

from sidecar.clock import SystemClock
from sidecar.config import RetriesConfig
from sidecar.errors import DeadlineExceeded, UpstreamTimeout
from sidecar.http import Headers, Request, Response
from sidecar.resilience.deadline import DeadlineLayer, stamp_remaining
from sidecar.resilience.retry import RetryLayer
from sidecar.stack import Handler, Router, compose
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER
from tests.unit.resilience.fakes import (
    FakeClock,
    RecordingObserver,
    ScriptedUpstream,
    hang_forever,
    make_request,
    response,
)


async def test_sets_deadline_from_total_and_forwards_remaining_budget() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response())
    handler = DeadlineLayer(10.0, clock).wrap(up)
    req = make_request()
    await handler(req)
    assert req.deadline == pytest.approx(clock.now + 10.0)
    assert up.seen_headers[0][EXPECTED_TIMEOUT_HEADER] == "10000"


async def test_incoming_budget_caps_total() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response())
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "100")])
    await DeadlineLayer(10.0, clock).wrap(up)(req)
    assert req.deadline == pytest.approx(clock.now + 0.1)
    assert up.seen_headers[0][EXPECTED_TIMEOUT_HEADER] == "100"


async def test_larger_incoming_budget_does_not_extend_total() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response())
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "60000")])
    await DeadlineLayer(2.0, clock).wrap(up)(req)
    assert up.seen_headers[0][EXPECTED_TIMEOUT_HEADER] == "2000"


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", ""])
async def test_unparsable_budget_is_ignored(value: str) -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response())
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, value)])
    await DeadlineLayer(3.0, clock).wrap(up)(req)
    assert up.seen_headers[0][EXPECTED_TIMEOUT_HEADER] == "3000"


async def test_spent_budget_fails_without_calling_upstream() -> None:
    clock = FakeClock()
    obs = RecordingObserver()
    up = ScriptedUpstream(response())
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "0")])
    with pytest.raises(DeadlineExceeded):
        await DeadlineLayer(3.0, clock, obs).wrap(up)(req)
    assert up.calls == []
    assert obs.of("rejected") == [("rejected", "svc", "deadline_exceeded")]


def test_stamp_remaining_floors_and_clamps() -> None:
    req = make_request()
    req.deadline = 10.0
    stamp_remaining(req, 9.0005)
    assert req.headers.get(EXPECTED_TIMEOUT_HEADER) == "999"
    stamp_remaining(req, 11.0)
    assert req.headers.get(EXPECTED_TIMEOUT_HEADER) == "0"
    assert len(req.headers.get_all(EXPECTED_TIMEOUT_HEADER)) == 1


# The two tests below use real time: the timer firing is the behaviour under test.
async def test_total_timeout_gives_upstream_timeout() -> None:
    handler = DeadlineLayer(0.05, SystemClock()).wrap(hang_forever)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await handler(make_request())
    assert loop.time() - t0 < 2.0


async def test_caller_deadline_expiry_gives_deadline_exceeded() -> None:
    handler = DeadlineLayer(10.0, SystemClock()).wrap(hang_forever)
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "50")])
    with pytest.raises(DeadlineExceeded):
        await handler(req)


async def test_inner_timeout_at_caller_deadline_is_reported_as_deadline() -> None:
    clock = FakeClock()

    async def slow_then_timeout(request):  # type: ignore[no-untyped-def]
        clock.advance(0.2)  # the caller's 100 ms are gone when the retry layer gives up
        raise UpstreamTimeout("per-try")

    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "100")])
    with pytest.raises(DeadlineExceeded):
        await DeadlineLayer(10.0, clock).wrap(slow_then_timeout)(req)


async def test_inner_timeout_before_deadline_stays_upstream_timeout() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamTimeout("per-try"))
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "5000")])
    with pytest.raises(UpstreamTimeout):
        await DeadlineLayer(10.0, clock).wrap(up)(req)


# ---- lazy: the router's per-try timer is the request's one timer (as app.py builds it)
def _lazy_path(total: float, per_try: float, up: Handler, **retries: object) -> Handler:
    clock = SystemClock()
    retry = RetryLayer("svc", RetriesConfig(**retries), per_try, 65536, clock)  # type: ignore[arg-type]
    return compose(
        [DeadlineLayer(total, clock, stamp=False, lazy=True)],
        Router(retry, [retry.per_try], up),
    )


async def test_lazy_per_try_timeout_tighter_is_a_per_try_timeout() -> None:
    handler = _lazy_path(10.0, 0.05, hang_forever, attempts=0)
    with pytest.raises(UpstreamTimeout, match="no response headers within 50 ms"):
        await asyncio.wait_for(handler(make_request()), 2.0)


async def test_lazy_total_tighter_is_the_total_timeout() -> None:
    handler = _lazy_path(0.05, 10.0, hang_forever, attempts=0)
    with pytest.raises(UpstreamTimeout, match="total timeout"):
        await asyncio.wait_for(handler(make_request()), 2.0)


async def test_lazy_caller_deadline_tighter_is_deadline_exceeded() -> None:
    handler = _lazy_path(10.0, 10.0, hang_forever, attempts=0)
    req = make_request(headers=[(EXPECTED_TIMEOUT_HEADER, "50")])
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(handler(req), 2.0)


async def test_lazy_total_timer_covers_the_wait_between_tries() -> None:
    # The per-try timer is the tighter, so no total timer runs during the first try; it is
    # answered with a 503 at once, and the pause before the retry drains that answer's
    # body, which never ends: only the total timer, armed for the pause, ends it.
    class Endless:
        length: int | None = None
        replayable = False

        def __aiter__(self) -> "Endless":
            return self

        async def __anext__(self) -> bytes:
            await asyncio.Event().wait()
            return b""

    async def endless_503(request: Request) -> Response:
        return Response(503, Headers(), Endless())

    handler = _lazy_path(0.3, 0.1, endless_503, attempts=1, on=[503])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout, match="total timeout"):
        await asyncio.wait_for(handler(make_request()), 2.0)
    assert loop.time() - t0 < 1.0
