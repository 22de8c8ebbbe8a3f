"""Driver: the connection coroutine runs, waits, is cancelled and times out as under a Task."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.resilience.expiry import Expiry, LoopRef
from sidecar.transport.driver import Driver, running_task


async def _until(cond: object, within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0)


async def test_runs_to_the_end_through_futures_and_bare_yields() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def serve() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(await fut)

    driver = Driver(loop, serve())
    await _until(lambda: len(seen) == 1)
    assert seen[0] is driver
    assert not driver.done()
    fut.set_result(7)
    await _until(driver.done)
    assert seen == [driver, 7]


async def test_cancel_throws_cancelled_error_into_the_waiting_coroutine() -> None:
    loop = asyncio.get_running_loop()
    waiting = asyncio.Event()
    outcome: list[str] = []

    async def serve() -> None:
        try:
            waiting.set()
            await loop.create_future()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    driver = Driver(loop, serve())
    await waiting.wait()
    assert driver.cancel() is True
    await _until(driver.done)
    assert outcome == ["cancelled"]
    assert driver.cancel() is False


async def test_cancel_before_the_first_step_never_runs_the_body() -> None:
    # As with a Task: the CancelledError is thrown in before the first line runs.
    loop = asyncio.get_running_loop()
    outcome: list[str] = []

    async def serve() -> None:
        outcome.append("ran")

    driver = Driver(loop, serve())
    driver.cancel()
    await _until(driver.done)
    assert outcome == []


@pytest.mark.parametrize("kind", ["expiry", "asyncio.timeout"])
async def test_timeouts_inside_the_driver_become_timeouts(kind: str) -> None:
    loop = asyncio.get_running_loop()
    outcome: list[str] = []

    async def serve() -> None:
        if kind == "expiry":
            expiry = Expiry(LoopRef().timers(), 0.01)
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                outcome.append("timeout" if expiry.close() else "cancelled")
        else:
            try:
                async with asyncio.timeout(0.01):
                    await loop.create_future()
            except TimeoutError:
                outcome.append("timeout")
        outcome.append(f"cancelling={asyncio.current_task().cancelling()}")  # type: ignore[union-attr]

    driver = Driver(loop, serve())
    await _until(driver.done)
    assert outcome == ["timeout", "cancelling=0"]


def test_current_task_and_timeout_work_on_uvloop() -> None:
    # The production loop: asyncio's private _enter_task/_leave_task must accept a Driver
    # as uvloop's current task too.
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    outcome: list[object] = []

    async def serve() -> None:
        outcome.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0.01):
                await loop.create_future()
        except TimeoutError:
            outcome.append("timeout")

    async def main() -> None:
        driver = Driver(loop, serve())
        await _until(driver.done)
        assert outcome == [driver, "timeout"]
        assert asyncio.current_task() is not driver

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_running_task_answers_as_current_task(loop_kind: str) -> None:
    # running_task reads asyncio's private current-task dict: it must agree with
    # asyncio.current_task for a Task, a Driver and outside both, on both loops we run.
    if loop_kind == "uvloop":
        loop = pytest.importorskip("uvloop").new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    seen: list[tuple[object, object]] = []

    async def serve() -> None:
        seen.append((running_task(loop), asyncio.current_task()))

    async def main() -> None:
        seen.append((running_task(loop), asyncio.current_task()))
        driver = Driver(loop, serve())
        await _until(driver.done)
        loop.call_soon(lambda: seen.append((running_task(loop), asyncio.current_task(loop))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    try:
        task = loop.create_task(main())
        loop.run_until_complete(task)
    finally:
        loop.close()
    assert [a is b for a, b in seen] == [True, True, True]
    assert seen[0][0] is task
    assert seen[1][0] is not task and seen[1][0] is not None
    assert seen[2][0] is None
