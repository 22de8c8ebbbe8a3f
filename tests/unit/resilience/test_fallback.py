import pytest

from sidecar.config import FallbackConfig
from sidecar.errors import CircuitOpen, NoHealthyEndpoints, UpstreamReset
from sidecar.http import Headers, Response
from sidecar.resilience.fallback import FallbackLayer
from sidecar.resilience.last_good import CachedResponse, LastGoodCache
from tests.unit.resilience.fakes import (
    FakeClock,
    RecordingObserver,
    ScriptedUpstream,
    StreamingBody,
    make_request,
    response,
)


def layer(clock: FakeClock, obs: RecordingObserver, **kw: object) -> FallbackLayer:
    return FallbackLayer("svc", FallbackConfig(**kw), clock, obs)  # type: ignore[arg-type]


async def _read(resp: Response) -> bytes:
    return b"".join([c async for c in resp.body])


async def test_static_reply_is_marked_and_counted() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    up = ScriptedUpstream(CircuitOpen("open"))
    handler = layer(clock, obs, static={"status": 200, "body": '{"items": []}'}).wrap(up)
    resp = await handler(make_request())
    assert resp.status == 200
    assert resp.headers.get("x-sidecar-fallback") == "static"
    assert resp.headers.get("x-sidecar-error") == "circuit_open"
    assert resp.headers.get("content-type") == "application/json"
    assert await _read(resp) == b'{"items": []}'
    assert obs.of("fallback") == [("fallback", "svc", "static", "circuit_open")]


async def test_errors_not_configured_pass_through() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    handler = layer(clock, obs, on=["circuit_open"], static={"body": "x"}).wrap(
        ScriptedUpstream(NoHealthyEndpoints("none"), UpstreamReset("r"))
    )
    with pytest.raises(NoHealthyEndpoints):
        await handler(make_request())
    with pytest.raises(UpstreamReset):
        await handler(make_request())


async def test_last_good_serves_the_cached_get_with_age() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    up = ScriptedUpstream(
        response(200, b"fresh", [("content-length", "5"), ("content-type", "text/plain")]),
        NoHealthyEndpoints("none"),
    )
    handler = layer(clock, obs, last_good={"enabled": True}, static={"body": "s"}).wrap(up)
    first = await handler(make_request(target="/a?x=1"))
    assert await _read(first) == b"fresh"  # the caller still gets the whole body
    clock.advance(42.0)
    resp = await handler(make_request(target="/a?x=1"))
    assert resp.headers.get("x-sidecar-fallback") == "last_good"
    assert resp.headers.get("x-sidecar-error") == "no_healthy_endpoints"
    assert resp.headers.get("age") == "42"
    assert resp.headers.get("content-type") == "text/plain"
    assert await _read(resp) == b"fresh"
    # another target has no last good answer: static
    other = await handler(make_request(target="/b"))
    assert other.headers.get("x-sidecar-fallback") == "static"


async def test_last_good_respects_max_age() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    up = ScriptedUpstream(response(200, b"v"), CircuitOpen("open"))
    handler = layer(clock, obs, last_good={"enabled": True, "max_age": 10}).wrap(up)
    await handler(make_request())
    clock.advance(11.0)
    with pytest.raises(CircuitOpen):
        await handler(make_request())


@pytest.mark.parametrize(
    ("method", "req_headers", "resp"),
    [
        ("POST", [], response(200, b"v")),
        ("GET", [("authorization", "Bearer x")], response(200, b"v")),
        ("GET", [("cookie", "a=b")], response(200, b"v")),
        ("GET", [], response(500, b"v")),
        ("GET", [], response(200, b"v", [("content-length", "1"), ("set-cookie", "a=b")])),
        ("GET", [], response(200, b"v", [("content-length", "1"), ("cache-control", "no-store")])),
        ("GET", [], Response(200, Headers(), StreamingBody([b"v"]))),  # length unknown
    ],
)
async def test_not_cached(method: str, req_headers: list[tuple[str, str]], resp: Response) -> None:
    clock, obs = FakeClock(), RecordingObserver()
    fb = layer(clock, obs, last_good={"enabled": True})
    handler = fb.wrap(ScriptedUpstream(resp))
    out = await handler(make_request(method, headers=req_headers))
    assert out is resp
    assert fb.cache is not None and len(fb.cache) == 0


async def test_streaming_body_with_known_length_is_buffered_once() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    fb = layer(clock, obs, last_good={"enabled": True})
    body = StreamingBody([b"ab", b"cd"], length=4)
    out = await fb.wrap(ScriptedUpstream(Response(200, Headers(), body)))(make_request())
    assert await _read(out) == b"abcd"
    assert fb.cache is not None and len(fb.cache) == 1


def test_cache_is_bounded_by_entries_and_bytes() -> None:
    cache = LastGoodCache(max_entries=3, max_bytes=10, max_age=60)

    def entry(n: int) -> CachedResponse:
        return CachedResponse(200, (), b"x" * n, 0.0)

    for k in "abcd":
        cache.put(k, entry(1))
    assert len(cache) == 3 and cache.get("a", 0.0) is None  # LRU evicted
    cache.get("b", 0.0)  # b is now most recent
    cache.put("e", entry(8))
    assert cache.size_bytes <= 10
    assert cache.get("b", 0.0) is not None and cache.get("c", 0.0) is None
    cache.put("huge", entry(11))
    assert cache.get("huge", 0.0) is None
