"""A minimal HTTP/2 connection (RFC 9113) for both ends of the sidecar, written for mypyc.

Sans-IO: `receive(data)` parses frames straight from the bytes (the 9-byte header, dispatch
on the type, no frame objects) and returns events; the send methods queue frames that
`data_to_send()` hands to the socket. Per-stream state is one slotted object with int
windows and two booleans (each end closed or not); flow-control windows are kept both ways.
SETTINGS and PING are acknowledged, PRIORITY is ignored, a header block arriving in
CONTINUATION frames is reassembled up to MAX_CONTINUATIONS frames (CVE-2024-27316), and a
frame longer than our maximum is refused from its header, before its payload is buffered.

Errors: a malformed request or response (RFC 9113 §8.1.1), or a stream-level flow-control
violation, resets that stream (a LOCAL_RESET event tells the owner); anything that breaks the
connection queues a GOAWAY with the code and raises ConnectionProtocolError. Sending on a
stream that is closed or was reset raises ConnectionResetError. A GOAWAY from
the peer is an event and nothing more: the streams it still processes finish (§6.8)."""

from __future__ import annotations

from collections import deque
from typing import Final

from sidecar.transport import h2wire as w
from sidecar.transport.hpack_lean import HpackError, LeanDecoder, LeanEncoder, OversizedHeaderList

# Event kinds
HEADERS: Final = 1  # request (server side) or final response (client side) header block
DATA: Final = 2
TRAILERS: Final = 3  # always with end_stream
RESET: Final = 4  # the peer reset the stream (RST_STREAM); code says why
LOCAL_RESET: Final = 5  # we reset the stream after a stream error of the peer's
WINDOW_UPDATE: Final = 6  # the peer opened a window: stream_id 0 for the connection's
SETTINGS: Final = 7  # the peer's settings changed
GOAWAY: Final = 8  # stream_id is the last stream the peer processes; code

# Frames in one header block beyond which the block is refused (h2's bound, too).
MAX_CONTINUATIONS: Final = 64
# Streams closed by RST_STREAM remembered: frames the peer had in flight on one are dropped
# (RFC 9113 §5.4.2); a late frame on any other closed stream is answered as on one both ends
# finished.
_RESET_MEMORY: Final = 512
_NO_LIMIT: Final = 2**31


