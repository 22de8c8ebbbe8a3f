"""HTTP/2 server protocol (cleartext, prior knowledge) on our own codec (h2conn.py).

A listener hands a connection here when its first bytes are the HTTP/2 preface (see
detect.py). Each stream becomes one protocol-neutral Request given to the same handler the
HTTP/1.1 path calls, so routing, retries, breaker and telemetry apply unchanged; the Response
goes back as HEADERS, DATA within the client's windows, and trailers when the body has them.

Limits: SETTINGS_MAX_CONCURRENT_STREAMS (streams above it are refused with REFUSED_STREAM)
and SETTINGS_MAX_HEADER_LIST_SIZE are advertised and enforced by the codec, which also bounds
a header block to 64 CONTINUATION frames (CVE-2024-27316); rapid reset (CVE-2023-44487) is
counted here. Reading stops while the socket's write buffer is full,
so PING/SETTINGS floods from a peer that does not read cannot grow memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sidecar import grpc
from sidecar.errors import BadRequest, PayloadTooLarge, SidecarError, error_response
from sidecar.http import EMPTY_BODY, Body, BytesBody, Headers, Request, Response, body_trailers
from sidecar.stack import Handler
from sidecar.transport import h2conn
from sidecar.transport import h2wire as wire
from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.flow import WriteFlow
from sidecar.transport.h2_body import H2Body
from sidecar.transport.h2_common import (
    CONNECTION_SPECIFIC,
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    ResetRate,
    WindowWaiters,
    send_data,
    send_now,
)
from sidecar.transport.h2_lazy import H2Handover, RequestCounter
from sidecar.transport.h2conn import ConnectionProtocolError, H2Conn, H2Event
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER

log = logging.getLogger(__name__)

_NO_BODY_STATUS = frozenset({204, 304})
MAX_HEADERS = 100
RESET_WINDOW = 10.0
LINGER = 1.0


@dataclass(slots=True)
class H2Limits:
    max_concurrent_streams: int = 100
    max_header_bytes: int = 16384
    max_body_bytes: int | None = None
    idle_timeout: float = 60.0
    # Client-reset streams tolerated per connection per RESET_WINDOW; None: derived from
    # max_concurrent_streams.
    max_resets: int | None = None

    def reset_limit(self) -> int:
        if self.max_resets is not None:
            return self.max_resets
        return max(100, 2 * self.max_concurrent_streams)


class H2Connections:
    """The live HTTP/2 server connections of a process: drained and closed together."""

    def __init__(self, limits: H2Limits, requests: RequestCounter) -> None:
        self.limits = limits
        self.requests = requests
        self.connections: set[H2ServerConnection] = set()
        self.draining = False

    def start_drain(self) -> None:
        """GOAWAY to every connection: in-flight streams finish, new ones go elsewhere."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway()

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()


class _Stream:
    __slots__ = ("body", "id", "received", "reset", "task")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.received = 0
        self.body: H2Body | None = None
        self.task: asyncio.Task[None] | None = None
        self.reset = False


