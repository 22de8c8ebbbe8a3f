"""HTTP/1.1 server protocol on httptools (llhttp).

One `ServerConnection` per client connection. llhttp parses strictly (CL+TE together, bad
chunk sizes, invalid header characters are errors); on any parse error we answer 400 (431 for
oversized heads) and close, so nothing half-parsed is ever forwarded. Requests on a keep-alive
connection are handled one at a time in order (pipelined ones wait, bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from sidecar.errors import BadRequest, Overloaded, PayloadTooLarge, SidecarError, error_response
from sidecar.http import EMPTY_BODY, BytesBody, Headers, Request, Response
from sidecar.stack import Handler
from sidecar.transport.body import StreamBody
from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.detect import is_h2_preface
from sidecar.transport.driver import Driver
from sidecar.transport.flow import WriteFlow
from sidecar.transport.inert import NoCallbacks
from sidecar.transport.tunnel import CONNECT_UPGRADE, Tunnel, TunnelRegistry, wants_tunnel

log = logging.getLogger(__name__)


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
MAX_PIPELINED = 16
IDLE_KEEPALIVE_TIMEOUT = 60.0
# Envoy's default max_headers_count; more is a resource attack, not a real client.
MAX_HEADERS = 100
# llhttp accepts any u64; most servers parse Content-Length as a signed 64-bit integer, so a
# larger value would be read differently by the next hop (a desync).
MAX_CONTENT_LENGTH = 2**63 - 1
_LINGER_RESET = struct.pack("ii", 1, 0)
WRITE_HIGH_WATER = 16 * 1024


@dataclass(slots=True)
class ServerLimits:
    max_header_bytes: int = 16384
    max_body_bytes: int | None = None
    header_read_timeout: float = 10.0
    max_connections: int = 10000
    idle_timeout: float = IDLE_KEEPALIVE_TIMEOUT


class HeadTooLarge(Exception):
    pass


class ServerState:
    """Shared by all connections of the process's listeners: counts, drain flag. Each
    listener may have its own ConnectionBudget; `budget` is the default one."""

    def __init__(self, limits: ServerLimits, tunnels: TunnelRegistry | None = None) -> None:
        self.limits = limits
        # Upgrade/CONNECT tunnels of these connections (shutdown closes them).
        self.tunnels = tunnels if tunnels is not None else TunnelRegistry()
        # CONNECT is served on outbound listeners only when egress is configured.
        self.allow_connect = False
        self.connections: set[ServerConnection] = set()
        self.budget = ConnectionBudget(limits.max_connections)
        self.active_requests = 0
        self.started_requests = 0
        self.draining = False
        self._idle: asyncio.Event | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def track(self, conn: ServerConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.connections.add(conn)
        if self._sweep is None or self._sweep_loop is not loop:
            # (A sweep left on another, closed loop would never fire.)
            self._sweep_loop = loop
            self._sweep = loop.call_later(self._tick(), self._expire, loop)

    def _tick(self) -> float:
        # Per-connection deadlines are checked by one sweep per process instead of a timer
        # per connection: arming one is a float store on the hot path, and an idle
        # connection carries no TimerHandle. They fire at most a quarter late (<= 1 s).
        limits = self.limits
        return min(1.0, max(0.01, min(limits.header_read_timeout, limits.idle_timeout) / 4))

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.expire()
        if self.connections:
            self._sweep = loop.call_later(self._tick(), self._expire, loop)

    def request_started(self) -> None:
        self.active_requests += 1
        self.started_requests += 1

    def request_finished(self) -> None:
        self.active_requests -= 1
        if self.active_requests == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False on timeout."""
        if self.active_requests == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None

    async def wait_quiet(self, quiet: float, deadline: float) -> None:
        """Return once no request has started for `quiet` seconds and none is in flight, or
        at `deadline` (loop time). Polls a counter so the hot path pays one increment."""
        loop = asyncio.get_running_loop()
        seen = -1
        while loop.time() < deadline:
            if self.started_requests == seen and self.active_requests == 0:
                return
            seen = self.started_requests
            await asyncio.sleep(min(quiet, max(0.0, deadline - loop.time())))

    def start_drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()


