"""What the HTTP/2 server and client share: window sizes, the header fields HTTP/2 forbids,
sending DATA within the peer's flow-control windows, and the rapid-reset limit."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import Frame, RstStreamFrame

from sidecar.transport.flow import WriteFlow
from sidecar.transport.hpack_lean import LeanDecoder, LeanEncoder

# The RFC's 65,535-byte default windows throttle a proxy (one RTT per 64 KiB): raise them.
# Memory stays bounded: at most one stream window per stream and one connection window per
# connection is ever buffered unread.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
DEFAULT_WINDOW = 65_535
# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2; `te` only as
# "trailers". Framing fields are recomputed from the body we send.
CONNECTION_SPECIFIC = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-length",
        "http2-settings",
    }
)


class WindowWaiters:
    """Streams waiting for the peer to open its flow-control window again."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[None]] = {}

    async def wait(self, stream_id: int) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = fut
        try:
            await fut
        finally:
            self._waiters.pop(stream_id, None)

    def wake(self, stream_id: int) -> None:
        fut = self._waiters.get(stream_id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def fail(self, stream_id: int, exc: BaseException) -> None:
        fut = self._waiters.get(stream_id)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def wake_all(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(None)


async def send_data(
    conn: h2.connection.H2Connection,
    stream_id: int,
    data: bytes,
    flush: Callable[[], None],
    waiters: WindowWaiters,
    flow: WriteFlow,
    end_stream: bool = False,
) -> None:
    """Send `data` on a stream, waiting whenever the peer's window is shut (backpressure from
    the receiver) or the socket's write buffer is full (backpressure from the network). With
    `end_stream` the last DATA frame ends the stream (no separate empty frame, which costs
    both ends a frame's worth of h2 work)."""
    if not data:
        if end_stream:
            conn.end_stream(stream_id)
            flush()
        return
    view = memoryview(data)
    while view:
        window = conn.local_flow_control_window(stream_id)
        if window <= 0:
            await waiters.wait(stream_id)
            continue
        n = min(window, conn.max_outbound_frame_size, len(view))
        conn.send_data(stream_id, view[:n].tobytes(), end_stream=end_stream and n == len(view))
        view = view[n:]
        flush()
        await flow.drain()


class ResetRate:
    """CVE-2023-44487 (rapid reset): streams the peer opened and reset before we answered
    them, counted per connection in a sliding window; over `limit` in `window` seconds the
    connection is told ENHANCE_YOUR_CALM and closed. A pure counter with an injected clock."""

    __slots__ = ("_clock", "_limit", "_times", "_window")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Count one reset; True when the connection went over the limit."""
        now = self._clock()
        times = self._times
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        return len(times) > self._limit


_OPEN = frozenset(
    {h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN}
)


class _GoawayTolerant(h2.connection.H2ConnectionStateMachine):
    """h2 closes its connection state machine on a received GOAWAY and then refuses the frames
    of the streams the peer still finishes (RFC 9113 §6.8: streams up to last_stream_id
    complete; nginx, for one, sends GOAWAY after 1000 requests with others in flight). Stay
    open instead; we stop opening streams on such a connection ourselves. The one reach into
    h2's internals; tests/unit/transport/test_h2_common.py pins it."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY and self.state in _OPEN:
            return []
        return super().process_input(input_)


class _Connection(h2.connection.H2Connection):
    """h2's connection minus one cost: h2 formats every received frame with repr() for a
    trace log line that its default logger then drops (5 % of a forwarded request's CPU).
    The same dispatch as h2 4.x's `_receive_frame`, without that line; pinned by
    tests/unit/transport/test_h2_contract.py."""

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        events: list[h2.events.Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: a stream error, answered with RST_STREAM; else re-raised
            # as the connection error it is.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


def new_connection(client_side: bool) -> h2.connection.H2Connection:
    """An h2 connection as both our sides use it: bytes headers, inbound validation, the lean
    HPACK encoder, and in-flight streams surviving the peer's GOAWAY.

    Outbound fields are not normalized or validated again by h2 (a fifth of the CPU of a
    forwarded request): what we send is built from fields that were parsed and validated on
    the way in (HTTP/1.1's parser or h2's inbound validation), with lower-case names, and
    both sides drop the connection-specific fields (CONNECTION_SPECIFIC) themselves."""
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = _Connection(config=config)
    conn.state_machine = _GoawayTolerant()
    conn.encoder = LeanEncoder()
    conn.decoder = LeanDecoder()
    conn.decoder.max_header_list_size = conn.DEFAULT_MAX_HEADER_LIST_SIZE
    return conn


def oversized_frame_pending(conn: h2.connection.H2Connection) -> bool:
    """Whether the peer has announced a frame larger than we allow. h2 checks a frame's
    length only once the whole frame has arrived, so a peer announcing 16 MiB would make us
    buffer 16 MiB first; looking at the pending frame header bounds it at our frame size.
    (h2 internals again: the frame buffer; pinned by tests/unit/transport/test_h2_common.py.)"""
    pending = conn.incoming_buffer._data
    if len(pending) < 9:
        return False
    return int.from_bytes(pending[:3], "big") > conn.max_inbound_frame_size
