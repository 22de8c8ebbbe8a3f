"""A raw-socket HTTP/1.1 upstream double that parses strictly and can answer with garbage.

Unlike the aiohttp double, it sees the exact bytes the sidecar sends: every connection, every
partial request, and whether each request is well-formed by a strict reading of RFC 9112
(`violations`). Replies come from a script (raw bytes, then optionally close) or default to a
small 200 JSON answer with keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.1$")
_FIELD = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*$")
MAX_HEAD = 64 * 1024


class Malformed(Exception):
    pass


@dataclass
class RawSeen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int  # index of the connection it arrived on (0-based)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class Reply:
    data: bytes
    close: bool = False  # close the connection after writing `data`
    hang: bool = False  # write `data`, then never answer again on this connection
    # write `data`, wait for `gate`, then write `rest` (a response still in flight)
    gate: asyncio.Event | None = None
    rest: bytes = b""


def ok_reply(seen: RawSeen) -> bytes:
    body = json.dumps({"path": seen.target, "len": len(seen.body)}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )


@dataclass
class RawUpstream:
    seen: list[RawSeen] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    raw_bytes: int = 0
    script: deque[Reply] = field(default_factory=deque)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = self.connections
        self.connections += 1
        self.open_connections += 1
        try:
            while True:
                try:
                    seen = await self._read_request(reader, conn)
                except (Malformed, asyncio.IncompleteReadError, ConnectionError) as exc:
                    if isinstance(exc, Malformed):
                        self.violations.append(str(exc))
                    return
                if seen is None:
                    return
                self.seen.append(seen)
                reply = self.script.popleft() if self.script else Reply(ok_reply(seen))
                writer.write(reply.data)
                await writer.drain()
                if reply.gate is not None:
                    await reply.gate.wait()
                    writer.write(reply.rest)
                    await writer.drain()
                if reply.hang:
                    # never answer, but notice when the sidecar gives up on us
                    while await reader.read(65536):
                        pass
                    return
                if reply.close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)
            self.closed_event.set()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readuntil(b"\r\n")
        self.raw_bytes += len(line)
        body = line[:-2]
        if b"\r" in body or b"\n" in body or b"\0" in body:
            raise Malformed(f"bare CR/LF/NUL in line {line!r}")
        return body

    async def _read_request(self, reader: asyncio.StreamReader, conn: int) -> RawSeen | None:
        try:
            first = await self._line(reader)
        except asyncio.IncompleteReadError as exc:
            self.raw_bytes += len(exc.partial)
            if exc.partial:
                raise Malformed(
                    f"connection closed inside a request line: {exc.partial!r}"
                ) from None
            return None
        m = _REQUEST_LINE.match(first)
        if not m:
            raise Malformed(f"bad request line {first!r}")
        headers: list[tuple[str, str]] = []
        size = len(first)
        while True:
            line = await self._line(reader)
            size += len(line)
            if size > MAX_HEAD:
                raise Malformed("head too large")
            if not line:
                break
            fm = _FIELD.match(line)
            if not fm:
                raise Malformed(f"bad header line {line!r}")
            headers.append((fm.group(1).decode().lower(), fm.group(2).decode("latin-1")))
        names = [k for k, _ in headers]
        if names.count("host") != 1:
            raise Malformed("not exactly one Host")
        cls = [v for k, v in headers if k == "content-length"]
        tes = [v for k, v in headers if k == "transfer-encoding"]
        if len(cls) > 1 or len(tes) > 1 or (cls and tes):
            raise Malformed(f"ambiguous framing: CL={cls} TE={tes}")
        if tes:
            if tes[0] != "chunked":
                raise Malformed(f"transfer-encoding {tes[0]!r}")
            body = await self._read_chunked(reader)
        elif cls:
            if not cls[0].isdigit():
                raise Malformed(f"content-length {cls[0]!r}")
            body = await reader.readexactly(int(cls[0]))
            self.raw_bytes += len(body)
        else:
            body = b""
        return RawSeen(m.group(1).decode(), m.group(2).decode("latin-1"), headers, body, conn)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self._line(reader)
            if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_line):
                raise Malformed(f"bad chunk size {size_line!r}")
            size = int(size_line, 16)
            if size == 0:
                if await self._line(reader) != b"":
                    raise Malformed("trailers are not expected")
                return b"".join(parts)
            data = await reader.readexactly(size + 2)
            self.raw_bytes += len(data)
            if data[-2:] != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
            parts.append(data[:-2])
