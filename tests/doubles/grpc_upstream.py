"""A gRPC server double (grpcio, asyncio) with generic handlers over raw bytes: no codegen.

Service `test.Echo`:
- `Say` (unary): replies b"hello " + request; b"unavailable" aborts with UNAVAILABLE,
  b"slow" waits for `release`.
- `Count` (server streaming): request b"<n>" → n messages b"0".. b"n-1".
- `Sum` (client streaming): replies the total byte count of the messages, as text.
- `Chat` (bidi): echoes each message.
- `Blob` (server streaming): request b"<count>:<size>" → count messages of size bytes.
`fail_next` makes the next calls fail with UNAVAILABLE (Trailers-Only); `calls` counts calls,
`timeouts` records each call's remaining time as the server saw it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc import aio

SERVICE = "test.Echo"


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class GrpcUpstream:
    name: str = "grpc"
    port: int = 0
    fail_next: int = 0
    calls: int = 0
    cancelled: int = 0
    timeouts: list[float | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started_slow: asyncio.Event = field(default_factory=asyncio.Event)
    server: aio.Server | None = None

    async def _fail_if_asked(self, context: aio.ServicerContext) -> None:
        self.calls += 1
        self.timeouts.append(context.time_remaining())
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")

    async def say(self, request: bytes, context: aio.ServicerContext) -> bytes:
        await self._fail_if_asked(context)
        if request == b"unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "always unavailable")
        if request == b"slow":
            self.started_slow.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return b"hello " + request

    async def count(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._fail_if_asked(context)
        for i in range(int(request)):
            yield str(i).encode()

    async def sum(self, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> bytes:
        await self._fail_if_asked(context)
        total = 0
        async for msg in requests:
            total += len(msg)
        return str(total).encode()

    async def chat(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        await self._fail_if_asked(context)
        async for msg in requests:
            yield b"echo " + msg

    async def blob(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._fail_if_asked(context)
        count, size = (int(x) for x in request.split(b":"))
        block = b"x" * size
        for _ in range(count):
            yield block

    async def start(
        self, port: int = 0, credentials: grpc.ServerCredentials | None = None
    ) -> GrpcUpstream:
        kw = {"request_deserializer": _ident, "response_serializer": _ident}
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Say": grpc.unary_unary_rpc_method_handler(self.say, **kw),
                "Count": grpc.unary_stream_rpc_method_handler(self.count, **kw),
                "Sum": grpc.stream_unary_rpc_method_handler(self.sum, **kw),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat, **kw),
                "Blob": grpc.unary_stream_rpc_method_handler(self.blob, **kw),
            },
        )
        self.server = aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        self.server.add_generic_rpc_handlers((handler,))
        address = f"127.0.0.1:{port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)


def channel(port: int, authority: str | None = None) -> aio.Channel:
    """A client channel to 127.0.0.1:port that names `authority` (the upstream to route to)."""
    options: list[tuple[str, object]] = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.enable_retries", 0),
    ]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return aio.insecure_channel(f"127.0.0.1:{port}", options=options)


def method(ch: aio.Channel, kind: str, name: str) -> object:
    path = f"/{SERVICE}/{name}"
    make = getattr(ch, kind)
    return make(path, request_serializer=_ident, response_deserializer=_ident)
