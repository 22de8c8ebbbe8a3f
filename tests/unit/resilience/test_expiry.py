"""Expiry and its shared TimerQueue: timers fire in due order on one loop timer, a disarmed
timer never fires, an outside cancellation is not mistaken for a timeout, and the queue
stays bounded however many timers are armed and disarmed."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.resilience.expiry import COMPACT_MIN, Expiry, LoopRef, TimerQueue


async def test_the_task_is_cancelled_when_its_time_is_up_and_close_reports_it() -> None:
    timers = LoopRef().timers()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    expiry = Expiry(timers, 0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.Event().wait()
    assert expiry.close() is True
    assert 0.04 <= loop.time() - t0 < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_disarmed_timer_never_fires() -> None:
    timers = LoopRef().timers()
    expiry = Expiry(timers, 0.01)
    assert expiry.close() is False
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    await done.wait()  # past the due time: no CancelledError reached us
    assert expiry.close() is False


async def test_timers_fire_in_due_order_whatever_the_arming_order() -> None:
    loop = asyncio.get_running_loop()
    timers = TimerQueue(loop)
    fired: list[str] = []

    async def sleeper(name: str, delay: float) -> None:
        expiry = Expiry(timers, delay)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert expiry.close()
            fired.append(name)

    # Later timers armed first: the queue must re-arm its loop timer for the earlier ones.
    await asyncio.gather(sleeper("c", 0.09), sleeper("b", 0.06), sleeper("a", 0.03))
    assert fired == ["a", "b", "c"]
    assert len(timers) == 0


async def test_an_outside_cancel_wins_over_a_timeout_that_fires_with_it() -> None:
    timers = LoopRef().timers()

    async def victim() -> bool:
        expiry = Expiry(timers, 0.02)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return expiry.close()
        return False

    task = asyncio.ensure_future(victim())
    await asyncio.sleep(0)
    task.cancel()  # someone else cancels first
    assert await task is False  # not turned into a timeout


async def test_the_queue_stays_bounded_when_timers_are_disarmed_long_before_due() -> None:
    timers = LoopRef().timers()
    live = [Expiry(timers, 30.0) for _ in range(10)]
    for _ in range(20_000):
        Expiry(timers, 30.0).close()
    assert len(timers) <= 2 * len(live) + COMPACT_MIN + 2
    for expiry in live:
        assert expiry.close() is False


def test_expiry_outside_a_task_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError):
            Expiry(TimerQueue(loop), 1.0)
    finally:
        loop.close()
