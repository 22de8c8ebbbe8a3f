"""The data path's own small HTTP types.

Layers see these, never a transport library's classes, so the transport (server protocol and
upstream pool) can be swapped without touching a layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.vocab.endpoint import Endpoint


class Headers:
    """An ordered multi-map of header fields; names are stored lower-case (HTTP/1.1 is
    case-insensitive and HTTP/2 requires lower case), values as received (latin-1 text)."""

    __slots__ = ("_items",)

    def __init__(
        self,
        items: Iterable[tuple[str, str]] = (),
        lower: list[tuple[str, str]] | None = None,
    ) -> None:
        self._items: list[tuple[str, str]] = (
            [(k.lower(), v) for k, v in items] if lower is None else lower
        )

    @staticmethod
    def from_lower(items: list[tuple[str, str]]) -> Headers:
        """Adopt a list whose names are already lower-case (the parsers produce that)."""
        return Headers(lower=items)

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def __contains__(self, name: object) -> bool:
        for k, _ in self._items:  # noqa: SIM110 - no generator per lookup (hot path)
            if k == name:
                return True
        return False

    def set(self, name: str, value: str) -> None:
        """Replace every field called `name` with one field."""
        name = name.lower()
        items = self._items
        for k, _ in items:
            if k == name:
                self._items = [(k, v) for k, v in items if k != name]
                self._items.append((name, value))
                return
        # Not there (the common case: a field we add): no rebuild of the list.
        items.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def replace(self, names: frozenset[str], fields: list[tuple[str, str]]) -> None:
        """Drop every field named in `names` (lower-case), then append `fields`: the result
        of `set`/`remove` for each, in one pass (propagators write several fields per
        request)."""
        items = self._items
        for k, _ in items:
            if k in names:
                self._items = [(k, v) for k, v in items if k not in names]
                self._items.extend(fields)
                return
        items.extend(fields)  # none there: no rebuild

    def remove(self, name: str) -> None:
        self._items = [(k, v) for k, v in self._items if k != name]

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def copy(self) -> Headers:
        return Headers.from_lower(list(self._items))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Body(Protocol):
    """A request or response body: an async stream of non-empty byte chunks.

    `length` is the Content-Length when known (None: chunked / close-delimited).
    `replayable` bodies can be iterated more than once (needed for retries)."""

    length: int | None
    replayable: bool

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class BytesBody:
    """A body held in memory; replayable."""

    __slots__ = ("data", "length", "replayable")

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.length: int | None = len(data)
        self.replayable = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self.data)


class _Once:
    """Iterator over one chunk. A class, not an async generator: mypyc compiles these
    (it cannot compile async generators), and it allocates less per body."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data = self._data
        if not data:
            raise StopAsyncIteration
        self._data = b""
        return data


EMPTY_BODY = BytesBody(b"")


class InterimSink(Protocol):
    """Takes 1xx interim responses (e.g. 103 Early Hints) for a request being answered."""

    def write_interim(
        self, request: Request, status: int, headers: list[tuple[str, str]]
    ) -> None: ...


@dataclass(slots=True, init=False)
class Request:
    """One request travelling through the layer stack.

    The fields after `body` are per-request context that layers fill in as it flows:
    routing sets `upstream`, the deadline layer sets `deadline`, the balancer sets `endpoint`,
    the retry layer sets `attempt`; telemetry keeps its span context in `trace`."""

    method: str
    target: str  # origin-form path+query as forwarded ("/users/1?x=y")
    headers: Headers
    body: Body
    http_version: str = "1.1"
    client_addr: str = ""
    scheme: str = "http"
    direction: str = "outbound"  # "inbound" | "outbound"
    upstream: str = ""
    authority: str = ""  # Host to send upstream
    request_id: str = ""
    start: float = 0.0  # monotonic time the request head was parsed
    deadline: float | None = None  # monotonic deadline for the whole exchange
    endpoint: Endpoint | None = None
    attempt: int = 1
    tried: list[Endpoint] = field(default_factory=list)
    retry_reason: str = ""
    trace: Any = None  # telemetry's span context; opaque to other layers
    upstream_time: float = 0.0  # seconds spent waiting on upstream (for proxy overhead)
    # The Upgrade field of a request asking to switch protocols ("websocket"): kept through
    # header hygiene and tunnelled after a 101; "" for every ordinary request.
    upgrade: str = ""
    # Where an upstream's 1xx interim responses go (the client connection), if anywhere.
    interim: InterimSink | None = None

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        http_version: str = "1.1",
        client_addr: str = "",
        scheme: str = "http",
        direction: str = "outbound",
        upstream: str = "",
        authority: str = "",
        request_id: str = "",
        start: float = 0.0,
        deadline: float | None = None,
        endpoint: Endpoint | None = None,
        attempt: int = 1,
        tried: list[Endpoint] | None = None,
        retry_reason: str = "",
        trace: Any = None,
        upstream_time: float = 0.0,
        upgrade: str = "",
        interim: InterimSink | None = None,
    ) -> None:
        # Written out (init=False): the dataclass-generated __init__ is interpreted code
        # even in the compiled build, ~1.6 µs per request; this one is compiled.
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.client_addr = client_addr
        self.scheme = scheme
        self.direction = direction
        self.upstream = upstream
        self.authority = authority
        self.request_id = request_id
        self.start = start
        self.deadline = deadline
        self.endpoint = endpoint
        self.attempt = attempt
        self.tried = [] if tried is None else tried
        self.retry_reason = retry_reason
        self.trace = trace
        self.upstream_time = upstream_time
        self.upgrade = upgrade
        self.interim = interim

    @property
    def path(self) -> str:
        q = self.target.find("?")
        return self.target if q < 0 else self.target[:q]


@dataclass(slots=True, init=False)
class Response:
    status: int
    headers: Headers
    body: Body = EMPTY_BODY
    reason: str = ""
    error_code: str = ""  # the error code when the sidecar produced this reply itself

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: Body = EMPTY_BODY,
        reason: str = "",
        error_code: str = "",
    ) -> None:
        # Written out for the compiled build, as Request's.
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason
        self.error_code = error_code


def body_trailers(body: Body) -> Headers | None:
    """The trailer fields that ended `body`, once it was read to the end (HTTP/2 bodies carry
    them, e.g. gRPC's `grpc-status`); None for bodies without trailers."""
    trailers = getattr(body, "trailers", None)
    return trailers if isinstance(trailers, Headers) else None
