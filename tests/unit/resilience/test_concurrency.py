import asyncio

import pytest

from sidecar.errors import Overloaded
from sidecar.http import Request, Response
from sidecar.resilience.concurrency import ConcurrencyLimitLayer
from tests.unit.resilience.fakes import RecordingObserver, make_request, response


async def test_limit_rejects_excess_and_frees_slots() -> None:
    release = asyncio.Event()
    both_in = asyncio.Event()
    entered = 0

    async def gated(request: Request) -> Response:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return response()

    obs = RecordingObserver()
    layer = ConcurrencyLimitLayer("svc", 2, obs)
    handler = layer.wrap(gated)
    tasks = [asyncio.ensure_future(handler(make_request())) for _ in range(2)]
    await both_in.wait()
    with pytest.raises(Overloaded) as info:
        await handler(make_request())
    assert info.value.retry_after == 1.0
    assert obs.of("rejected") == [("rejected", "svc", "overloaded")]
    assert layer.inflight == 2
    release.set()
    await asyncio.gather(*tasks)
    assert layer.inflight == 0
    assert (await handler(make_request())).status == 200


async def test_slot_is_freed_on_error() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("x")

    layer = ConcurrencyLimitLayer("svc", 1)
    handler = layer.wrap(boom)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await handler(make_request())
    assert layer.inflight == 0
