import random

import pytest

from sidecar.config import RetriesConfig
from sidecar.errors import UpstreamConnectFailure, UpstreamReset, UpstreamTimeout
from sidecar.http import Headers, Response
from sidecar.resilience.budget import RetryBudget
from sidecar.resilience.retry import RetryLayer, backoff_delay
from sidecar.stack import Handler
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER
from tests.unit.resilience.fakes import (
    FakeClock,
    RecordingObserver,
    ScriptedUpstream,
    StreamingBody,
    hang_forever,
    make_request,
    response,
)


class Sleeps:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.advance(delay)


def build(
    up: Handler,
    clock: FakeClock,
    *,
    per_try: float = 3.0,
    buffer: int = 65536,
    budget: RetryBudget | None = None,
    **retries: object,
) -> tuple[Handler, RecordingObserver, Sleeps]:
    obs = RecordingObserver()
    sleeps = Sleeps(clock)
    layer = RetryLayer(
        "svc",
        RetriesConfig(**retries),  # type: ignore[arg-type]
        per_try,
        buffer,
        clock,
        obs,
        budget=budget,
        sleep=sleeps,
        rng=random.Random(1),
    )
    return layer.wrap(up), obs, sleeps


async def test_connect_failure_is_retried_with_attempt_header() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamConnectFailure("refused"), response(200))
    handler, obs, sleeps = build(up, clock)
    req = make_request()
    resp = await handler(req)
    assert resp.status == 200
    assert len(up.calls) == 2
    assert "x-sidecar-attempt" not in up.seen_headers[0]
    assert up.seen_headers[1]["x-sidecar-attempt"] == "2"
    assert req.attempt == 2 and req.retry_reason == "connect_failure"
    assert obs.of("retry") == [("retry", "svc", "connect_failure")]
    assert len(sleeps.delays) == 1


async def test_retried_5xx_body_is_drained_and_last_5xx_returned() -> None:
    clock = FakeClock()
    bodies = [StreamingBody([b"oops"], length=4) for _ in range(3)]
    up = ScriptedUpstream(*[Response(503, Headers(), b) for b in bodies])
    handler, obs, _ = build(up, clock)
    resp = await handler(make_request())
    assert resp.status == 503
    assert len(up.calls) == 3  # attempts: 2 means two retries after the first try
    assert bodies[0].consumed and bodies[1].consumed
    assert resp.body is bodies[2] and not bodies[2].consumed  # the one we forward
    assert [e[2] for e in obs.of("retry")] == ["503", "503"]


async def test_last_error_is_raised_when_retries_run_out() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamConnectFailure("a"), UpstreamConnectFailure("b"))
    handler, _, _ = build(up, clock, attempts=1)
    with pytest.raises(UpstreamConnectFailure, match="b"):
        await handler(make_request())
    assert len(up.calls) == 2


async def test_non_idempotent_is_only_retried_on_connect_failure() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response(503), response(200))
    handler, _, _ = build(up, clock)
    assert (await handler(make_request("POST"))).status == 503
    assert len(up.calls) == 1

    up = ScriptedUpstream(UpstreamReset("lost"), response(200))
    handler, _, _ = build(up, clock)
    with pytest.raises(UpstreamReset):
        await handler(make_request("POST"))

    up = ScriptedUpstream(UpstreamConnectFailure("refused"), response(200))
    handler, _, _ = build(up, clock)
    assert (await handler(make_request("POST", body=StreamingBody([b"x"])))).status == 200


async def test_only_configured_conditions_are_retried() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response(500), response(200))
    handler, _, _ = build(up, clock)  # default on: connect_failure, reset, 502, 503
    assert (await handler(make_request())).status == 500
    up = ScriptedUpstream(response(500), response(200))
    handler, _, _ = build(up, clock, on=["5xx"])
    assert (await handler(make_request())).status == 200
    up = ScriptedUpstream(UpstreamConnectFailure("x"), response(200))
    handler, _, _ = build(up, clock, on=[503])
    with pytest.raises(UpstreamConnectFailure):
        await handler(make_request())
    up = ScriptedUpstream(response(404), response(200))
    handler, _, _ = build(up, clock, on=["5xx"])
    assert (await handler(make_request())).status == 404


