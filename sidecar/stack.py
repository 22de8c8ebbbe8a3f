"""The stage seam: a handler is `async (Request) -> Response`; a stage is a filter or a layer.

Most stages only act before and after the call (count it, admit it, time it, record it): they
are **filters** (Envoy's filter chain), three synchronous hooks over one per-request
`Exchange`. A run of consecutive filters is driven by one `Chain` coroutine, so the common
path is plain method calls instead of a coroutine frame per stage, each resumed on every
wake-up. A stage that must wait (retry backoff, buffering a body, discovery on first use) is
a **layer**: it wraps the rest of the path in a coroutine of its own (linkerd2-proxy's stack,
aiohttp's middleware). `compose` builds a path from a list of both, outermost first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from sidecar.errors import SidecarError
from sidecar.http import Request, Response

Handler = Callable[[Request], Awaitable[Response]]


class Exchange:
    """One request's run through a chain: the request, and what each filter keeps between
    its hooks (a field per owner, set by its `on_request` before any other hook reads it).
    Built per run, never shared; one object instead of a coroutine frame per stage."""

    __slots__ = (
        "body",
        "breaker_ticket",
        "caller_bound",
        "client_call",
        "client_inflight",
        "client_method",
        "client_sc",
        "client_span",
        "client_start",
        "client_upstream",
        "deadline_expiry",
        "deadline_hold",
        "deadline_lazy",
        "picked",
        "replay_safe",
        "request",
        "server_call",
        "server_method",
        "server_path",
        "server_recording",
        "server_route",
        "server_sc",
        "server_span",
        "server_start",
        "since",
        "try_expiry",
        "try_start",
        "try_timeout",
    )

    # Opaque to this layer: each owner casts its own field back to its type.
    # server telemetry
    server_start: float
    server_method: str
    server_route: str  # "" until needed (see ServerTelemetryLayer._route)
    server_path: str
    server_sc: Any
    server_span: Any
    server_call: tuple[str, str] | None
    server_recording: bool
    # deadline
    deadline_expiry: Any
    deadline_hold: Any
    deadline_lazy: bool  # its timer is left to the router's tries (see DeadlineLayer)
    caller_bound: bool
    # breaker
    breaker_ticket: int
    # retry (the router): whether this try's request could be sent again
    replay_safe: bool
    # per-try timeout (the router's attempts)
    try_expiry: Any
    try_timeout: float
    # balance
    picked: Any
    try_start: float
    body: Any
    since: float
    # client telemetry
    client_start: float
    client_method: str
    client_upstream: str
    client_sc: Any
    client_span: Any
    client_call: tuple[str, str] | None
    client_inflight: Any

    def __init__(self, request: Request) -> None:
        self.request = request
        self.deadline_lazy = False


@mypyc_attr(allow_interpreted_subclasses=True)
class Filter:
    """A stage that acts before and after the call without waiting: a subclass overrides
    the hooks it needs.

    `on_request`: None to go on, or a Response to answer at once (the filters inside it
    and the terminal are not called); raise a SidecarError to refuse.
    `on_response`: the response on its way out (returned as is, or another one).
    `on_error`: the exception on its way out: None lets it go on, a Response answers
    instead, raising replaces it. Only filters whose `on_request` returned None see either.

    A base class, not a Protocol, for speed: compiled, the chain calls a filter's hooks
    through the class's method table instead of looking each one up by name (~18 hooks per
    request)."""

    def on_request(self, x: Exchange) -> Response | None:
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        return None


class Layer(Protocol):
    def wrap(self, inner: Handler) -> Handler:
        """Return a handler that does this layer's job around `inner`.
        Called once when a path is built, never per request."""
        ...


class Retry(Protocol):
    """What the router asks of its retry policy (sidecar/resilience/retry.py). A decision
    is (backoff delay, reason) for one more try, or None for no more."""

    def begin(self, x: Exchange) -> bool:
        """Before the first try. False when the tries need a coroutine of their own (a body
        to buffer for replay first): then `tries` runs all of them."""
        ...

    def tries(self, x: Exchange, attempt: Handler) -> Awaitable[Response]: ...
    def after_error(self, x: Exchange, exc: SidecarError) -> tuple[float, str] | None: ...
    def after_response(self, x: Exchange, response: Response) -> tuple[float, str] | None: ...
    def pause(
        self, x: Exchange, response: Response | None, decision: tuple[float, str]
    ) -> Awaitable[None]:
        """Between tries: drop the unused response, back off, mark the next try."""
        ...


class Router:
    """The terminal stage of an upstream's path (Envoy's router filter): attempts, each the
    per-attempt `filters` around `send`, as many as `retry` decides. The chain that ends
    with it runs the attempts (`run_attempts`) on the request's own `Exchange`."""

    __slots__ = ("attempt", "filters", "retry", "send")

    def __init__(self, retry: Retry | None, filters: Sequence[Filter], send: Handler) -> None:
        self.retry = retry
        self.filters: tuple[Filter, ...] = tuple(f for f in filters if getattr(f, "active", True))
        self.send = send
        # One attempt as a handler of its own, for tries run outside the chain.
        self.attempt = Chain(self.filters, send)

    def __call__(self, request: Request) -> Awaitable[Response]:
        return run_attempts(Exchange(request), self, [])


