"""gRPC over HTTP/2 cleartext for the demo services, on the `h2` library the sidecar already
depends on (no grpcio at run time): the message framing, status codes, and a small server
protocol. gRPC is HTTP/2 with conventions (grpc/grpc doc/PROTOCOL-HTTP2.md): `:path
/<package.Service>/<Method>`, `content-type: application/grpc+<codec>`, each message behind a
5-byte prefix, and the outcome in `grpc-status` / `grpc-message` trailers (or in the headers of
a "Trailers-Only" reply, an error before any message). The demo's messages are JSON
(`application/grpc+json`), a codec gRPC allows; a real model server would use protobuf."""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONTENT_TYPE = "application/grpc+json"
MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default receive limit
WINDOW = 1 << 20  # raised from 65,535 so a burst of calls is not throttled by flow control


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"code {code}"


class GrpcError(Exception):
    """Raised by a handler: the call ends with this status and message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def frame(message: Any) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


def unframe(data: bytes) -> Any:
    """The one JSON message in a unary call's body; GrpcError(INVALID_ARGUMENT) otherwise."""
    if len(data) < 5:
        raise GrpcError(Code.INVALID_ARGUMENT, "expected one length-prefixed message")
    compressed, length = struct.unpack(">BI", data[:5])
    if compressed or len(data) != 5 + length:
        raise GrpcError(Code.INVALID_ARGUMENT, "expected one uncompressed message")
    try:
        return json.loads(data[5:])
    except ValueError:
        raise GrpcError(Code.INVALID_ARGUMENT, "message is not JSON") from None


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str | None) -> float | None:
    """Seconds from a `grpc-timeout` header (`250m`, `3S`), None when absent or malformed."""
    if not value or len(value) > 9 or value[-1] not in _TIMEOUT_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


def format_timeout(seconds: float) -> str:
    return f"{max(0, int(seconds * 1000))}m"


def status_headers(code: int, message: str) -> list[tuple[str, str]]:
    out = [("grpc-status", str(int(code)))]
    if message:
        out.append(("grpc-message", quote(message, safe=" ")))
    return out


def message_of(headers: Mapping[str, str]) -> str:
    return unquote(headers.get("grpc-message", ""))


# A unary method: (request message, request metadata) → response message; raises GrpcError.
Handler = Callable[[Any, Mapping[str, str]], Awaitable[Any]]
# Around every call (the fault knobs): (method path, call) → response message.
Interceptor = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None


class GrpcServerProtocol(asyncio.Protocol):
    """One HTTP/2 connection serving unary gRPC methods, each call in its own task."""

    def __init__(
        self,
        methods: Mapping[str, Handler],
        intercept: Interceptor | None = None,
        http: Callable[[str, str], tuple[int, Any]] | None = None,
        on_close: Callable[[GrpcServerProtocol], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._methods = methods
        self._intercept = intercept
        # Plain HTTP/2 requests (e.g. /healthz): (method, path) → (status, JSON body).
        self._http = http
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._conn = h2.connection.H2Connection(config=config)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._window_open = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._conn.initiate_connection()
        self._conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self._conn.increment_flow_control_window(WINDOW)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()
        self._transport = None
        self._window_open.set()
        if self._on_close is not None:
            self._on_close(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            self._on_event(event)
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in event.headers or []}
            self._streams[event.stream_id] = _Stream(headers)
            if event.stream_ended is not None:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.body += event.data or b""
                if len(stream.body) > MAX_MESSAGE + 5:
                    self._finish(event.stream_id, Code.RESOURCE_EXHAUSTED, "message too large")
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self._streams:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            # The caller cancelled (or its deadline passed): stop working on it.
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_open.set()

    def _dispatch(self, sid: int) -> None:
        stream = self._streams[sid]
        if stream.task is None:
            stream.task = asyncio.get_running_loop().create_task(self._call(sid, stream))

    async def _call(self, sid: int, stream: _Stream) -> None:
        h = stream.headers
        path = h.get(":path", "")
        if not h.get("content-type", "").startswith("application/grpc"):
            status, body = self._http(h.get(":method", ""), path) if self._http else (404, {})
            data = json.dumps(body).encode()
            head = [(":status", str(status)), ("content-type", "application/json")]
            self._send(sid, head, data, None)
            return
        method = self._methods.get(path)
        if method is None:
            self._finish(sid, Code.UNIMPLEMENTED, f"unknown method {path}")
            return
        timeout = parse_timeout(h.get("grpc-timeout"))
        try:
            request = unframe(bytes(stream.body))
            async with asyncio.timeout(timeout):

                async def call() -> Any:
                    return await method(request, h)

                intercept = self._intercept
                reply = await (intercept(path, call) if intercept else call())
        except GrpcError as exc:
            self._finish(sid, exc.code, exc.message)
            return
        except TimeoutError:
            self._finish(sid, Code.DEADLINE_EXCEEDED, "deadline exceeded in the service")
            return
        head = [(":status", "200"), ("content-type", CONTENT_TYPE)]
        await self._send_when_open(sid, head, frame(reply), status_headers(Code.OK, ""))

    def _finish(self, sid: int, code: Code, message: str) -> None:
        """A Trailers-Only reply: status in the headers, no message."""
        head = [(":status", "200"), ("content-type", CONTENT_TYPE), *status_headers(code, message)]
        self._send(sid, head, b"", None)

    async def _send_when_open(
        self,
        sid: int,
        head: list[tuple[str, str]],
        data: bytes,
        trailers: list[tuple[str, str]],
    ) -> None:
        while self._transport is not None and sid in self._streams:
            window = min(
                self._conn.local_flow_control_window(sid), self._conn.max_outbound_frame_size
            )
            if window >= len(data):
                self._send(sid, head, data, trailers)
                return
            self._window_open.clear()
            await self._window_open.wait()

    def _send(
        self,
        sid: int,
        head: list[tuple[str, str]],
        data: bytes,
        trailers: list[tuple[str, str]] | None,
    ) -> None:
        if self._streams.pop(sid, None) is None or self._transport is None:
            return
        try:
            self._conn.send_headers(sid, head, end_stream=not data and trailers is None)
            if data:
                self._conn.send_data(sid, data, end_stream=trailers is None)
            if trailers is not None:
                self._conn.send_headers(sid, trailers, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def close(self) -> None:
        """Drain: GOAWAY, then close once the calls in flight have answered."""
        if self._transport is None:
            return
        self._conn.close_connection()
        self._flush()
        self._transport.close()


class DetectingProtocol(asyncio.Protocol):
    """The first bytes of a connection pick its protocol, as the sidecar's listeners do: the
    HTTP/2 preface → gRPC (`h2`), anything else → HTTP/1.1 (the service's aiohttp app)."""

    def __init__(
        self,
        http1: Callable[[], asyncio.Protocol],
        h2c: Callable[[], asyncio.Protocol],
    ) -> None:
        self._http1 = http1
        self._h2c = h2c
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head = self._buffer[: len(PREFACE)]
        if len(self._buffer) < len(PREFACE) and PREFACE.startswith(head):
            return  # could still be the preface
        assert self._transport is not None
        protocol = self._h2c() if head == PREFACE else self._http1()
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(self._buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