class ConnectionProtocolError(Exception):
    """The peer broke the protocol: a GOAWAY with `code` is queued; close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Event:
    __slots__ = ("code", "data", "end_stream", "flow_len", "headers", "kind", "stream_id")

    def __init__(
        self,
        kind: int,
        stream_id: int,
        headers: list[tuple[bytes, bytes]] | None = None,
        data: bytes = b"",
        flow_len: int = 0,
        end_stream: bool = False,
        code: int = 0,
    ) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.headers = headers
        self.data = data
        self.flow_len = flow_len
        self.end_stream = end_stream
        self.code = code

    def __repr__(self) -> str:
        return (
            f"H2Event(kind={self.kind}, stream_id={self.stream_id}, headers={self.headers!r}, "
            f"data={self.data!r}, end_stream={self.end_stream}, code={self.code})"
        )


class _Stream:
    __slots__ = (
        "expected_length",
        "got_headers",
        "head",
        "id",
        "local_closed",
        "received",
        "recv_window",
        "remote_closed",
        "send_window",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.got_headers = False
        self.expected_length = -1
        self.received = 0
        self.head = False  # a HEAD request (client side): its response's length is not its body's


class H2Conn:
    """One end of an HTTP/2 connection: `client_side` opens odd streams and sends the
    preface; the server side accepts the peer's streams up to `max_concurrent_streams`."""

    def __init__(
        self,
        client_side: bool,
        *,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 65536,
        stream_window: int = w.DEFAULT_WINDOW,
        connection_window: int = w.DEFAULT_WINDOW,
    ) -> None:
        self.client_side = client_side
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        # What the peer told us (defaults until its SETTINGS arrive).
        self.remote_max_concurrent_streams = _NO_LIMIT
        self.max_outbound_frame_size = w.DEFAULT_FRAME_SIZE
        self._remote_initial_window = w.DEFAULT_WINDOW
        self._send_window = w.DEFAULT_WINDOW
        self._recv_window = w.DEFAULT_WINDOW
        self._unacked = 0
        self.encoder = LeanEncoder()
        # The decoder's own bound is generous: between our advertised limit and it, the
        # owner answers 431 instead of the connection dying.
        self.decoder = LeanDecoder(max(65536, 2 * max_header_list_size))
        self.streams: dict[int, _Stream] = {}
        self._resets: set[int] = set()
        self._reset_order: deque[int] = deque()
        self._next_stream_id = 1
        self._highest_remote = 0
        self._out: list[bytes] = []
        self._buffer = b""
        self._preface_pending = not client_side
        self._settings_pending = True  # the peer's first frame must be SETTINGS
        self._cont_stream = 0
        self._cont_flags = 0
        self._cont_block: list[bytes] = []
        self.terminated = False

    # ------------------------------------------------------------------ setup and output
    def initiate(self) -> None:
        values = [
            (w.MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (w.INITIAL_WINDOW_SIZE, self.stream_window),
        ]
        if self.client_side:
            self._out.append(w.PREFACE)
            values.insert(0, (w.ENABLE_PUSH, 0))
        else:
            values.insert(0, (w.MAX_CONCURRENT_STREAMS, self.max_concurrent_streams))
        self._out.append(w.settings_frame(values))
        if self.connection_window > w.DEFAULT_WINDOW:
            increment = self.connection_window - w.DEFAULT_WINDOW
            self._out.append(w.window_update_frame(0, increment))
            self._recv_window += increment

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # ------------------------------------------------------------------ sending
    def next_stream_id(self) -> int:
        return self._next_stream_id

    def send_headers(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if not self.client_side or stream_id != self._next_stream_id:
                raise ConnectionResetError(f"stream {stream_id} is not open")
            self._next_stream_id += 2
            stream = _Stream(stream_id, self._remote_initial_window, self.stream_window)
            stream.head = (b":method", b"HEAD") in fields[:4]
            self.streams[stream_id] = stream
        elif stream.local_closed:
            raise ConnectionResetError(f"stream {stream_id} is closed")
        block = self.encoder.encode(fields)
        flags = w.END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        out = self._out
        if len(block) <= limit:
            out.append(w.frame_header(len(block), w.HEADERS, flags | w.END_HEADERS, stream_id))
            out.append(block)
        else:
            first = block[:limit]
            out.append(w.frame_header(len(first), w.HEADERS, flags, stream_id))
            out.append(first)
            pos = limit
            while pos < len(block):
                part = block[pos : pos + limit]
                pos += len(part)
                last = w.END_HEADERS if pos >= len(block) else 0
                out.append(w.frame_header(len(part), w.CONTINUATION, last, stream_id))
                out.append(part)
        if end_stream:
            self._end_local(stream)

    def local_window(self, stream_id: int) -> int:
        """How many DATA bytes the peer lets us send on the stream now."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise ConnectionResetError(f"stream {stream_id} is closed")
        return min(self._send_window, stream.send_window)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame: within local_window() and max_outbound_frame_size."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise ConnectionResetError(f"stream {stream_id} is closed")
        n = len(data)
        self._send_window -= n
        stream.send_window -= n
        flags = w.END_STREAM if end_stream else 0
        self._out.append(w.frame_header(n, w.DATA, flags, stream_id))
        if n:
            self._out.append(data)
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM, unless the stream is already closed (then nothing)."""
        if self.streams.pop(stream_id, None) is None:
            return
        self._out.append(w.rst_stream_frame(stream_id, code))
        self._remember_reset(stream_id)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The owner consumed `n` flow-controlled bytes of the stream: once half a window is
        consumed, the peer gets it back (WINDOW_UPDATE), for the stream and the connection."""
        if n <= 0 or self.terminated:
            return
        self._unacked += n
        if self._unacked * 2 >= self.connection_window:
            self._out.append(w.window_update_frame(0, self._unacked))
            self._recv_window += self._unacked
            self._unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += n
        if stream.unacked * 2 >= self.stream_window:
            self._out.append(w.window_update_frame(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def send_goaway(self, last_stream_id: int, code: int = w.NO_ERROR) -> None:
        self._out.append(w.goaway_frame(last_stream_id, code))

    @property
    def last_remote_stream(self) -> int:
        return self._highest_remote

    # ------------------------------------------------------------------ receiving
    def receive(self, data: bytes) -> list[H2Event]:
        """Events for the frames complete in what arrived so far. Raises
        ConnectionProtocolError (with a GOAWAY queued) when the peer broke the protocol."""
        if self.terminated:
            return []
        buf = self._buffer + data if self._buffer else data
        events: list[H2Event] = []
        pos = 0
        if self._preface_pending:
            if len(buf) < 24:
                if w.PREFACE[: len(buf)] != buf:
                    self._fail(w.PROTOCOL_ERROR, "invalid connection preface")
                self._buffer = buf
                return events
            if buf[:24] != w.PREFACE:
                self._fail(w.PROTOCOL_ERROR, "invalid connection preface")
            self._preface_pending = False
            pos = 24
        end = len(buf)
        limit = w.DEFAULT_FRAME_SIZE
        while end - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > limit:
                self._fail(w.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos - 9 < length:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            sid = (
                ((buf[pos + 5] & 0x7F) << 24)
                | (buf[pos + 6] << 16)
                | (buf[pos + 7] << 8)
                | buf[pos + 8]
            )
            start = pos + 9
            pos = start + length
            payload = buf[start:pos]
            if self._settings_pending:
                if kind != w.SETTINGS or flags & w.ACK:
                    self._fail(w.PROTOCOL_ERROR, "the first frame is not SETTINGS")
                self._settings_pending = False
            if self._cont_stream:
                if kind != w.CONTINUATION or sid != self._cont_stream:
                    self._fail(w.PROTOCOL_ERROR, "a header block interrupted")
                self._continuation(flags, payload, events)
            elif kind == w.DATA:
                self._data(sid, flags, payload, events)
            elif kind == w.HEADERS:
                self._headers(sid, flags, payload, events)
            elif kind == w.SETTINGS:
                self._settings(sid, flags, payload, events)
            elif kind == w.WINDOW_UPDATE:
                self._window_update(sid, payload, events)
            elif kind == w.RST_STREAM:
                self._rst_stream(sid, payload, events)
            elif kind == w.PING:
                if sid:
                    self._fail(w.PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    self._fail(w.FRAME_SIZE_ERROR, "PING of a size other than 8")
                if not flags & w.ACK:
                    self._out.append(w.ping_ack_frame(payload))
            elif kind == w.GOAWAY:
                if sid or length < 8:
                    self._fail(w.PROTOCOL_ERROR, "malformed GOAWAY")
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                events.append(H2Event(GOAWAY, last, code=code))
            elif kind == w.PRIORITY:
                if not sid:
                    self._fail(w.PROTOCOL_ERROR, "PRIORITY on stream 0")
                if length != 5:
                    self._stream_error(sid, w.FRAME_SIZE_ERROR, events)
            elif kind == w.PUSH_PROMISE:
                self._fail(w.PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")
            elif kind == w.CONTINUATION:
                self._fail(w.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            # other types are extensions: ignored (§5.5)
        self._buffer = buf[pos:] if pos < end else b""
        return events

    def _fail(self, code: int, message: str) -> None:
        self.terminated = True
        self._out.append(w.goaway_frame(self._highest_remote, code))
        raise ConnectionProtocolError(code, message)

    def _idle(self, sid: int) -> bool:
        """Never opened: neither a stream we know nor one below the highest the peer used."""
        if self.client_side:
            return sid % 2 == 0 or sid >= self._next_stream_id
        return sid % 2 == 0 or sid > self._highest_remote

    def _remember_reset(self, sid: int) -> None:
        self._resets.add(sid)
        order = self._reset_order
        order.append(sid)
        if len(order) > _RESET_MEMORY:
            self._resets.discard(order.popleft())

    def _end_local(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream.id]

    def _end_remote(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream.id]

    def _stream_error(self, sid: int, code: int, events: list[H2Event]) -> None:
        stream = self.streams.pop(sid, None)
        self._out.append(w.rst_stream_frame(sid, code))
        self._remember_reset(sid)
        if stream is not None:
            events.append(H2Event(LOCAL_RESET, sid, code=code))

    def _strip_padding(self, flags: int, payload: bytes) -> bytes:
        if flags & w.PADDED:
            if not payload:
                self._fail(w.FRAME_SIZE_ERROR, "padded frame without a pad length")
            pad = payload[0]
            if pad >= len(payload):
                self._fail(w.PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _data(self, sid: int, flags: int, payload: bytes, events: list[H2Event]) -> None:
        if not sid:
            self._fail(w.PROTOCOL_ERROR, "DATA on stream 0")
        flow_len = len(payload)
        data = self._strip_padding(flags, payload)
        self._recv_window -= flow_len
        if self._recv_window < 0:
            self._fail(w.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            # Nobody reads it: the connection window is given back at once.
            self.acknowledge(sid, flow_len)
            if stream is not None or sid not in self._resets:
                self._stream_error(sid, w.STREAM_CLOSED, events)
            return
        stream.recv_window -= flow_len
        if stream.recv_window < 0:
            self.acknowledge(sid, flow_len)
            self._stream_error(sid, w.FLOW_CONTROL_ERROR, events)
            return
        stream.received += len(data)
        end = bool(flags & w.END_STREAM)
        expected = stream.expected_length
        if expected >= 0 and (stream.received > expected or (end and stream.received != expected)):
            self.acknowledge(sid, flow_len)
            self._stream_error(sid, w.PROTOCOL_ERROR, events)
            return
        if end:
            self._end_remote(stream)
        events.append(H2Event(DATA, sid, data=data, flow_len=flow_len, end_stream=end))

    def _headers(self, sid: int, flags: int, payload: bytes, events: list[H2Event]) -> None:
        if not sid:
            self._fail(w.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._strip_padding(flags, payload)
        if flags & w.PRIORITY_FLAG:
            if len(block) < 5:
                self._fail(w.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if flags & w.END_HEADERS:
            self._header_block(sid, flags, block, events)
        else:
            self._cont_stream = sid
            self._cont_flags = flags
            self._cont_block = [block]

    def _continuation(self, flags: int, payload: bytes, events: list[H2Event]) -> None:
        parts = self._cont_block
        parts.append(payload)
        if len(parts) > MAX_CONTINUATIONS:
            self._fail(w.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if flags & w.END_HEADERS:
            sid = self._cont_stream
            self._cont_stream = 0
            self._cont_block = []
            self._header_block(sid, self._cont_flags, b"".join(parts), events)

    def _header_block(self, sid: int, flags: int, block: bytes, events: list[H2Event]) -> None:
        # Decoded first, whatever becomes of the stream: the HPACK table must stay in step.
        try:
            fields = self.decoder.decode(block)
        except HpackError as exc:
            # (One handler: mypyc mistypes a name bound by two `except ... as` clauses.)
            oversized = isinstance(exc, OversizedHeaderList)
            self._fail(w.ENHANCE_YOUR_CALM if oversized else w.COMPRESSION_ERROR, str(exc))
            return
        end = bool(flags & w.END_STREAM)
        stream = self.streams.get(sid)
        if stream is None:
            if self.client_side or sid <= self._highest_remote or sid % 2 == 0:
                if self._idle(sid):
                    self._fail(w.PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")
                if sid in self._resets:
                    return  # in flight when we reset it (§5.4.2)
                self._fail(w.STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            self._highest_remote = sid
            if len(self.streams) >= self.max_concurrent_streams:
                self._out.append(w.rst_stream_frame(sid, w.REFUSED_STREAM))
                self._remember_reset(sid)
                return
            stream = _Stream(sid, self._remote_initial_window, self.stream_window)
            self.streams[sid] = stream
        elif stream.remote_closed:
            self._fail(w.STREAM_CLOSED, f"HEADERS on half-closed stream {sid}")
        if stream.got_headers:
            if not end:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
                return
            if w.check_fields(fields, w.TRAILERS):
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
                return
            expected = stream.expected_length
            if expected >= 0 and stream.received != expected:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
                return
            self._end_remote(stream)
            events.append(H2Event(TRAILERS, sid, headers=fields, end_stream=True))
            return
        if w.check_fields(fields, w.RESPONSE if self.client_side else w.REQUEST):
            self._stream_error(sid, w.PROTOCOL_ERROR, events)
            return
        if self.client_side and fields[0][1][:1] == b"1":
            # Informational (1xx): the final response follows.
            if end:
                self._stream_error(sid, w.PROTOCOL_ERROR, events)
            return
        # A response to HEAD, and 204/304 responses, state a length without a body.
        no_body = self.client_side and (stream.head or fields[0][1] in (b"204", b"304"))
        for name, value in fields:
            if name == b"content-length" and not no_body:
                if not value.isdigit() or (
                    stream.expected_length >= 0 and int(value) != stream.expected_length
                ):
                    self._stream_error(sid, w.PROTOCOL_ERROR, events)
                    return
                stream.expected_length = int(value)
        if end and stream.expected_length > 0:
            # A request that announces a body and has none (RFC 9113 §8.1.1).
            self._stream_error(sid, w.PROTOCOL_ERROR, events)
            return
        stream.got_headers = True
        if end:
            self._end_remote(stream)
        events.append(H2Event(HEADERS, sid, headers=fields, end_stream=end))

    def _settings(self, sid: int, flags: int, payload: bytes, events: list[H2Event]) -> None:
        if sid:
            self._fail(w.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & w.ACK:
            if payload:
                self._fail(w.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(w.FRAME_SIZE_ERROR, "SETTINGS of a size not a multiple of 6")
        for i in range(0, len(payload), 6):
            code = (payload[i] << 8) | payload[i + 1]
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if code == w.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif code == w.ENABLE_PUSH:
                if value > 1:
                    self._fail(w.PROTOCOL_ERROR, "ENABLE_PUSH other than 0 or 1")
            elif code == w.MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
            elif code == w.INITIAL_WINDOW_SIZE:
                if value > w.MAX_WINDOW:
                    self._fail(w.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._remote_initial_window
                self._remote_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > w.MAX_WINDOW:
                        self._fail(w.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif code == w.MAX_FRAME_SIZE:
                if not w.DEFAULT_FRAME_SIZE <= value <= w.MAX_FRAME_SIZE_LIMIT:
                    self._fail(w.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
        self._out.append(w.SETTINGS_ACK)
        events.append(H2Event(SETTINGS, 0))

    def _window_update(self, sid: int, payload: bytes, events: list[H2Event]) -> None:
        if len(payload) != 4:
            self._fail(w.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a size other than 4")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                self._fail(w.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > w.MAX_WINDOW:
                self._fail(w.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            events.append(H2Event(WINDOW_UPDATE, 0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                self._fail(w.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if not increment:
            self._stream_error(sid, w.PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > w.MAX_WINDOW:
            self._stream_error(sid, w.FLOW_CONTROL_ERROR, events)
            return
        events.append(H2Event(WINDOW_UPDATE, sid))

    def _rst_stream(self, sid: int, payload: bytes, events: list[H2Event]) -> None:
        if len(payload) != 4:
            self._fail(w.FRAME_SIZE_ERROR, "RST_STREAM of a size other than 4")
        if not sid or self._idle(sid):
            self._fail(w.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        if self.streams.pop(sid, None) is None:
            return
        self._remember_reset(sid)
        events.append(H2Event(RESET, sid, code=int.from_bytes(payload, "big")))
