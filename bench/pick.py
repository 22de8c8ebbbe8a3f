"""Balancer pick cost for 3, 100 and 1 000 endpoints.

Balancers are found through `sidecar.balance.factory.make_balancer` when that exists (it is
tried with the call shapes a factory plausibly has), else by scanning `sidecar.balance.*` for
classes named `*Balancer`. Three costs per balancer and size:
  pick            — `balancer.pick(candidates)` alone (the Balancer contract says O(1));
  pick+observe    — plus the feedback call after the attempt (EWMA's update);
  available+pick  — plus `Cluster.available(now)`, which the per-request pick layer calls first.
Each figure is the best of several repeats (least disturbed by the other processes)."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.balance.cluster import Cluster
from sidecar.clock import SystemClock
from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint

SIZES = (3, 100, 1000)
POLICIES = ("round_robin", "random", "least_request", "ewma")


@dataclass(frozen=True, slots=True)
class PickCost:
    balancer: str
    endpoints: int
    pick_ns: float
    pick_observe_ns: float
    available_pick_ns: float

    def to_json(self) -> dict[str, object]:
        return {
            "balancer": self.balancer,
            "endpoints": self.endpoints,
            "pick_ns": round(self.pick_ns, 1),
            "pick_observe_ns": round(self.pick_observe_ns, 1),
            "available_pick_ns": round(self.available_pick_ns, 1),
        }


def _try_build(factory: Callable[..., Any], name: str) -> Any:
    from sidecar.config import UpstreamConfig

    clock = SystemClock()
    config = UpstreamConfig(load_balancer=name)  # type: ignore[arg-type]
    shapes: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((name,), {}),
        ((name,), {"clock": clock}),
        ((name, clock), {}),
        ((config,), {}),
        ((config,), {"clock": clock}),
        ((config, clock), {}),
    ]
    for args, kwargs in shapes:
        try:
            balancer = factory(*args, **kwargs)
        except (TypeError, AttributeError, KeyError, ValueError):
            continue
        if callable(getattr(balancer, "pick", None)):
            return balancer
    return None


def _from_factory() -> dict[str, Callable[[], Any]]:
    try:
        factory_mod = importlib.import_module("sidecar.balance.factory")
    except ImportError:
        return {}
    make = getattr(factory_mod, "make_balancer", None)
    if make is None:
        return {}
    found: dict[str, Callable[[], Any]] = {}
    for name in POLICIES:
        if _try_build(make, name) is not None:
            found[name] = functools.partial(_try_build, make, name)
    return found


def _from_modules() -> dict[str, Callable[[], Any]]:
    import sidecar.balance as pkg

    found: dict[str, Callable[[], Any]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"sidecar.balance.{info.name}")
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not cls_name.endswith("Balancer"):
                continue
            if not callable(getattr(cls, "pick", None)) or inspect.isabstract(cls):
                continue
            for args in ((), (SystemClock(),)):
                try:
                    cls(*args)
                except TypeError:
                    continue
                found[info.name] = functools.partial(cls, *args)
                break
    return found


def discover() -> tuple[str, dict[str, Callable[[], Any]]]:
    """(how they were found, name → constructor)."""
    found = _from_factory()
    if found:
        return "sidecar.balance.factory.make_balancer", found
    found = _from_modules()
    if found:
        return "scan of sidecar.balance.*", found
    from sidecar.balance.round_robin import RoundRobinBalancer

    return "RoundRobinBalancer", {"round_robin": RoundRobinBalancer}


def _cluster(n: int) -> Cluster:
    endpoints = tuple(Endpoint(f"10.0.{i // 256}.{i % 256}", 8080) for i in range(n))
    cluster = Cluster("bench")
    cluster.update(EndpointSet("bench", endpoints, "static", time.time()))
    return cluster


def _best_ns(fn: Callable[[int], None], iterations: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(iterations)
        best = min(best, (time.perf_counter_ns() - t0) / iterations)
    return best


def measure(name: str, make: Callable[[], Any], n: int, iterations: int, repeats: int) -> PickCost:
    cluster = _cluster(n)
    candidates = cluster.available(time.monotonic())
    clock = SystemClock()

    def pick_only(k: int) -> None:
        b = balancer
        for _ in range(k):
            b.pick(candidates, ())

    def pick_observe(k: int) -> None:
        b = balancer
        now = clock.monotonic()
        for _ in range(k):
            st = b.pick(candidates, ())
            b.observe(st, 0.001, now, True)

    def available_pick(k: int) -> None:
        b = balancer
        for _ in range(k):
            b.pick(cluster.available(clock.monotonic()), ())

    balancer = make()
    pick_only(min(iterations, 1000))  # warm caches / lazy state
    p = _best_ns(pick_only, iterations, repeats)
    balancer = make()
    po = _best_ns(pick_observe, iterations, repeats)
    balancer = make()
    ap = _best_ns(available_pick, max(iterations // 10, 100), repeats)
    return PickCost(name, n, p, po, ap)


def run(iterations: int = 20000, repeats: int = 5) -> tuple[str, list[PickCost]]:
    source, balancers = discover()
    results = [
        measure(name, make, n, iterations, repeats)
        for name, make in sorted(balancers.items())
        for n in SIZES
    ]
    return source, results
