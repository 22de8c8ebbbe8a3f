"""Resilience policies through the real proxy, against a real upstream on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

UP = "user-service"


async def setup(upstreams: Any, sidecar_factory: Any, policy: dict[str, Any], n: int = 1):
    ups = [await upstreams(f"u{i}") for i in range(n)]
    sc = await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"static": {UP: [f"127.0.0.1:{u.port}" for u in ups]}},
            "upstreams": {"default": policy},
        }
    )
    return ups, f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}", sc


async def get(
    s: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with s.get(url, headers={"Host": UP, **headers}) as r:
        return r.status, r.headers.copy(), await r.read()  # type: ignore[return-value]


async def test_failing_upstream_trips_breaker_then_gets_no_traffic(upstreams, sidecar_factory):
    (up,), out, sc = await setup(
        upstreams,
        sidecar_factory,
        {
            "retries": {"attempts": 0},
            "circuit_breaker": {"consecutive_failures": 5, "reset_timeout": "30s"},
            "outlier_detection": {"enabled": False},
        },
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            status, _, _ = await get(s, f"{out}/status/503")
            assert status == 503
        assert len(up.seen) == 5
        t = time.perf_counter()
        status, headers, body = await get(s, f"{out}/status/503")
        elapsed = time.perf_counter() - t
        assert status == 503 and headers["x-sidecar-error"] == "circuit_open"
        assert 1 <= int(headers["retry-after"]) <= 30, headers
        assert elapsed < 0.05  # answered by the sidecar, no upstream call
        for _ in range(20):
            await get(s, f"{out}/status/200")
    assert len(up.seen) == 5  # nothing more reached the upstream while open
    assert sc.breakers[UP].snapshot()["state"] == "open"
    admin = f"http://{sc.config.listeners.admin}"
    async with aiohttp.ClientSession() as s, s.get(f"{admin}/metrics") as r:
        text = await r.text()
    assert f'sidecar_circuit_breaker_state{{service="bff",upstream="{UP}"}} 2.0' in text
    assert (
        'sidecar_requests_rejected_total{reason="circuit_open",service="bff",upstream="user-service"}'
        in text
        or 'reason="circuit_open"' in text
    )


async def test_open_breaker_answers_in_under_5ms_median(upstreams, sidecar_factory):
    (up,), out, sc = await setup(
        upstreams,
        sidecar_factory,
        {"retries": {"attempts": 0}, "circuit_breaker": {"consecutive_failures": 1}},
    )
    async with aiohttp.ClientSession() as s:
        await get(s, f"{out}/status/500")
        times = []
        for _ in range(50):
            t = time.perf_counter()
            status, headers, _ = await get(s, f"{out}/x")
            times.append(time.perf_counter() - t)
            assert headers["x-sidecar-error"] == "circuit_open"
    times.sort()
    assert times[len(times) // 2] < 0.005


async def test_slow_upstream_gives_504_near_the_per_try_timeout(upstreams, sidecar_factory):
    (up,), out, _ = await setup(
        upstreams,
        sidecar_factory,
        {"retries": {"attempts": 0}, "timeouts": {"per_try": "300ms", "total": "5s"}},
    )
    up.release = asyncio.Event()  # /slow never answers
    async with aiohttp.ClientSession() as s:
        t = time.perf_counter()
        status, headers, _ = await get(s, f"{out}/slow")
        elapsed = time.perf_counter() - t
    assert status == 504 and headers["x-sidecar-error"] == "upstream_timeout"
    assert 0.29 <= elapsed < 1.0


async def test_incoming_deadline_caps_the_wait_and_is_forwarded(upstreams, sidecar_factory):
    (up,), out, _ = await setup(
        upstreams, sidecar_factory, {"retries": {"attempts": 0}, "timeouts": {"per_try": "3s"}}
    )
    async with aiohttp.ClientSession() as s:
        status, _, _ = await get(s, f"{out}/x", **{"x-sidecar-expected-timeout-ms": "100"})
        assert status == 200
        forwarded = int(up.seen[0].headers["x-sidecar-expected-timeout-ms"])
        assert 0 < forwarded <= 100
        up.release = asyncio.Event()
        t = time.perf_counter()
        status, headers, _ = await get(s, f"{out}/slow", **{"x-sidecar-expected-timeout-ms": "100"})
        elapsed = time.perf_counter() - t
        assert status == 504 and headers["x-sidecar-error"] == "deadline_exceeded"
        assert elapsed < 0.6
        # a deadline already spent: answered without calling upstream
        before = len(up.seen)
        status, headers, _ = await get(s, f"{out}/x", **{"x-sidecar-expected-timeout-ms": "0"})
        assert status == 504 and headers["x-sidecar-error"] == "deadline_exceeded"
        assert len(up.seen) == before


async def test_retries_go_elsewhere_and_never_exceed_the_budget(upstreams, sidecar_factory):
    ups, out, _ = await setup(
        upstreams,
        sidecar_factory,
        {
            "load_balancer": "round_robin",
            "retries": {
                "attempts": 2,
                "on": [503],
                "budget_ratio": 0.2,
                "min_retries_per_s": 0,
                "backoff_base": "1ms",
                "backoff_max": "2ms",
            },
            "circuit_breaker": {"enabled": False},
            "outlier_detection": {"enabled": False},
        },
        n=2,
    )
    n = 100
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            status, headers, _ = await get(s, f"{out}/status/503")
            assert status == 503
    total = sum(len(u.seen) for u in ups)
    assert n < total <= n * 1.2 + 1
    retried = [x for u in ups for x in u.seen if "x-sidecar-attempt" in x.headers]
    assert retried and all(x.headers["x-sidecar-attempt"] == "2" for x in retried[:5])


async def test_post_is_not_retried_on_5xx(upstreams, sidecar_factory):
    (up,), out, _ = await setup(
        upstreams, sidecar_factory, {"retries": {"attempts": 2, "on": [503]}}
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{out}/status/503", headers={"Host": UP}, data=b"x") as r,
    ):
        assert r.status == 503
    assert len(up.seen) == 1


async def test_fallback_static_and_last_good_are_served_and_marked(upstreams, sidecar_factory):
    (up,), out, sc = await setup(
        upstreams,
        sidecar_factory,
        {
            "retries": {"attempts": 0},
            "circuit_breaker": {"consecutive_failures": 1, "reset_timeout": "30s"},
            "fallback": {
                "static": {
                    "status": 200,
                    "headers": {"content-type": "application/json"},
                    "body": '{"items": []}',
                },
                "last_good": {"enabled": True},
            },
        },
    )
    async with aiohttp.ClientSession() as s:
        status, _, good = await get(s, f"{out}/users/1")
        assert status == 200
        await get(s, f"{out}/status/500")  # trips the breaker
        status, headers, body = await get(s, f"{out}/users/1")
        assert status == 200 and body == good
        assert headers["x-sidecar-fallback"] == "last_good"
        assert headers["x-sidecar-error"] == "circuit_open"
        assert "age" in {k.lower() for k in headers}
        status, headers, body = await get(s, f"{out}/users/2")  # nothing cached: static
        assert status == 200 and body == b'{"items": []}'
        assert headers["x-sidecar-fallback"] == "static"


async def test_ewma_steers_away_from_a_slow_endpoint(upstreams, sidecar_factory):
    ups, out, _ = await setup(upstreams, sidecar_factory, {"load_balancer": "ewma"}, n=2)
    fast, slow = ups
    # Peak-EWMA is load-aware (cost = rtt * (inflight + 1)): on a busy machine the fast
    # endpoint's rtt grows with the batch, so the slow one is made clearly slower than a
    # loaded fast one (0.3 s vs ~5 * 20 ms) for the test to measure steering, not the CPU.
    slow.delay = 0.3
    async with aiohttp.ClientSession() as s:
        # The first batches teach the balancer which endpoint is slow; enough batches after
        # them that the learning phase can't decide the share.
        for _ in range(30):
            await asyncio.gather(*(get(s, f"{out}/x") for _ in range(5)))
    share = len(fast.seen) / (len(fast.seen) + len(slow.seen))
    assert share > 0.8, (len(fast.seen), len(slow.seen))
