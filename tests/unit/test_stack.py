"""The chain runner (sidecar/stack.py): the order of the filters' hooks, answers and errors
on their way out, the router's attempts, a route continuing on another chain, and how
`compose` mixes filters with layers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from sidecar.errors import SidecarError, UpstreamReset
from sidecar.http import Request, Response
from sidecar.stack import Chain, Exchange, Filter, Handler, Router, compose
from tests.unit.resilience.fakes import make_request, response


class Recorder(Filter):
    """A filter that logs its hooks into a shared list, and can be told to answer, refuse
    or replace what passes through it."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        answer: Response | None = None,
        refuse: BaseException | None = None,
        recover: Response | None = None,
        replace: BaseException | None = None,
        fail_on_response: BaseException | None = None,
        active: bool = True,
    ) -> None:
        self.name, self.log, self.active = name, log, active
        self.answer, self.refuse, self.recover = answer, refuse, recover
        self.replace, self.fail_on_response = replace, fail_on_response
        self.seen: list[Exchange] = []

    def on_request(self, x: Exchange) -> Response | None:
        self.log.append(f"{self.name}.request")
        self.seen.append(x)
        if self.refuse is not None:
            raise self.refuse
        return self.answer

    def on_response(self, x: Exchange, response: Response) -> Response:
        self.log.append(f"{self.name}.response {response.status}")
        if self.fail_on_response is not None:
            raise self.fail_on_response
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        self.log.append(f"{self.name}.error {type(exc).__name__}")
        if self.replace is not None:
            raise self.replace from exc
        return self.recover


def terminal(log: list[str], *outcomes: Response | BaseException) -> Handler:
    script = list(outcomes)

    async def handle(request: Request) -> Response:
        log.append("terminal")
        outcome = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return handle


async def test_hooks_run_in_order_and_unwind_innermost_first() -> None:
    log: list[str] = []
    a, b = Recorder("a", log), Recorder("b", log)
    out = await Chain([a, b], terminal(log, response(200)))(make_request())
    assert out.status == 200
    assert log == ["a.request", "b.request", "terminal", "b.response 200", "a.response 200"]
    assert a.seen[0] is b.seen[0]  # one per-request state for the whole run


async def test_an_answer_skips_the_rest_and_only_outer_filters_see_it() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    b = Recorder("b", log, answer=response(429))
    c = Recorder("c", log)
    out = await Chain([a, b, c], terminal(log, response(200)))(make_request())
    assert out.status == 429
    assert log == ["a.request", "b.request", "a.response 429"]


async def test_a_refusal_unwinds_only_the_filters_it_passed() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    b = Recorder("b", log, refuse=SidecarError("no"))
    c = Recorder("c", log)
    with pytest.raises(SidecarError):
        await Chain([a, b, c], terminal(log, response(200)))(make_request())
    assert log == ["a.request", "b.request", "a.error SidecarError"]


async def test_an_error_turned_into_an_answer_goes_out_as_a_response() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    b = Recorder("b", log, recover=response(503))
    c = Recorder("c", log)
    out = await Chain([a, b, c], terminal(log, UpstreamReset("reset")))(make_request())
    assert out.status == 503
    assert log == [
        "a.request",
        "b.request",
        "c.request",
        "terminal",
        "c.error UpstreamReset",
        "b.error UpstreamReset",
        "a.response 503",
    ]


async def test_an_error_replaced_by_a_filter_is_what_outer_filters_and_the_caller_see() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    b = Recorder("b", log, replace=SidecarError("replaced"))
    with pytest.raises(SidecarError, match="replaced") as info:
        await Chain([a, b], terminal(log, UpstreamReset("reset")))(make_request())
    assert isinstance(info.value.__cause__, UpstreamReset)
    assert log[-2:] == ["b.error UpstreamReset", "a.error SidecarError"]


async def test_a_failing_after_hook_reaches_outer_filters_as_an_error() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    b = Recorder("b", log, fail_on_response=SidecarError("late"))
    with pytest.raises(SidecarError, match="late"):
        await Chain([a, b], terminal(log, response(200)))(make_request())
    assert log[-2:] == ["b.response 200", "a.error SidecarError"]


