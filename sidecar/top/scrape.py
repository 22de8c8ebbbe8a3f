"""One look at a sidecar's admin port: `/metrics` parsed into plain numbers, plus the breaker
states and endpoint counts from `/admin/breakers` and `/admin/endpoints` when we may read them.

Only the I/O lives here; turning two scrapes into rates and percentiles is `model.py`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# Sorted (name, value) pairs: hashable and equal for equal label sets.
Labels = tuple[tuple[str, str], ...]
# Sample name (`..._bucket`, `..._count`, `..._total`, a gauge) → label set → value.
Series = dict[str, dict[Labels, float]]

MAX_METRICS_BYTES = 16 << 20


@dataclass(frozen=True)
class EndpointCount:
    healthy: int
    ejected: int


@dataclass(frozen=True)
class Scrape:
    admin: str
    at: float  # monotonic seconds when /metrics answered: rates divide by differences of it
    series: Series
    breakers: Mapping[str, str] | None = None  # upstream → state, None when not readable
    endpoints: Mapping[str, EndpointCount] | None = None

    def samples(self, name: str) -> dict[Labels, float]:
        return self.series.get(name, {})


@dataclass(frozen=True)
class ScrapeError:
    admin: str
    message: str  # one line, for people


def labels_of(pairs: Mapping[str, str]) -> Labels:
    return tuple(sorted(pairs.items()))


def parse_metrics(text: str) -> Series:
    """Prometheus text exposition → Series. `_created` samples are dropped: counter resets are
    detected from values going down, which also covers a restarted sidecar."""
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            series.setdefault(sample.name, {})[labels_of(sample.labels)] = float(sample.value)
    return series


def parse_breakers(doc: Any) -> dict[str, str]:
    if not isinstance(doc, dict):
        return {}
    return {
        str(name): str(info["state"])
        for name, info in doc.items()
        if isinstance(info, dict) and isinstance(info.get("state"), str)
    }


def parse_endpoints(doc: Any) -> dict[str, EndpointCount]:
    if not isinstance(doc, dict):
        return {}
    out: dict[str, EndpointCount] = {}
    for name, endpoints in doc.items():
        if not isinstance(endpoints, list):
            continue
        ejected = sum(1 for e in endpoints if isinstance(e, dict) and e.get("ejected") is True)
        out[str(name)] = EndpointCount(len(endpoints) - ejected, ejected)
    return out


def normalise_admin(url: str) -> str:
    """`127.0.0.1:15090` → `http://127.0.0.1:15090`; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


async def _optional_json(session: aiohttp.ClientSession, url: str) -> Any:
    """`/admin/*` answer only loopback clients: from afar they are 403 and we do without."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def scrape(
    session: aiohttp.ClientSession,
    admin: str,
    clock: Callable[[], float] = time.monotonic,
) -> Scrape | ScrapeError:
    """Scrape one admin port. Never raises for network trouble: an unreachable sidecar is a
    ScrapeError the caller shows and retries on the next tick."""
    url = f"{admin}/metrics"
    breakers_task = asyncio.ensure_future(_optional_json(session, f"{admin}/admin/breakers"))
    endpoints_task = asyncio.ensure_future(_optional_json(session, f"{admin}/admin/endpoints"))
    try:
        try:
            async with session.get(url, headers={"Accept": "text/plain"}) as resp:
                if resp.status != 200:
                    return ScrapeError(admin, f"{url}: HTTP {resp.status}")
                body = await resp.content.read(MAX_METRICS_BYTES + 1)
            at = clock()
        except aiohttp.InvalidURL:
            return ScrapeError(admin, f"{admin}: not a valid URL")
        except aiohttp.ClientConnectorError as exc:
            # asyncio words a refused connect "Connect call failed (...)"; the errno says it.
            oserr = exc.os_error
            if isinstance(oserr.errno, int) and oserr.errno > 0:
                reason = os.strerror(oserr.errno)
            else:  # resolver errors carry negative codes and their own text
                reason = oserr.strerror or _one_line(oserr)
            return ScrapeError(admin, f"cannot reach {admin}: {reason}")
        except aiohttp.ClientError as exc:
            return ScrapeError(admin, f"cannot reach {admin}: {_one_line(exc)}")
        except TimeoutError:
            return ScrapeError(admin, f"cannot reach {admin}: no answer in time")
        if len(body) > MAX_METRICS_BYTES:
            return ScrapeError(admin, f"{url}: larger than {MAX_METRICS_BYTES >> 20} MiB")
        try:
            series = parse_metrics(body.decode("utf-8", "replace"))
        except ValueError as exc:
            return ScrapeError(admin, f"{url}: not Prometheus text: {_one_line(exc)}")
        breakers, endpoints = await asyncio.gather(breakers_task, endpoints_task)
    finally:
        for task in (breakers_task, endpoints_task):
            task.cancel()
    return Scrape(
        admin,
        at,
        series,
        parse_breakers(breakers) if breakers is not None else None,
        parse_endpoints(endpoints) if endpoints is not None else None,
    )


async def scrape_all(
    session: aiohttp.ClientSession,
    admins: list[str],
    clock: Callable[[], float] = time.monotonic,
) -> list[Scrape | ScrapeError]:
    return list(await asyncio.gather(*(scrape(session, a, clock) for a in admins)))
