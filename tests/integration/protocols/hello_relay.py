"""A TCP relay in front of a TLS server that reads each connection's ClientHello on the way:
the server name (SNI) and the ALPN protocols offered, and whether a session was offered for
resumption (TLS 1.3 pre_shared_key). For servers that don't expose these (grpcio)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

_SERVER_NAME = 0
_ALPN = 16
_PRE_SHARED_KEY = 41


@dataclass(frozen=True)
class Hello:
    server_name: str | None
    alpn: list[str]
    resuming: bool


def parse_client_hello(record: bytes) -> Hello | None:
    """The ClientHello's SNI, ALPN and PSK offer, from the first TLS record; None if the
    bytes are not a whole ClientHello."""
    if len(record) < 5 or record[0] != 22:
        return None
    body = record[5 : 5 + struct.unpack("!H", record[3:5])[0]]
    if not body or body[0] != 1:
        return None
    pos = 4 + 2 + 32  # handshake header, legacy version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
    pos += 2
    name: str | None = None
    alpn: list[str] = []
    resuming = False
    while pos + 4 <= end:
        kind, size = struct.unpack("!HH", body[pos : pos + 4])
        data = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if kind == _SERVER_NAME:
            name = data[5 : 5 + struct.unpack("!H", data[3:5])[0]].decode()
        elif kind == _ALPN:
            i = 2
            while i < len(data):
                alpn.append(data[i + 1 : i + 1 + data[i]].decode())
                i += 1 + data[i]
        elif kind == _PRE_SHARED_KEY:
            resuming = True
    return Hello(name, alpn, resuming)


@dataclass
class HelloRelay:
    target_port: int
    port: int = 0
    hellos: list[Hello] = field(default_factory=list)
    server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> HelloRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readexactly(5)
            record = head + await reader.readexactly(struct.unpack("!H", head[3:5])[0])
            hello = parse_client_hello(record)
            if hello is not None:
                self.hellos.append(hello)
            up_writer.write(record)
        back = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks.add(back)
        back.add_done_callback(self._tasks.discard)
        await self._pipe(reader, up_writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
