"""A thin client of the Consul agent HTTP API over one shared aiohttp session.

The ACL token travels only in the `X-Consul-Token` header; it never appears in a URL, a log line
or an exception message (errors name the method, path and status only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported when first used: Lifecycle (always built) imports this module through
    # registration.py, and a sidecar without Consul should not pay aiohttp's ~10 MiB.
    import aiohttp


class ConsulError(Exception):
    """Consul could not be reached or answered with an error; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class ConsulReply:
    index: int  # X-Consul-Index, 0 when absent
    body: Any
    filtered_by_acls: bool


def format_wait(seconds: float) -> str:
    """Consul parses `wait` as a Go duration; milliseconds keep sub-second test waits exact."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class ConsulHttp:
    """Shared by the resolver and the registration. Without a `session`, one is created on
    first use (inside the running loop) and closed by `close()`."""

    def __init__(
        self,
        address: str,
        *,
        token: str = "",
        datacenter: str | None = None,
        session: aiohttp.ClientSession | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._base = address.rstrip("/")
        self._headers = {"X-Consul-Token": token} if token else {}
        self.datacenter = datacenter
        self._timeout = request_timeout

    def __repr__(self) -> str:
        return f"ConsulHttp({self._base!r}, token={'<set>' if self._headers else '<none>'})"

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self._session

    async def get(
        self, path: str, params: Mapping[str, str], *, deadline: float | None = None
    ) -> ConsulReply:
        return await self._request("GET", path, params, None, deadline)

    async def put(
        self, path: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> ConsulReply:
        return await self._request("PUT", path, params or {}, body, None)

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        body: Any,
        deadline: float | None,
    ) -> ConsulReply:
        import aiohttp

        what = f"consul {method} {path}"
        data = json.dumps(body).encode() if body is not None else None
        try:
            async with self._client().request(
                method,
                self._base + path,
                params=params,
                data=data,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=deadline or self._timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    text = raw.decode("utf-8", "replace").strip()[:200]
                    raise ConsulError(f"{what}: HTTP {resp.status}: {text}")
                index_text = resp.headers.get("X-Consul-Index", "")
                filtered = resp.headers.get("X-Consul-Results-Filtered-By-ACLs", "") == "true"
                payload = json.loads(raw) if raw else None
        except TimeoutError:
            raise ConsulError(f"{what}: timed out") from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages carry host:port and reason, never our request headers
            raise ConsulError(f"{what}: {type(exc).__name__}: {exc}") from None
        except ValueError:
            raise ConsulError(f"{what}: response is not JSON") from None
        except asyncio.CancelledError:
            raise
        index = int(index_text) if index_text.isdigit() else 0
        return ConsulReply(index, payload, filtered)