async def test_small_streaming_body_is_buffered_and_replayed() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamReset("lost"), response(200))
    handler, _, _ = build(up, clock, buffer=100)
    resp = await handler(make_request("PUT", body=StreamingBody([b"he", b"llo"])))
    assert resp.status == 200
    assert up.seen_bodies == [b"hello", b"hello"]


async def test_body_over_buffer_limit_streams_whole_but_is_not_retried() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamReset("lost"), response(200))
    handler, _, _ = build(up, clock, buffer=4)
    with pytest.raises(UpstreamReset):
        await handler(make_request("PUT", body=StreamingBody([b"he", b"llo", b"!"])))
    assert up.seen_bodies == [b"hello!"]


async def test_budget_exhaustion_stops_retries_and_is_counted() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, 0.0, clock)
    up = ScriptedUpstream(response(503), response(200))
    handler, obs, _ = build(up, clock, budget=budget)
    assert (await handler(make_request())).status == 503
    assert obs.of("retry_budget_exhausted") == [("retry_budget_exhausted", "svc")]
    assert obs.of("retry") == []


async def test_retries_stay_within_budget_against_a_failing_upstream() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response(503))
    handler, obs, _ = build(up, clock, attempts=3, budget_ratio=0.2, min_retries_per_s=1.0)
    n = 500
    for _ in range(n):
        await handler(make_request())
        clock.advance(0.001)
    retries = len(up.calls) - n
    # 500 requests within one 10 s window: ≤ 0.2 * 500 + 1/s * 10 s
    assert retries <= 0.2 * n + 10
    assert retries == len(obs.of("retry"))
    assert retries >= 0.2 * n  # and the budget is actually used


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(7)
    for retry in range(1, 8):
        step = min(0.25, 0.025 * 2 ** (retry - 1))
        for _ in range(20):
            d = backoff_delay(retry, 0.025, 0.25, rng)
            assert step / 2 <= d <= step


async def test_no_retry_when_backoff_would_pass_the_deadline() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response(503), response(200))
    handler, obs, sleeps = build(up, clock, backoff_base=1.0, backoff_max=1.0)
    req = make_request()
    req.deadline = clock.now + 0.4  # less than the smallest possible backoff (0.5 s)
    assert (await handler(req)).status == 503
    assert sleeps.delays == [] and obs.of("retry") == []


async def test_each_attempt_forwards_what_is_left_of_the_deadline() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(UpstreamConnectFailure("x"), response(200), clock=clock, latency=0.3)
    handler, _, sleeps = build(up, clock)
    req = make_request()
    req.deadline = clock.now + 2.0
    await handler(req)
    first = int(up.seen_headers[0][EXPECTED_TIMEOUT_HEADER])
    second = int(up.seen_headers[1][EXPECTED_TIMEOUT_HEADER])
    assert first == 2000
    assert second == int((2.0 - 0.3 - sleeps.delays[0]) * 1000)


async def test_per_try_timeout_raises_upstream_timeout() -> None:
    clock = FakeClock()  # the per-try timer itself runs on the event loop's real clock
    handler, _, _ = build(hang_forever, clock, per_try=0.05, attempts=0)
    with pytest.raises(UpstreamTimeout):
        await handler(make_request())


async def test_timeout_is_retried_when_configured() -> None:
    clock = FakeClock()
    calls = 0
    ok = response(200)

    async def hang_once(request):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            return await hang_forever(request)
        return ok

    handler, obs, _ = build(hang_once, clock, per_try=0.05, on=["timeout"])
    assert (await handler(make_request())).status == 200
    assert obs.of("retry") == [("retry", "svc", "timeout")]


async def test_attempt_past_the_deadline_is_not_made() -> None:
    clock = FakeClock()
    up = ScriptedUpstream(response(200))
    handler, _, _ = build(up, clock, attempts=0)
    req = make_request()
    req.deadline = clock.now - 0.001
    with pytest.raises(UpstreamTimeout):
        await handler(req)
    assert up.calls == []