class ServerConnection(asyncio.Protocol):
    # Slots: one of these lives per client connection, most of them idle keep-alives.
    __slots__ = (
        "_body",
        "_body_bytes",
        "_broken",
        "_budget",
        "_closing",
        "_current",
        "_direction",
        "_early",
        "_flow",
        "_h2",
        "_handler",
        "_head_bytes",
        "_head_raw",
        "_headers",
        "_heads_seen",
        "_limits",
        "_loop",
        "_messages_seen",
        "_parser",
        "_peer",
        "_pending",
        "_prepare",
        "_reading_head",
        "_reading_paused",
        "_report_broken",
        "_responding",
        "_sniff",
        "_state",
        "_task",
        "_transport",
        "_url",
        "_write_stalled",
        "deadline",
    )

    def __init__(
        self,
        handler: Handler,
        state: ServerState,
        direction: str,
        prepare: Callable[[Request], None] | None = None,
        h2: Callable[[asyncio.Transport, bytes, ConnectionBudget | None], None] | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self._handler = handler
        # Takes the connection over when its first bytes are the HTTP/2 preface.
        self._h2 = h2
        self._sniff = h2 is not None
        self._state = state
        self._budget = state.budget if budget is None else budget
        self._limits = state.limits
        self._direction = direction
        self._prepare = prepare
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._flow = WriteFlow()
        self._peer = ""
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._body: StreamBody | None = None
        self._body_bytes = 0
        self._current: Request | None = None
        # (request, keep_alive, expects 100-continue); a list, not a deque: at most
        # MAX_PIPELINED entries, and an empty deque costs ~700 bytes on every idle connection.
        self._pending: list[tuple[Request, bool, bool]] = []
        self._task: Driver | None = None
        # Loop time at which the header-read or idle timeout fires; 0: none (ServerState
        # sweeps these).
        self.deadline = 0.0
        self._closing = False
        self._reading_paused = False
        # The client reads nothing (our write buffer is full); `deadline` then is its limit.
        self._write_stalled = False
        # The final response head of the current request is being written: an interim
        # (1xx) response can no longer go out.
        self._responding = False
        # The byte stream broke while a request was being served: answer it, then close.
        self._broken: SidecarError | None = None
        self._report_broken = True
        # Raw bytes of a request head not yet complete: httptools buffers a header line
        # internally until its CRLF, so on_header alone can't bound an endless header.
        self._reading_head = True
        self._head_raw = 0
        self._heads_seen = 0
        self._messages_seen = 0
        # Bytes the client sent after an Upgrade request's head: the tunnel's first ones.
        self._early = b""

    # ------------------------------------------------------------ connection events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self._transport = cast(asyncio.Transport, transport)
        # What a client has not read yet waits here (plus the kernel's socket buffer): this
        # bounds the memory a slow reader costs, with the 64 KiB body buffer upstream.
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        if not self._budget.admit(self):
            # Every slot busy (none idle to close): refuse at once rather than queue.
            self._send_error_and_close(Overloaded("too many connections", retry_after=1))
            return
        self._state.track(self, self._loop)
        self._arm_timer(self._limits.header_read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        # Freed by refcounting, not left to the cyclic collector (see inert.py).
        self._parser = httptools.HttpRequestParser(NoCallbacks())
        self._state.connections.discard(self)
        self._budget.release(self)
        self._cancel_timer()
        self._flow.connection_lost()
        if self._body is not None:
            self._body.set_error(ConnectionResetError("client closed the connection"))
        # A client that went away no longer needs its upstream call (as Envoy does on reset).
        if self._task is not None and not self._task.done() and not self._state.draining:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._flow.pause_writing()
        # A client that reads nothing for the idle timeout is cut off: otherwise each one
        # holds a response's buffers (and its upstream connection) for ever.
        self._write_stalled = True
        self._arm_timer(self._limits.idle_timeout)

    def resume_writing(self) -> None:
        self._flow.resume_writing()
        if self._write_stalled:
            self._write_stalled = False
            self._cancel_timer()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._broken is not None:
            return
        if self._sniff:
            self._sniff = False
            if is_h2_preface(data):
                self._hand_over(data)
                return
        heads, messages, body_bytes = self._heads_seen, self._messages_seen, self._body_bytes
        try:
            self._parser.feed_data(data)
            if (
                heads == self._heads_seen
                and messages == self._messages_seen
                and body_bytes == self._body_bytes
            ):
                # Not one body byte nor a message boundary: all of it was head, chunk-size
                # or chunk-extension lines, or trailers (httptools buffers a field until
                # its CRLF, so on_header alone can't bound an endless one).
                self._head_raw += len(data)
                if self._head_raw > self._limits.max_header_bytes:
                    raise HeadTooLarge
            else:
                # Progress: the bytes framing it are undercounted by at most one read, which
                # keeps the bound.
                self._head_raw = 0
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
        except HeadTooLarge:
            self._protocol_error(self._too_large())
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HeadTooLarge):
                self._protocol_error(self._too_large())
            elif isinstance(cause, SidecarError):
                self._protocol_error(cause)
            else:
                self._protocol_error(BadRequest("malformed request"))
        except httptools.HttpParserError as exc:
            self._protocol_error(BadRequest(f"malformed request: {exc}"))

    def _upgrade_requested(self, rest: bytes) -> None:
        """The request just queued asks to switch protocols (an Upgrade, or a CONNECT that
        egress allows). llhttp parses nothing after it, so the connection ends with its
        answer, unless that opens a tunnel (a 101, or a 200 to the CONNECT; see tunnel.py),
        which starts with `rest`. An h2c upgrade is answered over HTTP/1.1, as RFC 9110 §7.8
        lets a server do."""
        request = self._pending[-1][0] if self._pending else None
        value = request.headers.get("upgrade") if request is not None else None
        if request is not None and request.method == "CONNECT":
            request.upgrade = CONNECT_UPGRADE
            self._early = rest
        elif request is not None and value and request.body is EMPTY_BODY and wants_tunnel(value):
            request.upgrade = value
            self._early = rest
        self._protocol_error(BadRequest("nothing is read after an Upgrade request"), report=False)

    def _hand_over(self, data: bytes) -> None:
        """HTTP/2 with prior knowledge: from here the connection is the HTTP/2 protocol's."""
        self._closing = True
        self._state.connections.discard(self)
        # The slot goes to the HTTP/2 connection, which holds it until it closes.
        self._budget.release(self)
        self._cancel_timer()
        self._parser = httptools.HttpRequestParser(NoCallbacks())
        if self._h2 is not None and self._transport is not None:
            self._h2(self._transport, data, self._budget)

    def _too_large(self) -> BadRequest:
        if self._reading_head:
            return BadRequest("request head too large", status=431)
        # Trailers share the head's limit (so do chunk-size and chunk-extension lines).
        return BadRequest("request trailers or chunk lines too large", status=431)

    # ------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self._budget.busy(self)
        self._reading_head = True
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._body_bytes = 0
        if not self.deadline:
            self._arm_timer(self._limits.header_read_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_header_bytes:
            raise HeadTooLarge
        if self._reading_head:  # trailers are counted, then dropped (not forwarded)
            self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self._reading_head = False
        self._heads_seen += 1
        parser = self._parser
        method = parser.get_method().decode("ascii")
        if method == "CONNECT" and not (
            self._state.allow_connect and self._direction == "outbound"
        ):
            raise BadRequest("CONNECT is not supported: this is not an open proxy", status=405)
        version = parser.get_http_version()
        chunked = _check_framing(self._headers, version)
        headers = Headers.from_lower(self._headers)
        length = _content_length(self._headers)
        max_body = self._limits.max_body_bytes
        if max_body is not None and length is not None and length > max_body:
            raise PayloadTooLarge(f"request body larger than {max_body} bytes")
        if chunked or (length is not None and length > 0):
            body = StreamBody(
                None if chunked else length, self._pause_reading, self._resume_reading
            )
            self._body = body
            req_body: StreamBody | BytesBody = body
        else:
            self._body = None
            req_body = EMPTY_BODY
        expect = False
        if any(k == "expect" for k, _ in self._headers):
            headers.remove("expect")
            # We read the body ourselves, so we tell the client to send it: when this request
            # is served (not now, inside an earlier response), and never to HTTP/1.0 (RFC
            # 9110 §10.1.1).
            expect = self._body is not None and version == "1.1"
        request = Request(
            method=method,
            target=self._url.decode("latin-1"),
            headers=headers,
            body=req_body,
            http_version=version,
            client_addr=self._peer,
            direction=self._direction,
            start=time.monotonic(),
            interim=self,
        )
        # The request owns these now; empty means "no head in progress" for the timeout.
        self._url, self._headers = b"", []
        self._enqueue(request, parser.should_keep_alive(), expect)

    def on_body(self, data: bytes) -> None:
        max_body = self._limits.max_body_bytes
        self._body_bytes += len(data)
        if max_body is not None and self._body_bytes > max_body:
            if self._body is not None:
                self._body.set_error(PayloadTooLarge(f"request body larger than {max_body} bytes"))
            raise PayloadTooLarge(f"request body larger than {max_body} bytes")
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        self._reading_head = True
        self._messages_seen += 1
        if self._body is not None:
            self._body.feed_eof()
            self._body.detach()
            self._body = None

    # ------------------------------------------------------------ request handling
    def _enqueue(self, request: Request, keep_alive: bool, expect: bool) -> None:
        self._pending.append((request, keep_alive, expect))
        if self._task is None:
            self._task = Driver(self._loop, self._serve())
        elif len(self._pending) >= MAX_PIPELINED:
            self._pause_reading()

    async def _serve(self) -> None:
        try:
            while self._pending and not self._closing:
                request, keep_alive, expect = self._pending.pop(0)
                if self._reading_paused and len(self._pending) < MAX_PIPELINED // 2:
                    self._resume_reading()
                if expect and request.body is self._body and self._transport is not None:
                    # Its body is still to come, and every earlier response is complete.
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._current = request
                self._state.request_started()
                try:
                    keep_alive = await self._handle(request, keep_alive)
                finally:
                    self._state.request_finished()
                    self._current = None
                if not keep_alive:
                    self._close()
                    return
            if not self._closing:
                if self._broken is not None and self._report_broken:
                    # Garbage after the pipelined requests: they were answered; now say
                    # what was wrong with the rest, and close.
                    self._send_error_and_close(self._broken)
                elif self._broken is not None or self._state.draining:
                    self._close()
                else:
                    self._arm_timer(self._limits.idle_timeout)
                    if not (self._head_raw or self._url or self._headers):
                        self._budget.idle(self)
        except (asyncio.CancelledError, ConnectionResetError):
            self._close()
        finally:
            self._task = None

    async def _handle(self, request: Request, keep_alive: bool) -> bool:
        self._responding = False
        body = request.body
        if isinstance(body, StreamBody) and isinstance(body.error, SidecarError):
            # Its body broke (a bad chunk size in the same packet as the head): refuse it
            # before anything goes upstream.
            return await self._write(request, error_response(body.error), False)
        if self._prepare is not None:
            try:
                self._prepare(request)
            except SidecarError as err:
                return await self._write(request, error_response(err), keep_alive)
        try:
            response = await self._handler(request)
        except SidecarError as exc:
            body_err = request.body.error if isinstance(request.body, StreamBody) else None
            # If the upstream call failed because the client's body broke (too large,
            # malformed chunk), that, not the upstream, is what the client must hear.
            failure = body_err if isinstance(body_err, SidecarError) else exc
            response = error_response(failure, request_id=request.request_id)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error while handling %s %s", request.method, request.target)
            response = error_response(
                SidecarError("internal error in the sidecar"), request_id=request.request_id
            )
        body = request.body
        if isinstance(body, StreamBody) and not body.at_eof:
            # The request body was not read to the end (e.g. an early error): the connection's
            # framing is unknown from here, so don't reuse it.
            keep_alive = False
        sent = self._write_whole(request, response, keep_alive)
        if sent is None:
            return await self._stream(request, response, keep_alive)
        if self._flow.blocked:
            await self._flow.drain()
        return sent

    async def _write(self, request: Request, response: Response, keep_alive: bool) -> bool:
        """Send the response; False when the connection must not be reused."""
        sent = self._write_whole(request, response, keep_alive)
        if sent is None:
            return await self._stream(request, response, keep_alive)
        if self._flow.blocked:
            # A pipelining client that reads nothing must not have response after
            # response queued for it in memory.
            await self._flow.drain()
        return sent

    def _write_whole(self, request: Request, response: Response, keep_alive: bool) -> bool | None:
        """The common case without a coroutine: a response whose body is all in memory (or
        that has none) goes out in one write. None: it streams or switches protocols, and
        nothing was written."""
        if request.upgrade and isinstance(response.body, Tunnel):
            return None
        transport = self._transport
        if transport is None or self._closing:
            _abort_body(response)
            return False
        body = response.body
        status = response.status
        head_only = request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        if isinstance(body, BytesBody):
            data = body.data
        elif head_only:
            data = b""
        else:
            complete = body.take_complete() if isinstance(body, StreamBody) else None
            if complete is None:
                return None
            data = complete
        head, chunked, keep_alive = self._head(request, response, keep_alive)
        if head_only:
            transport.write(head)
            _abort_body(response)
            return keep_alive
        # One write (one syscall) for head and body.
        if chunked:
            transport.write(head + (_chunk(data) if data else b"") + b"0\r\n\r\n")
        else:
            transport.write(head + data)
        return keep_alive

    def _head(
        self, request: Request, response: Response, keep_alive: bool
    ) -> tuple[bytes, bool, bool]:
        """(status line and fields, chunked, keep_alive) of a response about to be sent."""
        self._responding = True
        if self._state.draining:
            keep_alive = False
        status = response.status
        no_content = status in _NO_BODY_STATUS or status < 200
        head_only = request.method == "HEAD" or no_content
        # Framing fields are ours to write, except a HEAD answer's (what a GET would carry);
        # a 204/304 carries none (RFC 9110 §8.6).
        keep_framing = head_only and not no_content
        parts = [f"HTTP/1.1 {status} {response.reason or _REASONS.get(status, '')}\r\n"]
        for k, v in response.headers.items():
            if not keep_framing and (k == "content-length" or k == "transfer-encoding"):
                continue
            if k == "connection":
                continue
            # Pieces joined once below, not a formatted string per field.
            parts.append(k)
            parts.append(": ")
            parts.append(v)
            parts.append("\r\n")
        body = response.body
        chunked = False
        if not head_only:
            if body.length is not None:
                parts.append(f"content-length: {body.length}\r\n")
            elif request.http_version == "1.1":
                parts.append("transfer-encoding: chunked\r\n")
                chunked = True
            else:
                keep_alive = False  # close-delimited body for HTTP/1.0 clients
        if not keep_alive:
            parts.append("connection: close\r\n")
        elif request.http_version == "1.0":
            parts.append("connection: keep-alive\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1"), chunked, keep_alive

    async def _stream(self, request: Request, response: Response, keep_alive: bool) -> bool:
        """A response whose body is still arriving (or a protocol switch)."""
        if request.upgrade and isinstance(response.body, Tunnel):
            return await self._switch(response, response.body)
        transport = self._transport
        assert transport is not None
        head, chunked, keep_alive = self._head(request, response, keep_alive)
        body = response.body
        transport.write(head)
        sent = 0
        try:
            async for chunk in body:
                sent += len(chunk)
                transport.write(_chunk(chunk) if chunked else chunk)
                await self._flow.drain()
            if chunked:
                transport.write(b"0\r\n\r\n")
        except (ConnectionResetError, asyncio.CancelledError):
            _abort_body(response)
            raise
        except Exception as exc:
            # Upstream failed mid-body: headers are gone already, so the only honest signal
            # left is to cut the stream (no terminating chunk / short content-length).
            log.debug("response body aborted after %d bytes: %r", sent, exc)
            _abort_body(response)
            return False
        return keep_alive

    async def _switch(self, response: Response, tunnel: Tunnel) -> bool:
        """Answer 101 and relay until the tunnel closes; the connection is the tunnel's."""
        transport = self._transport
        if transport is None or self._closing:
            tunnel.close()
            return False
        status = response.status
        parts = [f"HTTP/1.1 {status} {response.reason or _REASONS.get(status, '')}\r\n"]
        for k, v in response.headers.items():
            if k not in ("connection", "upgrade", "content-length", "transfer-encoding"):
                parts.append(f"{k}: {v}\r\n")
        if status == 101:
            parts.append(f"connection: upgrade\r\nupgrade: {tunnel.header}\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("latin-1")
        early, self._early = self._early, b""
        try:
            await tunnel.run(transport, head, early, self._state.tunnels)
        finally:
            # The tunnel took the transport over (this protocol sees no connection_lost).
            self._closing = True
            self._state.connections.discard(self)
            self._budget.release(self)
        return False

    def write_interim(self, request: Request, status: int, headers: list[tuple[str, str]]) -> None:
        """Forward an upstream's 1xx (e.g. 103 Early Hints) to the client: only while
        `request` is the one being answered and its final head is not out, and only to
        HTTP/1.1 clients (RFC 9110 §15.2)."""
        transport = self._transport
        if (
            transport is None
            or self._closing
            or request is not self._current
            or self._responding
            or request.http_version != "1.1"
        ):
            return
        parts = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"]
        parts += [f"{k}: {v}\r\n" for k, v in headers]
        parts.append("\r\n")
        transport.write("".join(parts).encode("latin-1"))

    # ------------------------------------------------------------ errors and closing
    def _protocol_error(self, err: SidecarError, report: bool = True) -> None:
        if self._body is not None:
            self._body.set_error(err)
            self._body = None
        if self._current is not None or self._task is not None:
            # Requests are queued or being served: the stream is corrupt past them, so parse
            # nothing more; answer them (with this error where their own body broke), then
            # close.
            self._broken = err
            self._report_broken = report
            self._pause_reading()
            return
        self._send_error_and_close(err)

    def _send_error_and_close(self, err: SidecarError) -> None:
        transport = self._transport
        self._closing = True
        if transport is None:
            return
        resp = error_response(err)
        assert isinstance(resp.body, BytesBody)
        head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in resp.headers.items()]
        head.append(f"content-length: {len(resp.body.data)}\r\nconnection: close\r\n\r\n")
        transport.write("".join(head).encode("latin-1") + resp.body.data)
        transport.close()

    def evict(self) -> None:
        """The listener's budget needs this idle connection's slot."""
        self._close()

    def close_if_idle(self) -> None:
        if self._task is None and self._current is None:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _arm_timer(self, delay: float) -> None:
        self.deadline = self._loop.time() + delay

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def expire(self) -> None:
        """The header-read or idle deadline passed (called by the ServerState sweep)."""
        self.deadline = 0.0
        if self._write_stalled:
            # The client read nothing for the idle timeout: drop what it never took. A reset
            # (linger 0), not a FIN queued behind data it will never read: that would keep
            # the kernel's send buffer for minutes (nginx: reset_timedout_connection).
            self._closing = True
            transport = self._transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                transport.abort()
        elif self._task is None:
            if self._head_raw or self._url or self._headers:
                # Slowloris: part of a head arrived, too slowly. Say why, then cut it off.
                self._send_error_and_close(
                    BadRequest("request head not received in time", status=408)
                )
            else:
                # An idle keep-alive connection: close quietly (the client may be racing a
                # new request, which then retries on a fresh connection).
                self._close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _abort_body(response: Response) -> None:
    abort = getattr(response.body, "abort", None)
    if abort is not None:
        abort()


def _content_length(items: list[tuple[str, str]]) -> int | None:
    # llhttp already rejects duplicate/conflicting/invalid Content-Length values.
    for k, v in items:
        if k == "content-length":
            return int(v)
    return None


def _check_framing(items: list[tuple[str, str]], version: str) -> bool:
    """Refuse what llhttp lets through but the next hop could read differently (RFC 9112
    §6.1, §3.2); return True for a chunked body. llhttp itself already rejects CL+TE,
    duplicate or invalid Content-Length, and a Transfer-Encoding not ending in chunked."""
    if version not in ("1.0", "1.1"):
        raise BadRequest(f"HTTP/{version} is not supported on this port: use HTTP/1.1")
    if len(items) > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} header fields", status=431)
    chunked = False
    hosts = 0
    for k, v in items:
        if k == "transfer-encoding":
            if version == "1.0":
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            if v.strip(" \t").lower() != "chunked":
                # e.g. "identity, chunked": we only speak plain chunked, and so should the
                # next hop; anything else invites a framing disagreement.
                raise BadRequest(f"unsupported Transfer-Encoding {v!r}: only chunked")
            chunked = True
        elif k == "content-length" and int(v) > MAX_CONTENT_LENGTH:
            raise BadRequest("Content-Length too large")
        elif k == "host":
            hosts += 1
    if hosts > 1:
        raise BadRequest("more than one Host header")
    if hosts == 0 and version == "1.1":
        raise BadRequest("HTTP/1.1 request without a Host header")
    return chunked
