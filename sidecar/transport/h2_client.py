"""Upstream HTTP/2 cleartext client (prior knowledge) on our own codec (h2conn.py).

Streams, not connections, are the unit: each endpoint gets one multiplexed connection (a
second one only while the first is at the upstream's SETTINGS_MAX_CONCURRENT_STREAMS or going
away). A request maps 1:1 to a stream; the response returns at its headers and the body
streams with per-stream flow control. A caller that gives up (cancelled, or aborts the body)
cancels the stream upstream with RST_STREAM.

`protocol: auto` reaches HTTP/1.1-only upstreams too: an endpoint that answers the preface
with HTTP/1.x text is remembered as such, and the forwarder speaks HTTP/1.1 to it.

Over TLS (the upstream's `tls` policy, or an https:// endpoint) the protocol is agreed in the
handshake (ALPN, RFC 7301): `h2` is offered alone when HTTP/2 is required, `h2, http/1.1`
under `auto`, where an endpoint choosing HTTP/1.1 is remembered the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

from sidecar import grpc
from sidecar.errors import SidecarError, UpstreamConnectFailure, UpstreamReset
from sidecar.http import EMPTY_BODY, Body, BytesBody, Headers, Request, Response
from sidecar.transport import h2conn
from sidecar.transport import h2wire as wire
from sidecar.transport.client import Dialer, dial
from sidecar.transport.flow import WriteFlow
from sidecar.transport.h2_body import H2Body
from sidecar.transport.h2_common import (
    CONNECTION_SPECIFIC,
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    WindowWaiters,
    send_data,
    send_now,
)
from sidecar.transport.h2_lazy import AlpnHttp1, NotHttp2
from sidecar.transport.h2conn import ConnectionProtocolError, H2Conn, H2Event
from sidecar.transport.tls import (
    ALPN_H2,
    ALPN_H2_OR_HTTP1,
    TlsOrigination,
    dial_tls,
    endpoint_tls,
)
from sidecar.vocab.endpoint import Endpoint

log = logging.getLogger(__name__)

MAX_RESPONSE_HEADER_LIST = 64 * 1024


class StreamRefused(UpstreamConnectFailure):
    """The upstream did not process the stream (REFUSED_STREAM, or above a GOAWAY's last
    stream id) and its body can be sent again."""


# Refused streams re-sent on another connection before the failure reaches the layers: an
# upstream's routine GOAWAY (nginx: every 1000 requests) must not look like an outage to the
# retry budget and outlier detection.
MAX_REFUSED_RESENDS = 2


class _Exchange:
    __slots__ = ("body", "body_taken", "request_body", "response", "writer")

    def __init__(self, response: asyncio.Future[Response], request_body: Body) -> None:
        self.response = response
        self.request_body = request_body
        self.body: H2Body | None = None
        self.writer: asyncio.Task[None] | None = None
        self.body_taken = False  # the writer read from a streamed request body


class H2ClientConnection(asyncio.Protocol):
    def __init__(self, pool: H2Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._flow = WriteFlow()
        self._waiters = WindowWaiters()
        self._exchanges: dict[int, _Exchange] = {}
        self._first = b""
        self._flush_pending = False
        self.closed = False
        self.going_away = False
        self.speaks_h2 = False
        # Done at the upstream's first SETTINGS (it speaks HTTP/2), or when the connection is
        # lost: a streamed request body is not touched before.
        self._settled: asyncio.Future[None] = self._loop.create_future()
        # Over TLS, the protocol the server chose when it was not h2 ("": none at all).
        self.refused_alpn: str | None = None
        self.idle_since = time.monotonic()
        self._conn = H2Conn(
            True,
            max_header_list_size=MAX_RESPONSE_HEADER_LIST,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
        )

    # ---------------------------------------------------------- protocol events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            chosen = ssl_object.selected_alpn_protocol()
            if chosen != "h2":
                # Not a byte of HTTP/2 to a server that did not agree to it.
                self.refused_alpn = chosen or ""
                self.closed = True
                self._transport.close()
                return
        self._conn.initiate()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._flow.connection_lost()
        self._pool.forget(self)
        if not self._settled.done():
            self._settled.set_result(None)
        http1 = not self.speaks_h2 and self._first.startswith(b"HTTP/1.")
        for sid, ex in list(self._exchanges.items()):
            if http1:
                err: SidecarError = NotHttp2(
                    "upstream speaks HTTP/1.x, not HTTP/2",
                    upstream=self._pool.upstream,
                    body_intact=not ex.body_taken,
                )
            else:
                err = UpstreamReset("upstream closed the connection", upstream=self._pool.upstream)
            self._fail(sid, err)
        self._waiters.wake_all()

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        if not self.speaks_h2 and len(self._first) < 8:
            self._first += data[:8]
        try:
            events = self._conn.receive(data)
        except ConnectionProtocolError as exc:
            log.debug("HTTP/2 protocol error from %s: %s", self._pool.endpoint, exc)
            self._flush_now()
            self.close()
            return
        i, n = 0, len(events)
        while i < n:
            event = events[i]
            if event.kind == h2conn.HEADERS and not event.end_stream and i + 1 < n:
                last = events[i + 1]
                if (
                    last.kind == h2conn.DATA
                    and last.end_stream
                    and last.stream_id == event.stream_id
                ):
                    self._on_response(event, last)
                    i += 2
                    continue
            self._on_event(event)
            i += 1
        self._flush()

    def _on_event(self, event: H2Event) -> None:
        kind = event.kind
        sid = event.stream_id
        if kind == h2conn.HEADERS:
            self._on_response(event)
        elif kind == h2conn.DATA:
            ex = self._exchanges.get(sid)
            if ex is not None and ex.body is not None:
                ex.body.feed(event.data, event.flow_len)
            else:
                self._conn.acknowledge(sid, event.flow_len)
            if event.end_stream:
                ex = self._exchanges.pop(sid, None)
                if ex is not None:
                    if ex.body is not None:
                        ex.body.feed_eof()
                    self._stream_closed(sid, ex)
        elif kind == h2conn.TRAILERS:
            ex = self._exchanges.pop(sid, None)
            if ex is not None:
                trailers = _fields(event.headers or [])
                if ex.body is not None:
                    ex.body.feed_eof(trailers)
                self._stream_closed(sid, ex)
        elif kind == h2conn.RESET or kind == h2conn.LOCAL_RESET:
            code = event.code
            if kind == h2conn.RESET and code == wire.REFUSED_STREAM:
                err: SidecarError = self._unprocessed(sid, "upstream refused the stream")
            elif kind == h2conn.RESET:
                err = UpstreamReset(
                    f"upstream reset the stream ({wire.error_name(code)})",
                    upstream=self._pool.upstream,
                )
            else:
                err = UpstreamReset(
                    "malformed response from the upstream", upstream=self._pool.upstream
                )
            self._waiters.fail(sid, ConnectionResetError("stream reset"))
            self._fail(sid, err)
        elif kind == h2conn.WINDOW_UPDATE:
            if sid:
                self._waiters.wake(sid)
            else:
                self._waiters.wake_all()
        elif kind == h2conn.SETTINGS:
            self.speaks_h2 = True
            if not self._settled.done():
                self._settled.set_result(None)
            self._waiters.wake_all()
        elif kind == h2conn.GOAWAY:
            self.going_away = True
            last = sid
            for s in [s for s in self._exchanges if s > last]:
                self._fail(
                    s, self._unprocessed(s, "upstream sent GOAWAY before processing the stream")
                )
            if not self._exchanges:
                self.close()

    def _unprocessed(self, sid: int, reason: str) -> SidecarError:
        """RFC 9113 §8.7: the upstream did not process the stream. Like a connect failure it
        is safe to send elsewhere, if what the body writer already took can be sent again."""
        ex = self._exchanges.get(sid)
        if ex is not None and ex.request_body.replayable:
            return StreamRefused(reason, upstream=self._pool.upstream)
        return UpstreamReset(reason, upstream=self._pool.upstream)

    def _on_response(self, event: H2Event, whole: H2Event | None = None) -> None:
        """The response head; with `whole`, the DATA frame that ended the stream in the same
        read: the response is then a body in memory (at most one frame; its window is given
        back at once), without a streamed body's reads and acknowledgements."""
        sid = event.stream_id
        ex = self._exchanges.get(sid)
        if whole is not None:
            self._conn.acknowledge(sid, whole.flow_len)
        if ex is None or ex.response.done():
            return
        status = 0
        items: list[tuple[str, str]] = []
        for kb, vb in event.headers or []:
            k, v = kb.decode("latin-1"), vb.decode("latin-1")
            if k == ":status":
                status = int(v)
            elif k[:1] != ":" and k not in CONNECTION_SPECIFIC:
                items.append((k, v))
        headers = Headers.from_lower(items)
        if event.end_stream:
            body: Body = EMPTY_BODY  # Trailers-Only (gRPC) or an empty reply
            self._exchanges.pop(sid, None)
            self._stream_closed(sid, ex)
        elif whole is not None:
            body = BytesBody(whole.data)
            self._exchanges.pop(sid, None)
            self._stream_closed(sid, ex)
        else:
            length = _content_length(event.headers or [])
            h2body = H2Body(length, self._acker(sid), lambda: self.cancel(sid))
            ex.body = h2body
            body = h2body
        ex.response.set_result(Response(status=status, headers=headers, body=body))

    def _fail(self, sid: int, err: BaseException) -> None:
        ex = self._exchanges.pop(sid, None)
        if ex is None:
            return
        if not ex.response.done():
            ex.response.set_exception(err)
        if ex.body is not None:
            ex.body.set_error(err)
        self._stream_closed(sid, ex)

    def _stream_closed(self, sid: int, ex: _Exchange) -> None:
        if ex.writer is not None and not ex.writer.done():
            # The upstream finished (or reset) before the request body was all sent: stop
            # sending it (RFC 9113 §8.1), which also frees the stream.
            ex.writer.cancel()
            if not self.closed:
                self._conn.reset_stream(sid, wire.NO_ERROR)
                self._flush()
        if not self._exchanges:
            self.idle_since = time.monotonic()
            if self.going_away:
                self.close()

    def _acker(self, sid: int) -> Callable[[int], None]:
        def ack(n: int) -> None:
            if self.closed or n <= 0:
                return
            self._conn.acknowledge(sid, n)
            self._flush()

        return ack

    # ---------------------------------------------------------- exchange
    @property
    def capacity(self) -> int:
        if self.closed or self.going_away:
            return 0
        limit = self._conn.remote_max_concurrent_streams
        return limit - len(self._exchanges)

    @property
    def active_streams(self) -> int:
        return len(self._exchanges)

    def buffered_bytes(self) -> int:
        """Response bytes received and not yet read by the caller."""
        return sum(e.body.buffered for e in self._exchanges.values() if e.body is not None)

    def start(
        self, request: Request, fields: list[tuple[bytes, bytes]]
    ) -> tuple[int, asyncio.Future[Response]]:
        """Open a stream for the request: its id, and the future of its response (whose
        awaiter must cancel() the stream if it gives up)."""
        if self.closed or self._transport is None:
            raise UpstreamReset("connection closed", upstream=self._pool.upstream)
        conn = self._conn
        body = request.body
        empty = isinstance(body, BytesBody) and not body.data
        sid = conn.next_stream_id()
        if sid > wire.MAX_WINDOW:  # stream ids are 31 bits
            self.going_away = True
            raise StreamRefused("stream ids exhausted", upstream=self._pool.upstream)
        conn.send_headers(sid, fields, end_stream=empty)
        self._flush()
        fut: asyncio.Future[Response] = self._loop.create_future()
        ex = _Exchange(fut, body)
        self._exchanges[sid] = ex
        # A body in memory that the windows let through goes with the head; anything else is
        # written by a task of its own, as the peer's windows open.
        sent = isinstance(body, BytesBody) and send_now(conn, sid, body.data, self._flow, True)
        if not empty and not sent:
            ex.writer = self._loop.create_task(self._write_body(sid, body))
        return sid, fut

    async def _write_body(self, sid: int, body: Body) -> None:
        conn, flush, waiters, flow = self._conn, self._flush, self._waiters, self._flow
        try:
            if isinstance(body, BytesBody):
                if send_now(conn, sid, body.data, flow, end_stream=True):
                    flush()
                else:
                    await send_data(conn, sid, body.data, flush, waiters, flow, end_stream=True)
                return
            if not self._settled.done():
                # A new connection: take nothing of a streamed body before the upstream's
                # SETTINGS show it speaks HTTP/2 (an HTTP/1.x answer leaves the body whole,
                # for the HTTP/1.1 fallback of `protocol: auto`). One round trip, once.
                await self._settled
                if self.closed:
                    return
            ex = self._exchanges.get(sid)
            if ex is None:
                return
            ex.body_taken = True
            async for chunk in body:
                await send_data(conn, sid, chunk, flush, waiters, flow)
            if sid in self._exchanges and not self.closed:
                conn.end_stream(sid)
                self._flush()
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            return  # the stream or connection went away; the response side reports it
        except Exception as exc:
            # A client body that broke (too large, reset) is the client's error, not the
            # upstream's: report it as such and cancel the stream.
            err = (
                exc
                if isinstance(exc, SidecarError)
                else UpstreamReset("request body could not be sent", upstream=self._pool.upstream)
            )
            ex = self._exchanges.get(sid)
            if ex is not None and not ex.response.done():
                ex.response.set_exception(err)
            self.cancel(sid)

    def cancel(self, sid: int) -> None:
        """RST_STREAM(CANCEL) unless the stream is already over."""
        ex = self._exchanges.pop(sid, None)
        if ex is None or self.closed:
            return
        if ex.body is not None:
            ex.body.set_error(UpstreamReset("stream cancelled", upstream=self._pool.upstream))
        self._conn.reset_stream(sid, wire.CANCEL)
        self._flush()
        self._stream_closed(sid, ex)

    def close(self) -> None:
        if not self.closed:
            self._flush_now()
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.close()

    def _flush(self) -> None:
        """Write what h2 has queued, once per event-loop turn: frames of many streams (and
        the HEADERS, DATA and END_STREAM of one) share one write syscall."""
        if not self._flush_pending:
            self._flush_pending = True
            # (the loop kept: asyncio.get_running_loop() costs a getpid() system call)
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class H2Pool:
    """The HTTP/2 connections to one endpoint (normally one)."""

    def __init__(
        self,
        endpoint: Endpoint,
        upstream: str,
        connect_timeout: float,
        dialer: Dialer | None = None,
        tls: TlsOrigination | None = None,
        fallback: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        # Egress: the host is resolved and its address checked at every connect.
        self.dialer = dialer
        # TLS for this endpoint (its upstream's policy, or the default for https://).
        self.tls = tls
        # protocol auto: the server may choose HTTP/1.1 in the TLS handshake.
        self.fallback = fallback
        self._conns: list[H2ClientConnection] = []
        self._connecting: asyncio.Future[H2ClientConnection] | None = None

    def ready(self) -> H2ClientConnection | None:
        """An open connection with room for another stream, if there is one."""
        for conn in self._conns:
            if conn.capacity > 0:
                return conn
        return None

    async def connection(self) -> H2ClientConnection:
        for conn in self._conns:
            if conn.capacity > 0:
                return conn
        if self._connecting is not None:
            # A burst of first requests shares the connection being opened.
            conn = await asyncio.shield(self._connecting)
            if conn.capacity > 0:
                return conn
        fut: asyncio.Future[H2ClientConnection] = asyncio.get_running_loop().create_future()
        self._connecting = fut
        try:
            conn = await self._connect()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        else:
            fut.set_result(conn)
        finally:
            if self._connecting is fut:
                self._connecting = None
        return conn

    async def _connect(self) -> H2ClientConnection:
        if self.tls is not None:
            return await self._connect_tls(self.tls)
        proto = cast(
            H2ClientConnection,
            await dial(
                lambda: H2ClientConnection(self),
                self.endpoint,
                self.dialer,
                self.connect_timeout,
                self.upstream,
            ),
        )
        self._conns.append(proto)
        return proto

    async def _connect_tls(self, tls: TlsOrigination) -> H2ClientConnection:
        proto = cast(
            H2ClientConnection,
            await dial_tls(
                lambda: H2ClientConnection(self),
                self.endpoint,
                self.dialer,
                self.connect_timeout,
                self.upstream,
                tls,
                ALPN_H2_OR_HTTP1 if self.fallback else ALPN_H2,
            ),
        )
        chosen = proto.refused_alpn
        if chosen is not None:
            # RFC 7301: no protocol chosen means the server's default, HTTP/1.1.
            what = f"chose ALPN {chosen!r}" if chosen else "chose no ALPN protocol"
            if self.fallback and chosen in ("http/1.1", ""):
                raise AlpnHttp1(f"{self.endpoint} {what}, not h2", upstream=self.upstream)
            offered = ", ".join(ALPN_H2_OR_HTTP1 if self.fallback else ALPN_H2)
            raise UpstreamConnectFailure(
                f"TLS to {self.endpoint}: the server {what} (offered: {offered}); "
                "HTTP/2 over TLS needs h2",
                upstream=self.upstream,
            )
        self._conns.append(proto)
        return proto

    def forget(self, conn: H2ClientConnection) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def buffered_bytes(self) -> int:
        return sum(c.buffered_bytes() for c in self._conns)

    def close(self) -> None:
        for conn in list(self._conns):
            conn.close()


class H2Client:
    """HTTP/2 pools per (upstream, endpoint), and the endpoints found to speak only HTTP/1.x."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, Endpoint], H2Pool] = {}
        self._http1_only: set[Endpoint] = set()

    def speaks_h2(self, endpoint: Endpoint) -> bool:
        return endpoint not in self._http1_only

    def pool(
        self,
        upstream: str,
        endpoint: Endpoint,
        connect_timeout: float,
        dialer: Dialer | None = None,
        tls: TlsOrigination | None = None,
        fallback: bool = False,
    ) -> H2Pool:
        key = (upstream, endpoint)
        pool = self._pools.get(key)
        if pool is None:
            pool = H2Pool(endpoint, upstream, connect_timeout, dialer, tls, fallback)
            self._pools[key] = pool
        else:
            pool.connect_timeout = connect_timeout
            pool.tls = tls  # after a reload: new connections use the new policy
            pool.fallback = fallback
        return pool

    async def send(
        self,
        request: Request,
        connect_timeout: float,
        *,
        fallback: bool,
        dialer: Dialer | None = None,
        tls: TlsOrigination | None = None,
    ) -> Response:
        """Forward over HTTP/2 (over TLS with `tls`, or for an https:// endpoint). With
        `fallback` (protocol auto), raises NotHttp2 for an endpoint that speaks only HTTP/1.x,
        after remembering it."""
        endpoint = request.endpoint
        assert endpoint is not None, "the balance layer sets request.endpoint"
        tls = endpoint_tls(tls, endpoint)
        pool = self.pool(request.upstream, endpoint, connect_timeout, dialer, tls, fallback)
        fields = request_fields(request, https=tls is not None)
        resends = 0
        while True:
            try:
                # (no coroutine for the usual case: a connection with room for the stream)
                conn = pool.ready() or await pool.connection()
            except AlpnHttp1 as exc:
                if fallback:
                    self._http1_only.add(endpoint)
                if grpc.is_grpc(request.headers):
                    raise UpstreamConnectFailure(
                        f"{exc.message}; gRPC needs HTTP/2", upstream=request.upstream
                    ) from None
                raise
            sid, response = conn.start(request, fields)
            try:
                return await response
            except asyncio.CancelledError:
                # The caller gave up (client gone, timeout): so does the upstream.
                conn.cancel(sid)
                raise
            except NotHttp2:
                if fallback:
                    self._http1_only.add(endpoint)
                raise
            except StreamRefused:
                resends += 1
                if resends > MAX_REFUSED_RESENDS:
                    raise

    def retain(self, upstream: str, endpoints: set[Endpoint]) -> None:
        for key in [k for k in self._pools if k[0] == upstream and k[1] not in endpoints]:
            self._pools.pop(key).close()

    def open_connections(self) -> int:
        return sum(p.open_connections for p in self._pools.values())

    def buffered_bytes(self) -> int:
        return sum(p.buffered_bytes() for p in self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def request_fields(request: Request, https: bool = False) -> list[tuple[bytes, bytes]]:
    """HTTP/2 request fields: pseudo-headers first, connection-specific fields dropped, and
    for gRPC `te: trailers` and a `grpc-timeout` cut to the budget left. As bytes, encoded
    back as latin-1 (how the fields were decoded): a value with obs-text reaches the upstream
    byte for byte, where h2 would have UTF-8-encoded the text."""
    headers = request.headers
    authority = request.authority or headers.get("host") or ""
    fields = [
        (b":method", request.method.encode("latin-1")),
        (b":scheme", b"https" if https else b"http"),
        (b":authority", authority.encode("latin-1")),
        (b":path", request.target.encode("latin-1")),
    ]
    grpc_call = grpc.is_grpc(headers)
    for k, v in headers.items():
        if k in CONNECTION_SPECIFIC:
            continue
        if k == grpc.TIMEOUT_HEADER and request.deadline is not None:
            v = grpc.format_timeout(max(0.0, request.deadline - time.monotonic()))
        fields.append((k.encode("latin-1"), v.encode("latin-1")))
    if grpc_call:
        fields.append((b"te", b"trailers"))
    length = request.body.length
    if length is not None and (length > 0 or request.method not in ("GET", "HEAD")):
        fields.append((b"content-length", str(length).encode()))
    return fields


def _fields(raw: list[tuple[bytes, bytes]]) -> Headers:
    return Headers.from_lower(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k[:1] != b":"]
    )


def _content_length(raw: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in raw:
        if k == b"content-length":
            return int(v) if v.isdigit() else None
    return None
