"""Fallback replies when the upstream can't answer (`upstreams.<name>.fallback`, and the
`x-sidecar-fallback` header).

On the configured refusals (circuit_open, no_healthy_endpoints) the layer answers with the
last good response to the same GET target if one is cached and fresh, else with the static
reply if configured, else lets the error through. Replies are marked
`x-sidecar-fallback: last_good|static` and `x-sidecar-error: <code that triggered it>`;
last_good replies carry `age`.

Caching is conservative: only 2xx answers to GET without `authorization`/`cookie`, whose
response has no `set-cookie` and no `cache-control: no-store|private`, and whose
Content-Length is known and fits the cache. Anything else streams through untouched."""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.config import FallbackConfig
from sidecar.errors import CircuitOpen, NoHealthyEndpoints, SidecarError
from sidecar.events import NullObserver, Observer
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.resilience.last_good import CachedResponse, LastGoodCache
from sidecar.stack import Exchange, Filter, Handler, alone
from sidecar.vocab.headers import ERROR_HEADER, FALLBACK_HEADER

_CODES = {"circuit_open": CircuitOpen.code, "no_healthy_endpoints": NoHealthyEndpoints.code}
_PRIVATE_REQUEST_HEADERS = ("authorization", "cookie")


def _cacheable_response(response: Response) -> bool:
    if not 200 <= response.status < 300 or response.body.length is None:
        return False
    headers = response.headers
    if "set-cookie" in headers:
        return False
    cc = (headers.get("cache-control") or "").lower()
    return "no-store" not in cc and "private" not in cc


def _cacheable_request(request: Request) -> bool:
    if request.method != "GET":
        return False
    return not any(h in request.headers for h in _PRIVATE_REQUEST_HEADERS)


async def _read_all(response: Response) -> bytes:
    chunks = [chunk async for chunk in response.body]
    return b"".join(chunks)


class FallbackLayer(Filter):
    __slots__ = ("_cache", "_clock", "_codes", "_observer", "_static", "_upstream")

    def __init__(
        self,
        upstream: str,
        config: FallbackConfig,
        clock: Clock,
        observer: Observer | None = None,
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._observer: Observer = observer or NullObserver()
        self._codes = frozenset(_CODES[name] for name in config.on)
        self._static: tuple[int, tuple[tuple[str, str], ...], bytes] | None = None
        if config.static is not None:
            s = config.static
            self._static = (
                s.status,
                tuple((k.lower(), v) for k, v in s.headers.items()),
                s.body.encode(),
            )
        lg = config.last_good
        self._cache = (
            LastGoodCache(lg.max_entries, lg.max_bytes, lg.max_age) if lg.enabled else None
        )

    @property
    def cache(self) -> LastGoodCache | None:
        return self._cache

    @property
    def active(self) -> bool:
        return bool(self._codes) and (self._static is not None or self._cache is not None)

    @property
    def waits(self) -> bool:
        """Keeping last-good replies means reading a response's body before passing it on:
        then this stage runs as a layer (a coroutine), not as a filter."""
        return self._cache is not None

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        if isinstance(exc, SidecarError) and exc.code in self._codes:
            return self._reply(x.request, exc.code)
        return None

    def wrap(self, inner: Handler) -> Handler:
        if not self.active:
            return inner
        if self._cache is None:
            return alone(self, inner)
        cache, clock, codes = self._cache, self._clock, self._codes

        async def fallback(request: Request) -> Response:
            try:
                response = await inner(request)
            except SidecarError as exc:
                if exc.code not in codes:
                    raise
                reply = self._reply(request, exc.code)
                if reply is None:
                    raise
                return reply
            if (
                _cacheable_request(request)
                and _cacheable_response(response)
                and cache.fits(response.body.length or 0)
            ):
                body = await _read_all(response)
                response.body = BytesBody(body)
                cache.put(
                    request.target,
                    CachedResponse(
                        response.status, tuple(response.headers), body, clock.monotonic()
                    ),
                )
            return response

        return fallback

    def _reply(self, request: Request, code: str) -> Response | None:
        if self._cache is not None and request.method == "GET":
            now = self._clock.monotonic()
            entry = self._cache.get(request.target, now)
            if entry is not None:
                headers = Headers.from_lower(
                    [(k, v) for k, v in entry.headers if k not in ("age", ERROR_HEADER)]
                )
                headers.add(FALLBACK_HEADER, "last_good")
                headers.add(ERROR_HEADER, code)
                headers.add("age", str(int(now - entry.stored_at)))
                self._observer.fallback(self._upstream, "last_good", code)
                return Response(entry.status, headers, BytesBody(entry.body))
        if self._static is not None:
            status, static_headers, body = self._static
            headers = Headers.from_lower(list(static_headers))
            if "content-type" not in headers and body:
                looks_json = body.lstrip()[:1] in (b"{", b"[")
                headers.add("content-type", "application/json" if looks_json else "text/plain")
            headers.add(FALLBACK_HEADER, "static")
            headers.add(ERROR_HEADER, code)
            self._observer.fallback(self._upstream, "static", code)
            return Response(status, headers, BytesBody(body))
        return None
