"""Upstream HTTP/1.1 client: one exchange at a time per connection, keep-alive pools per endpoint.

Like httpcore, the pool first decides (pure bookkeeping: reuse an idle connection or open one)
and only then acts. A connection returns to its pool only when its response was read to the end
and the request was fully written; anything else closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from sidecar.errors import SidecarError, UpstreamConnectFailure, UpstreamReset
from sidecar.http import EMPTY_BODY, Body, BytesBody, Headers, Request, Response
from sidecar.transport.body import StreamBody
from sidecar.transport.flow import WriteFlow
from sidecar.transport.inert import NoCallbacks
from sidecar.transport.tls import TlsOrigination, dial_tls, endpoint_tls
from sidecar.transport.tunnel import Tunnel, protocol_label
from sidecar.vocab.endpoint import Endpoint
from sidecar.vocab.headers import HOP_BY_HOP, connection_tokens, end_to_end

log = logging.getLogger(__name__)

# Cap on an upstream response's status line + headers (Envoy's default is 60 KiB).
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
# host name → the address to connect to (egress: resolved and checked at every connect).
# Egress: opens the TCP connection to a name itself (resolved, each address checked, the next
# one tried on a connect failure) within the connect timeout, and hands the socket over.
Dialer = Callable[[str, int, float], Awaitable[socket.socket]]
# A pooled connection idle longer than this is checked for a FIN (or stray bytes) the loop has
# not processed yet before it is reused: one poll syscall, paid only by connections that sat
# idle (those an upstream's keep-alive timeout closes), not by busy ones.
STALE_CHECK_AFTER = 1.0
# Bytes read from an upstream socket at once. A response body pauses reading above
# body.HIGH_WATER, so what a stalled stream holds is at most HIGH_WATER + one read: the read
# size is that bound's other half (uvloop and asyncio would read up to 256 KiB).
READ_SIZE = 32 * 1024
WRITE_HIGH_WATER = 16 * 1024


class UpstreamConnection(asyncio.BufferedProtocol):
    def __init__(self, pool: EndpointPool) -> None:
        self._pool = pool
        self._read_buffer = pool.read_buffer
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        # Looked up once: on Python 3.11 `asyncio.get_running_loop()` is a getpid() syscall.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flow = WriteFlow()
        self._headers: list[tuple[str, str]] = []
        self._response: asyncio.Future[Response] | None = None
        # The request being answered (for its interim responses), if the caller gave it.
        self._origin: Request | None = None
        self._body: StreamBody | None = None
        self._head_only = False
        self._until_close = False
        self._request_done = True
        self._message_done = True
        self.closed = False
        self.idle_since = 0.0
        self.received_any = False
        self._in_head = False
        self._head_bytes = 0
        self._field_bytes = 0
        # The Upgrade value of the request in flight ("" for an ordinary one), and the
        # tunnel that took this connection over after its 101.
        self._upgrade = ""
        self._tunnel: Tunnel | None = None

    # ---------------------------------------------------------- protocol events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self._transport = cast(asyncio.Transport, transport)
        # An upload to a slow upstream waits here beyond this (the kernel buffers more).
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # Freed by refcounting, not left to the cyclic collector (see inert.py): under churn
        # (more concurrent calls than the pool keeps idle) thousands piled up for it.
        self._parser = httptools.HttpResponseParser(NoCallbacks())
        self._flow.connection_lost()
        self._pool.forget(self)
        err = UpstreamReset("upstream closed the connection", upstream=self._pool.upstream)
        if self._response is not None and not self._response.done():
            self._response.set_exception(err)
        if self._body is not None:
            if self._until_close:
                self._body.feed_eof()  # close-delimited body: EOF is the end
            else:
                self._body.set_error(err)
            self._body = None

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        # Shared by the client's connections: a read is copied out (httptools hands out
        # bytes) before the loop reads from any other socket.
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            reason = str(cause) if isinstance(cause, SidecarError) else str(exc)
            self._fail(f"malformed response from upstream: {reason}")
            return
        except httptools.HttpParserError as exc:
            self._fail(f"malformed response from upstream: {exc}")
            return
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops at a 101: what follows it is the new protocol's. A switch nobody
            # asked for is a broken upstream, not a tunnel to open.
            if self._tunnel is None:
                self._fail("upstream switched protocols (101) though no upgrade was requested")
            else:
                # A copy: `data` may be a view of the read buffer the next read overwrites.
                self._tunnel.hold(bytes(data[exc.args[0] :]))
            return
        if self._in_head:
            # llhttp has no size limit and httptools buffers partial fields: an upstream that
            # never ends its head would grow memory until the per-try timeout.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                self._fail(
                    f"response head from upstream exceeds {MAX_RESPONSE_HEAD_BYTES // 1024} KiB"
                )

    def _fail(self, reason: str) -> None:
        if self.closed and self._response is None and self._body is None:
            return
        err = UpstreamReset(reason, upstream=self._pool.upstream)
        if self._response is not None and not self._response.done():
            self._response.set_exception(err)
        if self._body is not None:
            self._body.set_error(err)
            self._body = None
        self.close()

    # ---------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True
        self._head_bytes = 0
        self._field_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._field_bytes += len(name) + len(value) + 4
        if self._field_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise UpstreamReset(
                f"response head from upstream exceeds {MAX_RESPONSE_HEAD_BYTES // 1024} KiB"
            )
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101 and self._upgrade:
                self._switch()
                return
            # An interim response: the real one follows. 100 Continue answers an Expect we
            # never send (we read the client's body ourselves); others (103 Early Hints) go
            # on to the client. A 101 fails the exchange (see data_received).
            origin = self._origin
            if status != 100 and status != 101 and origin is not None:
                sink = origin.interim
                if sink is not None:
                    sink.write_interim(origin, status, _interim_fields(self._headers))
            return
        fut = self._response
        if fut is None or fut.done():
            raise UpstreamReset("unsolicited response from upstream")
        if self._parser.get_http_version() not in ("1.0", "1.1"):
            # llhttp accepts "HTTP/2.0 200" in text; no real HTTP/2 server sends that.
            raise UpstreamReset("upstream answered with an unsupported HTTP version")
        items = self._headers
        named = connection_tokens(items) if any(k == "connection" for k, _ in items) else ()
        length: int | None = None
        chunked = False
        kept: list[tuple[str, str]] = []
        for k, v in items:
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding":
                if chunked or v.strip(" \t").lower() != "chunked":
                    # e.g. `gzip` (close-delimited) or `gzip, chunked`: forwarding it under
                    # our own framing would change the message; refuse it (as Envoy does).
                    raise UpstreamReset(
                        f"upstream used Transfer-Encoding {v!r}: only chunked is supported"
                    )
                chunked = True
            if k in HOP_BY_HOP or k in named or k.startswith("proxy-"):
                continue
            kept.append((k, v))
        headers = Headers.from_lower(kept)
        no_body = self._head_only or status in (204, 304)
        if no_body:
            body: Body = EMPTY_BODY
            if self._head_only:
                # llhttp can't know this answers a HEAD: never reuse the connection.
                self._message_done = True
                fut.set_result(Response(status=status, headers=headers, body=body))
                self.close()
                return
        elif not chunked and length == 0:
            body = EMPTY_BODY
        else:
            if not chunked and length is None:
                self._until_close = True
            sb = StreamBody(None if chunked else length, self._pause, self._resume, self.close)
            self._body = sb
            body = sb
        fut.set_result(Response(status=status, headers=headers, body=body))

    def _switch(self) -> None:
        """The upstream accepted the Upgrade: hand the connection to a tunnel (it leaves the
        pool for good) and answer the exchange with a 101 whose body is that tunnel."""
        fut, transport = self._response, self._transport
        if fut is None or fut.done() or transport is None:
            raise UpstreamReset("unsolicited 101 from upstream")
        items = self._headers
        header = next((v for k, v in items if k == "upgrade"), self._upgrade)
        tunnel = Tunnel(
            transport,
            upstream=self._pool.upstream,
            protocol=protocol_label(self._upgrade),
            header=header,
        )
        self._tunnel = tunnel
        self._pool.forget(self)
        headers = Headers.from_lower(end_to_end(items))
        fut.set_result(Response(status=101, headers=headers, body=tunnel))

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            return
        self._message_done = True
        if self._body is not None:
            self._body.feed_eof()
            self._body.detach()
            self._body = None
        self._maybe_release()

    # ---------------------------------------------------------- exchange
    async def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        upgrade: str = "",
        origin: Request | None = None,
    ) -> Response:
        transport, loop = self._transport, self._loop
        if transport is None or loop is None or self.closed:
            raise StaleConnection("connection closed", upstream=self._pool.upstream)
        fut: asyncio.Future[Response] = loop.create_future()
        self._response = fut
        self._origin = origin
        self._head_only = method == "HEAD"
        self._until_close = False
        self._message_done = False
        self._request_done = False
        self.received_any = False
        self._upgrade = upgrade
        # The pieces joined once, not a formatted string per field (one allocation fewer
        # per field in the compiled build).
        lines = [method, " ", target, " HTTP/1.1\r\n"]
        for k, v in headers:
            lines.append(k)
            lines.append(": ")
            lines.append(v)
            lines.append("\r\n")
        if isinstance(body, BytesBody):
            if body.data or method not in _BODYLESS_METHODS:
                lines.append(f"content-length: {len(body.data)}\r\n")
            lines.append("\r\n")
            transport.write("".join(lines).encode("latin-1") + body.data)
            self._request_done = True
        else:
            if body.length is not None:
                lines.append(f"content-length: {body.length}\r\n")
            else:
                lines.append("transfer-encoding: chunked\r\n")
            lines.append("\r\n")
            transport.write("".join(lines).encode("latin-1"))
            writer = loop.create_task(self._write_body(body))
            writer.add_done_callback(self._body_written)
        try:
            return await fut
        except asyncio.CancelledError:
            # The caller gave up (client gone, timeout) mid-exchange: the connection is in an
            # unknown state and nobody will read it, so it must not linger or be reused.
            # Unless it already went back to the pool and serves someone else's exchange.
            if self._response is fut:
                self.close()
            raise
        finally:
            # Our response may have completed and this connection been reused by another
            # request before we resumed: clearing its future would leave that one hanging.
            if self._response is fut:
                self._response = None
                self._origin = None

    async def _write_body(self, body: Body) -> None:
        assert self._transport is not None
        chunked = body.length is None
        async for chunk in body:
            if self.closed:
                return
            self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self._flow.drain()
        if chunked and not self.closed:
            self._transport.write(b"0\r\n\r\n")

    def _body_written(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            exc = None if task.cancelled() else task.exception()
            log.debug("request body not fully sent upstream: %r", exc)
            if self._response is not None and not self._response.done():
                # A client body that broke (too large, malformed chunk) is the client's error,
                # not the upstream's: report it as such so it isn't retried or blamed upstream.
                err = (
                    exc
                    if isinstance(exc, SidecarError)
                    else UpstreamReset(
                        "request body could not be sent", upstream=self._pool.upstream
                    )
                )
                self._response.set_exception(err)
            self.close()
            return
        self._request_done = True
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self._message_done and self._request_done and not self.closed:
            if self._until_close or not self._parser.should_keep_alive():
                self.close()
            else:
                self._pool.release(self)

    def _pause(self) -> None:
        if self._transport is not None and not self.closed:
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _resume(self) -> None:
        if self._transport is not None and not self.closed:
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()  # nobody took the switched connection: cut it
            return
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.close()

    def looks_stale(self) -> bool:
        """Whether an idle connection is readable: a FIN (or stray bytes) the loop has not
        processed yet. Either way it must not carry a request."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        # poll, not select: select() refuses descriptors above 1024.
        poller = select.poll()
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class StaleConnection(UpstreamReset):
    """The connection was found closed before anything was written to it: any request may
    be sent again on another one."""


