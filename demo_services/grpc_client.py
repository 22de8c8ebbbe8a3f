"""A unary gRPC client over one multiplexed HTTP/2 cleartext connection (prior knowledge), on
`h2`: what the bff uses to call retrieval-service through its sidecar. Every failure is a gRPC
status, as a gRPC client library reports it: a refused or lost connection is UNAVAILABLE, a
passed deadline DEADLINE_EXCEEDED (and the stream is reset, so the callee stops working)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from demo_services.grpc_wire import (
    CONTENT_TYPE,
    WINDOW,
    Code,
    GrpcError,
    format_timeout,
    frame,
    message_of,
    unframe,
)


@dataclass(frozen=True)
class Reply:
    code: int
    message: str = ""
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


@dataclass
class _Call:
    done: asyncio.Future[None]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.conn.increment_flow_control_window(WINDOW)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.transport = None
        for call in self.calls.values():
            if not call.done.done():
                call.done.set_exception(GrpcError(Code.UNAVAILABLE, "connection lost"))
        self.calls.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.usable = False
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(exc)
            return
        for event in events:
            self.on_event(event)
        self.flush()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.usable = False  # GOAWAY: calls in flight finish, new ones go elsewhere
            return
        call = self.calls.get(getattr(event, "stream_id", 0) or 0)
        if call is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            call.headers = {str(k): str(v) for k, v in event.headers or []}
        elif isinstance(event, h2.events.DataReceived):
            call.body += event.data or b""
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            call.trailers = {str(k): str(v) for k, v in event.headers or []}
        elif isinstance(event, h2.events.StreamEnded):
            self.calls.pop(event.stream_id, None)
            if not call.done.done():
                call.done.set_result(None)
        elif isinstance(event, h2.events.StreamReset):
            self.calls.pop(event.stream_id, None)
            if not call.done.done():
                call.done.set_exception(GrpcError(Code.UNAVAILABLE, "stream reset by peer"))

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def start(self, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, _Call]:
        sid = self.conn.get_next_available_stream_id()
        call = _Call(asyncio.get_running_loop().create_future())
        self.calls[sid] = call
        self.conn.send_headers(sid, headers)
        self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid, call

    def cancel(self, sid: int) -> None:
        if self.calls.pop(sid, None) is not None:
            try:
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.StreamClosedError:
                return
            self.flush()


class Channel:
    """Calls to one `host:port`, with `authority` as :authority (the upstream name when the
    port is a sidecar's outbound listener, which routes on it as on Host)."""

    def __init__(self, host: str, port: int, authority: str) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> _Connection:
        async with self._lock:
            conn = self._conn
            if conn is None or not conn.usable or conn.transport is None:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
                self._conn = conn
            return conn

    async def unary(
        self,
        path: str,
        message: Any,
        metadata: Mapping[str, str],
        timeout_s: float,
    ) -> Reply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", CONTENT_TYPE),
            ("te", "trailers"),
            ("grpc-timeout", format_timeout(timeout_s)),
            *((k, v) for k, v in metadata.items() if k not in ("host", "te", "content-type")),
        ]
        sid = 0
        conn: _Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._connection()
                sid, call = conn.start(path, headers, frame(message))
                await call.done
        except TimeoutError:
            if conn is not None and sid:
                conn.cancel(sid)
            return Reply(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        except OSError as exc:
            return Reply(Code.UNAVAILABLE, f"cannot connect: {exc.strerror or exc}")
        except h2.exceptions.H2Error as exc:
            if conn is not None:
                conn.usable = False
            return Reply(Code.UNAVAILABLE, f"HTTP/2 error: {exc}")
        except GrpcError as exc:
            return Reply(exc.code, exc.message)
        except asyncio.CancelledError:
            if conn is not None and sid:
                conn.cancel(sid)
            raise
        return _reply(call)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.conn.close_connection()
            conn.flush()
            conn.transport.close()


def _reply(call: _Call) -> Reply:
    status = call.headers.get(":status", "")
    if status != "200":
        # Not a gRPC reply (e.g. an HTTP error from something in between): gRPC maps it.
        mapped = Code.UNAVAILABLE if status in ("502", "503", "504") else Code.UNKNOWN
        return Reply(mapped, f"HTTP status {status or 'missing'}")
    outcome = call.trailers or call.headers  # Trailers-Only: the status is in the headers
    raw = outcome.get("grpc-status")
    if raw is None or not raw.isdigit():
        return Reply(Code.UNKNOWN, "no grpc-status in the reply")
    code = int(raw)
    if code != Code.OK:
        return Reply(code, message_of(outcome))
    try:
        return Reply(code, "", unframe(bytes(call.body)))
    except GrpcError as exc:
        return Reply(Code.INTERNAL, exc.message)