async def test_cancellation_passes_through_on_error_and_propagates() -> None:
    log: list[str] = []
    a = Recorder("a", log)
    started = asyncio.Event()

    async def hang(request: Request) -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(Chain([a], hang)(make_request()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["a.request", "a.error CancelledError"]


class ScriptedRetry:
    """A retry policy that retries errors and 503s up to `retries` times, without waiting."""

    def __init__(self, retries: int, buffer_first: bool = False) -> None:
        self.retries, self.buffer_first = retries, buffer_first
        self.pauses: list[tuple[float, str]] = []

    def begin(self, x: Exchange) -> bool:
        return not self.buffer_first

    async def tries(self, x: Exchange, attempt: Handler) -> Response:
        return await attempt(x.request)

    def _more(self, x: Exchange, reason: str) -> tuple[float, str] | None:
        return (0.0, reason) if x.request.attempt <= self.retries else None

    def after_error(self, x: Exchange, exc: SidecarError) -> tuple[float, str] | None:
        return self._more(x, exc.code)

    def after_response(self, x: Exchange, response: Response) -> tuple[float, str] | None:
        return self._more(x, "503") if response.status == 503 else None

    async def pause(
        self, x: Exchange, response: Response | None, decision: tuple[float, str]
    ) -> None:
        self.pauses.append(decision)
        x.request.attempt += 1


async def test_the_router_enters_and_leaves_its_filters_per_attempt() -> None:
    log: list[str] = []
    outer, per_attempt = Recorder("outer", log), Recorder("try", log)
    retry = ScriptedRetry(2)
    router = Router(
        retry, [per_attempt], terminal(log, UpstreamReset("r"), response(503), response(200))
    )
    request = make_request()
    out = await Chain([outer], router)(request)
    assert out.status == 200
    assert log == [
        "outer.request",
        "try.request",
        "terminal",
        "try.error UpstreamReset",
        "try.request",
        "terminal",
        "try.response 503",
        "try.request",
        "terminal",
        "try.response 200",
        "outer.response 200",
    ]
    assert retry.pauses == [(0.0, "upstream_reset"), (0.0, "503")]
    assert request.attempt == 3
    # The attempts share the request's state object: the router runs in the chain's run.
    assert all(x is outer.seen[0] for x in per_attempt.seen)


async def test_the_router_gives_up_with_the_last_error() -> None:
    log: list[str] = []
    outer = Recorder("outer", log)
    router = Router(ScriptedRetry(1), [Recorder("try", log)], terminal(log, UpstreamReset("r")))
    with pytest.raises(UpstreamReset):
        await Chain([outer], router)(make_request())
    assert log.count("terminal") == 2
    assert log[-1] == "outer.error UpstreamReset"


async def test_the_router_without_retry_makes_one_attempt() -> None:
    log: list[str] = []
    router = Router(None, [Recorder("try", log)], terminal(log, response(503)))
    out = await router(make_request())
    assert out.status == 503
    assert log == ["try.request", "terminal", "try.response 503"]


async def test_tries_that_must_wait_first_run_through_the_retry_policy() -> None:
    log: list[str] = []
    router = Router(
        ScriptedRetry(1, buffer_first=True), [Recorder("try", log)], terminal(log, response(200))
    )
    out = await Chain([Recorder("outer", log)], router)(make_request())
    assert out.status == 200
    assert log == [
        "outer.request",
        "try.request",
        "terminal",
        "try.response 200",
        "outer.response 200",
    ]


class Route:
    def __init__(self, path: Handler | None, fallback: Handler) -> None:
        self.path, self.fallback = path, fallback

    def path_for(self, request: Request) -> Handler | None:
        return self.path

    def __call__(self, request: Request) -> Awaitable[Response]:
        return self.fallback(request)


async def test_a_route_continues_on_the_chosen_chain_in_the_same_run() -> None:
    log: list[str] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    upstream = Chain([inner], terminal(log, response(200)))
    route = Route(upstream, terminal(log, response(500)))
    out = await Chain([outer], route)(make_request())
    assert out.status == 200
    assert log == [
        "outer.request",
        "inner.request",
        "terminal",
        "inner.response 200",
        "outer.response 200",
    ]
    assert inner.seen[0] is outer.seen[0]


async def test_a_route_with_no_path_yet_calls_the_router_itself() -> None:
    log: list[str] = []
    route = Route(None, terminal(log, response(202)))
    out = await Chain([Recorder("outer", log)], route)(make_request())
    assert out.status == 202


async def test_compose_runs_consecutive_filters_as_one_chain_and_layers_around_the_rest() -> None:
    log: list[str] = []
    a, b, c = Recorder("a", log), Recorder("b", log), Recorder("c", log)
    off = Recorder("off", log, active=False)

    class Layer:
        def wrap(self, inner: Handler) -> Handler:
            async def handle(request: Request) -> Response:
                log.append("layer")
                return await inner(request)

            return handle

    handler = compose([a, off, b, Layer(), c], terminal(log, response(200)))
    await handler(make_request())
    assert log == [
        "a.request",
        "b.request",
        "layer",
        "c.request",
        "terminal",
        "c.response 200",
        "b.response 200",
        "a.response 200",
    ]
    assert a.seen[0] is b.seen[0] and c.seen[0] is not a.seen[0]
    assert isinstance(handler, Chain) and len(handler.filters) == 2