# Idle connections kept per endpoint. Above the concurrency a sidecar really sees, so a busy
# endpoint's connections are reused instead of closed and dialled again (a cap of 128 made
# c=256 open a new connection every ~27 requests and cost ~60 % more CPU per request); the
# bound is still there, and the idle timeout closes what a burst left behind. Envoy's default
# connection limit per cluster is the same 1024.
MAX_IDLE_PER_ENDPOINT = 1024


class EndpointPool:
    """Keep-alive connections to one endpoint; at most `max_idle` kept idle."""

    def __init__(
        self,
        endpoint: Endpoint,
        upstream: str,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int = MAX_IDLE_PER_ENDPOINT,
        tls: TlsOrigination | None = None,
        dialer: Dialer | None = None,
        read_buffer: memoryview | None = None,
    ) -> None:
        self.endpoint = endpoint
        # The upstream's TLS policy; an https:// endpoint without one gets the default.
        self.tls = tls
        # Turns the endpoint's host into the address to connect to, checked (egress).
        self.dialer = dialer
        self.read_buffer = memoryview(bytearray(READ_SIZE)) if read_buffer is None else read_buffer
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: deque[UpstreamConnection] = deque()
        self._open: set[UpstreamConnection] = set()
        # One timer per pool (not per connection) closes what stayed idle past the timeout.
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """An idle connection (reused=True) or a new one."""
        conn = self.take_idle()
        if conn is not None:
            return conn, True
        return await self.acquire_fresh()

    def take_idle(self) -> UpstreamConnection | None:
        """The warmest usable idle connection, or None. Synchronous, so the common case (a
        pooled connection is there) costs the forwarder no coroutine."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # LIFO: the warmest connection
            if conn.closed:
                continue
            idle = now - conn.idle_since
            if idle > self.idle_timeout or (idle > STALE_CHECK_AFTER and conn.looks_stale()):
                conn.close()
                continue
            return conn
        return None

    async def acquire_fresh(self) -> tuple[UpstreamConnection, bool]:
        tls = endpoint_tls(self.tls, self.endpoint)
        if tls is not None:
            return await self._connect_tls(tls), False
        proto = cast(
            UpstreamConnection,
            await dial(
                lambda: UpstreamConnection(self),
                self.endpoint,
                self.dialer,
                self.connect_timeout,
                self.upstream,
            ),
        )
        self._open.add(proto)
        return proto, False

    async def _connect_tls(self, tls: TlsOrigination) -> UpstreamConnection:
        endpoint = self.endpoint
        proto = cast(
            UpstreamConnection,
            await dial_tls(
                lambda: UpstreamConnection(self),
                endpoint,
                self.dialer,
                self.connect_timeout,
                self.upstream,
                tls,
                tls.alpn,  # the policy's own list: its own context
            ),
        )
        transport = proto._transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen not in (None, "http/1.1"):
            if transport is not None:
                transport.close()
            raise UpstreamConnectFailure(
                f"{endpoint} chose ALPN {chosen!r}, which this connection does not speak",
                upstream=self.upstream,
            )
        self._open.add(proto)
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        if self._sweep is None:
            self._arm_sweep(self.idle_timeout)

    def _arm_sweep(self, delay: float) -> None:
        self._sweep = asyncio.get_running_loop().call_later(delay, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the connections idle longer than the timeout. The deque is in release order,
        so they are at its left end and the first one still fresh ends the sweep."""
        self._sweep = None
        idle, now = self._idle, time.monotonic()
        while idle:
            oldest = idle[0]
            left = oldest.idle_since + self.idle_timeout - now
            if left > 0 and not oldest.closed:
                self._arm_sweep(left)
                return
            idle.popleft()
            oldest.close()

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