class Chain:
    """Runs filters around a terminal in one coroutine: every `on_request` in order, the
    terminal, then `on_response` / `on_error` innermost first. The terminal may be a
    `Router` (its attempts are awaited from here, `run_attempts`) or a route: something with
    `path_for(request)` naming the path to continue on, whose filters then run here too."""

    __slots__ = ("_path_for", "_router", "filters", "terminal")

    def __init__(self, filters: Sequence[Filter], terminal: Handler) -> None:
        if isinstance(terminal, Chain):
            # Two runs in a row are one run: one coroutine, not two.
            filters = [*filters, *terminal.filters]
            terminal = terminal.terminal
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.terminal: Handler = terminal
        self._router = terminal if isinstance(terminal, Router) else None
        self._path_for: Callable[[Request], Handler | None] | None = getattr(
            terminal, "path_for", None
        )

    async def __call__(self, request: Request) -> Response:
        x = Exchange(request)
        entered: list[Filter] = []
        chain = self
        response: Response | None = None
        try:
            while True:
                response = enter(x, chain.filters, entered)
                if response is not None:
                    break  # answered there: only the filters outside it see the reply
                router = chain._router
                if router is not None:
                    response = await run_attempts(x, router, entered)
                    break
                path_for = chain._path_for
                if path_for is not None:
                    path = path_for(request)
                    if isinstance(path, Chain):
                        chain = path
                        continue
                    if path is not None:
                        response = await path(request)
                        break
                response = await chain.terminal(request)
                break
        except BaseException as exc:
            return unwind(entered, 0, x, None, exc)
        return unwind(entered, 0, x, response, None)


def enter(x: Exchange, filters: tuple[Filter, ...], entered: list[Filter]) -> Response | None:
    """`on_request` of each filter in order, until one answers."""
    for f in filters:
        response = f.on_request(x)
        if response is not None:
            return response
        entered.append(f)
    return None


async def run_attempts(x: Exchange, router: Router, entered: list[Filter]) -> Response:
    """The router's tries: each enters the per-attempt filters (on top of `entered`, the
    filters of the request around it), sends, and leaves them; then the retry policy
    decides on one more."""
    request, retry = x.request, router.retry
    if retry is not None and not retry.begin(x):
        return await retry.tries(x, router.attempt)
    while True:
        base = len(entered)
        response: Response | None = None
        err: BaseException | None = None
        try:
            response = enter(x, router.filters, entered)
            if response is None:
                response = await router.send(request)
        except BaseException as exc:
            err = exc
        if retry is None:
            return unwind(entered, base, x, response, err)
        try:
            response = unwind(entered, base, x, response, err)
        except SidecarError as exc:
            decision = retry.after_error(x, exc)
            if decision is None:
                raise
            response = None
        else:
            decision = retry.after_response(x, response)
            if decision is None:
                return response
        await retry.pause(x, response, decision)


def unwind(
    entered: list[Filter],
    base: int,
    x: Exchange,
    response: Response | None,
    err: BaseException | None,
) -> Response:
    """The after-hooks of `entered[base:]`, innermost first (and taken off the list): a
    response goes out through `on_response`, an exception through `on_error` until a filter
    answers instead of it."""
    while len(entered) > base:
        f = entered.pop()
        try:
            if err is None:
                assert response is not None
                response = f.on_response(x, response)
            else:
                reply = f.on_error(x, err)
                if reply is not None:
                    response, err = reply, None
        except BaseException as new:
            err = new
    if err is not None:
        raise err
    assert response is not None
    return response


def _is_filter(stage: object) -> bool:
    # A filter that must wait under some configuration says so (`waits`): it then runs as
    # a layer, with a coroutine of its own around the rest.
    return hasattr(stage, "on_request") and not getattr(stage, "waits", False)


def compose(stages: Sequence[Filter | Layer], terminal: Handler) -> Handler:
    """`compose([a, b, c], t)` handles a request as a(b(c(t))): consecutive filters run as
    one `Chain`, a layer wraps everything after it. A filter whose `active` is False (its
    policy is off) is left out."""
    handler = terminal
    run: list[Filter] = []
    for stage in reversed(stages):
        if _is_filter(stage):
            if getattr(stage, "active", True):
                run.insert(0, stage)  # type: ignore[arg-type]
            continue
        if run:
            handler = Chain(run, handler)
            run = []
        handler = stage.wrap(handler)  # type: ignore[union-attr]
    return Chain(run, handler) if run else handler


def alone(stage: Filter, inner: Handler) -> Handler:
    """One filter around `inner` (a filter used as a layer, e.g. in its own tests)."""
    return compose([stage], inner)
