"""Where traces come from: Jaeger's query API (v1 and v2 serve the same `/api/traces`), the
sidecars' admin `/debug/traces` (same shape; each sidecar holds only its own spans, so several
are merged by trace id), or a file: saved from Jaeger UI ("Download JSON"), or OTLP JSON as
collectors export it (one request per file, or one per line).

Every failure becomes a `SourceError` with a one-line message for the user."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from sidecar.diagnose.model import Trace, TraceFormatError, merge_traces, parse_jaeger
from sidecar.diagnose.otlp import is_otlp, parse_otlp
from sidecar.diagnose.tree import operation_matcher

REQUEST_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class SourceError(Exception):
    """A trace source could not be read; the message is one line, fit for the user."""


@dataclass(frozen=True, slots=True)
class Query:
    service: str
    operation: str | None
    lookback_s: float
    limit: int
    # Seconds before now at which the window ends (0 = now): a baseline window in the past.
    ends_ago_s: float = 0.0


def read_file(path: str | Path) -> list[Trace]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse_traces(_load_json(text))
    except (ValueError, TraceFormatError) as exc:
        raise SourceError(f"{path}: {_one_line(exc)}") from None


def parse_traces(payload: Any) -> list[Trace]:
    """Jaeger JSON or OTLP JSON, told apart by their top-level keys."""
    return parse_otlp(payload) if is_otlp(payload) else parse_jaeger(payload)


def _load_json(text: str) -> Any:
    """One JSON document, or JSON lines (the collector's file exporter writes one export
    request per line)."""
    try:
        return json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise
        return [json.loads(line) for line in lines]


async def from_jaeger(session: aiohttp.ClientSession, base: str, query: Query) -> list[Trace]:
    """`GET {base}/api/traces?service=&operation=&start=&end=&lookback=&limit=`.

    Jaeger filters operations by exact name, while users type a prefix ("GET /context"), so
    the exact name is looked up first; with no single match we ask for the whole service and
    filter locally."""
    base = _http_base(base)
    end_us = int((time.time() - query.ends_ago_s) * 1_000_000)
    params = {
        "service": query.service,
        "start": str(end_us - int(query.lookback_s * 1_000_000)),
        "end": str(end_us),
        "lookback": _lookback_param(query.lookback_s),
        "limit": str(query.limit),
    }
    if query.operation:
        exact = await _exact_operation(session, base, query.service, query.operation)
        if exact is not None:
            params["operation"] = exact
    payload = await _get_json(session, f"{base}/api/traces", params)
    return _parse(payload, f"{base}/api/traces")


async def from_admins(
    session: aiohttp.ClientSession, urls: Sequence[str], query: Query
) -> list[Trace]:
    """All spans each sidecar buffered in the window, merged by trace id. No service filter
    is sent: the callee sidecars hold the same traces but none of the caller's spans."""
    params = {"lookback": _lookback_param(query.lookback_s), "limit": str(query.limit)}
    batches = []
    for url in urls:
        endpoint = _debug_traces_url(url)
        batches.append(_parse(await _get_json(session, endpoint, params), endpoint))
    return merge_traces(batches)


async def _exact_operation(
    session: aiohttp.ClientSession, base: str, service: str, wanted: str
) -> str | None:
    url = f"{base}/api/services/{quote(service, safe='')}/operations"
    try:
        payload = await _get_json(session, url, {})
    except SourceError:
        return None  # older or partial APIs: fall back to filtering locally
    data = payload.get("data") if isinstance(payload, Mapping) else None
    names = []
    for item in data or ():
        name = item.get("name") if isinstance(item, Mapping) else item  # v2 gives objects
        if isinstance(name, str):
            names.append(name)
    if wanted in names:
        return wanted
    matches = operation_matcher(wanted)
    found = sorted({n for n in names if matches(n)})
    return found[0] if len(found) == 1 else None


async def _get_json(session: aiohttp.ClientSession, url: str, params: Mapping[str, str]) -> Any:
    try:
        async with session.get(url, params=params) as resp:
            if resp.status != 200:
                detail = _error_detail(await resp.read())
                raise SourceError(f"{url}: HTTP {resp.status}{detail}")
            body = await _read_bounded(resp)
    except aiohttp.ClientError as exc:
        raise SourceError(f"cannot reach {url}: {_one_line(exc)}") from None
    except TimeoutError:
        raise SourceError(f"{url}: no answer within {REQUEST_TIMEOUT_S:.0f}s") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise SourceError(
            f"{url}: response larger than {MAX_RESPONSE_BYTES >> 20} MiB; "
            "lower --limit or --lookback"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise SourceError(f"{url}: response is not JSON") from None


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)


def _parse(payload: Any, where: str) -> list[Trace]:
    try:
        return parse_traces(payload)
    except TraceFormatError as exc:
        raise SourceError(f"{where}: {exc}") from None


def _error_detail(body: bytes) -> str:
    """Jaeger answers errors as {"errors": [{"code", "msg"}]}."""
    try:
        errors = json.loads(body).get("errors") or []
        return f": {_one_line(errors[0]['msg'])}" if errors else ""
    except (ValueError, AttributeError, LookupError, TypeError):
        return ""


def _http_base(given: str) -> str:
    """`localhost:16686` as users type it means http://localhost:16686."""
    url = given.strip()
    if "://" not in url:
        url = f"http://{url}"
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{given.strip()}: not an http:// or https:// URL")
    return url


def _debug_traces_url(url: str) -> str:
    url = _http_base(url)
    return url if url.endswith("/debug/traces") else f"{url}/debug/traces"


def _lookback_param(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"


def _one_line(exc: object) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def client_timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=5.0)