class UpstreamClient:
    """Pools per endpoint; the one object the forwarder talks to."""

    def __init__(self, max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT) -> None:
        self._pools: dict[tuple[str, Endpoint], EndpointPool] = {}
        self._max_idle = max_idle_per_endpoint
        self._read_buffer = memoryview(bytearray(READ_SIZE))

    def pool(
        self,
        upstream: str,
        endpoint: Endpoint,
        connect_timeout: float,
        idle_timeout: float,
        tls: TlsOrigination | None = None,
        dialer: Dialer | None = None,
    ) -> EndpointPool:
        key = (upstream, endpoint)
        pool = self._pools.get(key)
        if pool is None:
            pool = EndpointPool(
                endpoint,
                upstream,
                connect_timeout,
                idle_timeout,
                self._max_idle,
                tls,
                dialer,
                self._read_buffer,
            )
            self._pools[key] = pool
        else:
            pool.connect_timeout = connect_timeout
            pool.idle_timeout = idle_timeout
            pool.tls = tls
            pool.dialer = dialer
        return pool

    def retain(self, upstream: str, endpoints: set[Endpoint]) -> None:
        """Close pools of endpoints that discovery removed."""
        for key in [k for k in self._pools if k[0] == upstream and k[1] not in endpoints]:
            self._pools.pop(key).close()

    def open_connections(self) -> int:
        return sum(p.open_connections for p in self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


async def dial(
    factory: Callable[[], asyncio.BaseProtocol],
    endpoint: Endpoint,
    dialer: Dialer | None,
    connect_timeout: float,
    upstream: str,
) -> asyncio.BaseProtocol:
    """A plain TCP connection to `endpoint` within `connect_timeout`, for either protocol's
    pool. With a `dialer` (egress), it opens the connection to the host (resolved, and the
    addresses checked, at every connect). Errors are UpstreamConnectFailure."""
    try:
        async with asyncio.timeout(connect_timeout):
            loop = asyncio.get_running_loop()
            if dialer is None:
                _, proto = await loop.create_connection(factory, endpoint.host, endpoint.port)
            else:
                sock = await dialer(endpoint.host, endpoint.port, connect_timeout)
                _, proto = await loop.create_connection(factory, sock=sock)
    except TimeoutError:
        raise UpstreamConnectFailure(
            f"connect to {endpoint} timed out", upstream=upstream
        ) from None
    except OSError as exc:
        raise UpstreamConnectFailure(
            f"connect to {endpoint} failed: {exc.strerror or exc}", upstream=upstream
        ) from None
    return proto


def _interim_fields(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    named = connection_tokens(items) if any(k == "connection" for k, _ in items) else ()
    return [
        (k, v)
        for k, v in items
        if k not in HOP_BY_HOP
        and k not in named
        and not k.startswith("proxy-")
        and k != "content-length"
    ]