class H2ServerConnection(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        registry: H2Connections,
        direction: str,
        prepare: Callable[[Request], None] | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self._handler = handler
        self._registry = registry
        # The listener's connection budget: this connection holds a slot until it closes,
        # and may be evicted for a newcomer while it has no stream open.
        self._budget = budget
        self._limits = registry.limits
        self._direction = direction
        self._prepare = prepare
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._flow = WriteFlow()
        self._waiters = WindowWaiters()
        self._streams: dict[int, _Stream] = {}
        self._resets = ResetRate(self._limits.reset_limit(), RESET_WINDOW, time.monotonic)
        self._closing = False
        self._flush_pending = False
        self._goaway_sent = False
        self._last_stream = 0
        self._idle: asyncio.TimerHandle | None = None
        limits = self._limits
        self._conn = H2Conn(
            False,
            max_concurrent_streams=limits.max_concurrent_streams,
            max_header_list_size=limits.max_header_bytes,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
        )

    # ------------------------------------------------------------ connection events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self._registry.connections.add(self)
        if self._budget is not None and not self._budget.admit(self):
            self._budget = None
            self._closing = True
            self._transport.close()
            return
        self._conn.initiate()
        self._flush()
        self._arm_idle()
        if self._registry.draining:
            self.goaway()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._registry.connections.discard(self)
        if self._budget is not None:
            self._budget.release(self)
        self._cancel_idle()
        self._flow.connection_lost()
        err = ConnectionResetError("client closed the connection")
        for stream in list(self._streams.values()):
            self._cancel_stream(stream, err)
        self._waiters.wake_all()

    def pause_writing(self) -> None:
        self._flow.pause_writing()
        # A peer that does not read must not make us queue its PING/SETTINGS acks forever.
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._flow.resume_writing()
        if self._transport is not None and not self._closing:
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._conn.receive(data)
        except ConnectionProtocolError as exc:
            # The codec has queued a GOAWAY with the right code (PROTOCOL_ERROR,
            # FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM for too many CONTINUATION frames...).
            log.debug("HTTP/2 protocol error from %s: %s", self._peer, exc)
            self._linger_close()
            return
        for event in events:
            self._on_event(event)
            if self.closing:
                return
        self._flush()

    def _on_event(self, event: H2Event) -> None:
        kind = event.kind
        if kind == h2conn.HEADERS:
            self._on_request(event)
        elif kind == h2conn.DATA:
            self._on_data(event)
        elif kind == h2conn.TRAILERS:
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.body is not None:
                stream.body.feed_eof(_fields(event.headers or []))
        elif kind == h2conn.RESET or kind == h2conn.LOCAL_RESET:
            self._on_reset(event)
        elif kind == h2conn.WINDOW_UPDATE:
            if event.stream_id:
                self._waiters.wake(event.stream_id)
            else:
                self._waiters.wake_all()
        elif kind == h2conn.SETTINGS:
            self._waiters.wake_all()
        elif kind == h2conn.GOAWAY:
            # The client is going away: finish what is in flight, then close.
            self._goaway_sent = True
            if not self._streams:
                self.close()

    # ------------------------------------------------------------ streams
    def _on_request(self, event: H2Event) -> None:
        sid = event.stream_id
        if self._goaway_sent:
            # After our GOAWAY, a new stream was not processed: the client may retry it.
            self._conn.reset_stream(sid, wire.REFUSED_STREAM)
            return
        self._last_stream = max(self._last_stream, sid)
        stream = _Stream(sid)
        if not self._streams and self._budget is not None:
            self._budget.busy(self)
        self._streams[sid] = stream
        self._cancel_idle()
        try:
            request = self._request(sid, event.headers or [], event.end_stream)
        except SidecarError as err:
            stream.task = self._loop.create_task(self._reply_error(stream, err))
            return
        if isinstance(request.body, H2Body):
            stream.body = request.body
        stream.task = self._loop.create_task(self._serve(stream, request))

    def _request(self, sid: int, raw: list[tuple[bytes, bytes]], ended: bool) -> Request:
        method = path = authority = ""
        scheme = "http"
        items: list[tuple[str, str]] = []
        cookies: list[str] = []
        size = 0
        has_host = False
        length: int | None = None
        for kb, vb in raw:
            k, v = kb.decode("latin-1"), vb.decode("latin-1")
            size += len(k) + len(v) + 32
            if k[:1] == ":":
                if k == ":method":
                    method = v
                elif k == ":path":
                    path = v
                elif k == ":authority":
                    authority = v
                elif k == ":scheme":
                    scheme = v
            elif k == "cookie":
                cookies.append(v)  # HTTP/2 may split cookies; HTTP/1.1 wants one field
            else:
                if k == "host":
                    has_host = True
                elif k == "content-length" and length is None:
                    length = int(v) if v.isdigit() and v.isascii() else None
                items.append((k, v))
        if cookies:
            items.append(("cookie", "; ".join(cookies)))
        if len(items) > MAX_HEADERS or size > self._limits.max_header_bytes:
            raise BadRequest(f"more than {MAX_HEADERS} header fields", status=431)
        if method == "CONNECT":
            raise BadRequest("CONNECT is not supported: this is not an open proxy", status=405)
        if authority and not has_host:
            items.append(("host", authority))
        headers = Headers.from_lower(items)
        if grpc.TIMEOUT_HEADER in headers and EXPECTED_TIMEOUT_HEADER not in headers:
            # grpc-timeout is the caller's deadline: the deadline layer reads ours.
            seconds = grpc.parse_timeout(headers.get(grpc.TIMEOUT_HEADER) or "")
            if seconds is not None:
                headers.add(EXPECTED_TIMEOUT_HEADER, str(int(seconds * 1000)))
        max_body = self._limits.max_body_bytes
        if max_body is not None and length is not None and length > max_body:
            raise PayloadTooLarge(f"request body larger than {max_body} bytes")
        body: Body = EMPTY_BODY
        if not ended:
            body = H2Body(length, self._acker(sid), lambda: self._reset(sid))
        return Request(
            method=method,
            target=path,
            headers=headers,
            body=body,
            http_version="2",
            client_addr=self._peer,
            scheme=scheme,
            direction=self._direction,
            start=time.monotonic(),
        )

    def _acker(self, sid: int) -> Callable[[int], None]:
        def ack(n: int) -> None:
            if self._closing or n <= 0:
                return
            self._conn.acknowledge(sid, n)
            self._flush()

        return ack

    def _on_data(self, event: H2Event) -> None:
        sid = event.stream_id
        data = event.data
        flow_len = event.flow_len
        stream = self._streams.get(sid)
        body = stream.body if stream is not None else None
        if body is None:
            # Nobody will read it (stream already answered): give the window back at once.
            self._conn.acknowledge(sid, flow_len)
            return
        max_body = self._limits.max_body_bytes
        assert stream is not None
        stream.received += len(data)
        if max_body is not None and stream.received > max_body:
            body.set_error(PayloadTooLarge(f"request body larger than {max_body} bytes"))
        body.feed(data, flow_len)
        if event.end_stream:
            body.feed_eof()

    def _on_reset(self, event: H2Event) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        stream.reset = True  # the codec has closed it
        self._waiters.fail(stream.id, ConnectionResetError("stream reset by the client"))
        if event.kind == h2conn.RESET and self._resets.record():
            log.warning("HTTP/2 rapid reset from %s: closing the connection", self._peer)
            self._conn.send_goaway(self._conn.last_remote_stream, wire.ENHANCE_YOUR_CALM)
            self._linger_close()
            return
        self._cancel_stream(stream, ConnectionResetError("stream reset by the client"))

    def _cancel_stream(self, stream: _Stream, err: BaseException) -> None:
        stream.reset = True
        if stream.body is not None:
            stream.body.set_error(err)
        if stream.task is not None and not stream.task.done():
            # The caller gave up: so does the upstream call (its stream is reset in turn).
            stream.task.cancel()

    def _reset(self, sid: int, code: int = wire.CANCEL) -> None:
        stream = self._streams.get(sid)
        if self._closing or stream is None or stream.reset:
            return
        stream.reset = True
        self._conn.reset_stream(sid, code)
        self._flush()

    async def _serve(self, stream: _Stream, request: Request) -> None:
        self._registry.requests.request_started()
        try:
            response = await self._respond(request)
            await self._write(stream, request, response)
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        except Exception:
            # e.g. h2 refusing a header an HTTP/1.1 upstream sent: this stream fails, the
            # connection and its other streams carry on.
            log.exception("HTTP/2 stream %d failed", stream.id)
            self._reset(stream.id, wire.INTERNAL_ERROR)
        finally:
            self._registry.requests.request_finished()
            self._stream_done(stream)

    async def _respond(self, request: Request) -> Response:
        grpc_request = grpc.is_grpc(request.headers)
        if self._prepare is not None:
            try:
                self._prepare(request)
            except SidecarError as err:
                return error_response(err, grpc=grpc_request)
        try:
            return await self._handler(request)
        except SidecarError as exc:
            body_err = request.body.error if isinstance(request.body, H2Body) else None
            failure = body_err if isinstance(body_err, SidecarError) else exc
            return error_response(failure, request_id=request.request_id, grpc=grpc_request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error while handling %s %s", request.method, request.target)
            return error_response(
                SidecarError("internal error in the sidecar"),
                request_id=request.request_id,
                grpc=grpc_request,
            )

    async def _reply_error(self, stream: _Stream, err: SidecarError) -> None:
        try:
            await self._write(stream, None, error_response(err))
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        finally:
            self._stream_done(stream)

    async def _write(self, stream: _Stream, request: Request | None, response: Response) -> None:
        conn, sid, body = self._conn, stream.id, response.body
        if self._closing or stream.reset:
            _abort(body)
            return
        head_only = (request is not None and request.method == "HEAD") or (
            response.status in _NO_BODY_STATUS
        )
        # As bytes, encoded back as latin-1 (how the fields were decoded): obs-text in a value
        # goes out byte for byte, where h2 would have UTF-8-encoded the text.
        fields = [(b":status", str(response.status).encode())]
        fields += [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.items()
            if k not in CONNECTION_SPECIFIC
        ]
        if body.length is not None and not head_only:
            fields.append((b"content-length", str(body.length).encode()))
        data = body.data if isinstance(body, BytesBody) else None
        if head_only or data == b"" or body.length == 0:
            # No DATA: one HEADERS frame with END_STREAM (gRPC's Trailers-Only form).
            conn.send_headers(sid, fields, end_stream=True)
            self._flush()
            _abort(body)
            return
        conn.send_headers(sid, fields)
        self._flush()
        flush, waiters, flow = self._flush, self._waiters, self._flow
        ended = False
        try:
            if data is not None:
                ended = True  # a body in memory has no trailers
                if send_now(conn, sid, data, flow, ended):
                    flush()
                else:
                    await send_data(conn, sid, data, flush, waiters, flow, ended)
            else:
                async for chunk in body:
                    # An upstream HTTP/2 body whose END_STREAM came with this chunk: end the
                    # stream on the chunk's last frame.
                    ended = isinstance(body, H2Body) and body.at_eof and body.trailers is None
                    if send_now(conn, sid, chunk, flow, ended):
                        flush()
                    else:
                        await send_data(conn, sid, chunk, flush, waiters, flow, ended)
                    if ended:
                        break
        except (asyncio.CancelledError, ConnectionResetError):
            _abort(body)
            raise
        except Exception as exc:
            # The upstream failed mid-body: the only honest signal left is to cut the stream.
            log.debug("response body aborted on stream %d: %r", sid, exc)
            _abort(body)
            self._reset(sid, wire.INTERNAL_ERROR)
            return
        if ended or stream.reset or self.closing:
            return
        trailers = body_trailers(body)
        if trailers is not None and len(trailers):
            fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in trailers.items()]
            conn.send_headers(sid, fields, end_stream=True)
        else:
            conn.end_stream(sid)
        self._flush()

    def _stream_done(self, stream: _Stream) -> None:
        if stream.body is not None and not stream.body.at_eof:
            # The request body was not read to the end: tell the client to stop sending it.
            self._reset(stream.id, wire.NO_ERROR)
        self._streams.pop(stream.id, None)
        if not self._streams:
            if self._budget is not None:
                self._budget.idle(self)
            if self._goaway_sent:
                self.close()
            else:
                self._arm_idle()

    def buffered_bytes(self) -> int:
        """Request bytes held unread plus response bytes waiting in the socket buffer."""
        held = sum(s.body.buffered for s in self._streams.values() if s.body is not None)
        transport = self._transport
        return held + (transport.get_write_buffer_size() if transport is not None else 0)

    # ------------------------------------------------------------ closing
    @property
    def closing(self) -> bool:
        """(A property: handling events may close the connection under the caller.)"""
        return self._closing

    def goaway(self) -> None:
        """Graceful shutdown: streams up to the last one we saw finish; later ones are
        refused."""
        if self._goaway_sent or self._closing or self._transport is None:
            return
        self._goaway_sent = True
        self._conn.send_goaway(self._last_stream)
        self._flush_now()
        if not self._streams:
            self.close()

    def evict(self) -> None:
        """The listener's budget needs this connection's slot (it has no stream open): a
        GOAWAY, then close."""
        self.goaway()
        self.close()

    def _linger_close(self) -> None:
        """Close after a fatal error with the GOAWAY saying why. Closing a socket with unread
        input sends a TCP reset that can destroy that GOAWAY, so the rest of what the peer
        sends is read and dropped for a moment (a lingering close)."""
        self._flush_now()
        self._closing = True
        self._cancel_idle()
        err = ConnectionResetError("HTTP/2 connection closed after a protocol error")
        for stream in list(self._streams.values()):
            self._cancel_stream(stream, err)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, transport.close)

    def close(self) -> None:
        self._flush_now()
        self._closing = True
        self._cancel_idle()
        if self._transport is not None and not self._transport.is_closing():
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

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self._idle = self._loop.call_later(self._limits.idle_timeout, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        if not self._streams:
            self.goaway()


def _fields(raw: list[tuple[bytes, bytes]]) -> Headers:
    return Headers.from_lower(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k[:1] != b":"]
    )


def _abort(body: Body) -> None:
    if isinstance(body, H2Body):
        body.abort()
        return
    if isinstance(body, BytesBody):
        return  # (getattr's AttributeError costs a formatted message)
    abort = getattr(body, "abort", None)
    if abort is not None:
        abort()


def h2_handover(
    handler: Handler,
    registry: H2Connections,
    direction: str,
    prepare: Callable[[Request], None] | None = None,
) -> H2Handover:
    """What a listener calls when a connection's first bytes are the HTTP/2 preface: the
    connection becomes an H2ServerConnection, which then reads those bytes."""

    def take_over(
        transport: asyncio.Transport, first: bytes, budget: ConnectionBudget | None
    ) -> None:
        proto = H2ServerConnection(handler, registry, direction, prepare, budget)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(first)

    return take_over
