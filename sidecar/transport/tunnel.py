"""Tunnels: after a protocol switch (a 101 to an Upgrade, a 200 to CONNECT) the sidecar
relays bytes both ways until either side closes.

A `Tunnel` takes over both transports (`set_protocol`), so the HTTP protocol objects see no
more bytes: the upstream side at the 101 (it is paused and buffered until the client side is
attached), the client side once the 101 head is written. Flow control is per direction: when
one side's write buffer passes its high-water mark, the other side stops being read. The
request timeouts ended at the 101; a tunnel only closes when idle for `idle_timeout`, when
either side closes (a half-close is passed on where the transport can), or when the sidecar
shuts down (`TunnelRegistry.close_all`).

The tunnel is also the `Body` of the 101 response, so it travels through the layer stack
like any response; telemetry subscribes with `on_close` to put its duration and bytes on the
request's span."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sidecar.errors import BadRequest

log = logging.getLogger(__name__)

# The request listed upgrade tokens the policy allows; these never are (HTTP/2 cleartext is
# spoken with prior knowledge, not switched to).
NEVER_TUNNELLED = frozenset({"h2c"})
# Request.upgrade of a CONNECT request (its answer is a 200, not a 101).
CONNECT_UPGRADE = "connect"


class TunnelState(enum.Enum):
    PENDING = "pending"  # the upstream switched; the client side is not attached yet
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class TunnelStats:
    upstream: str
    protocol: str
    seconds: float
    bytes_sent: int  # client → upstream
    bytes_received: int  # upstream → client


class TunnelObserver(Protocol):
    def tunnel_opened(self, upstream: str, protocol: str) -> None: ...

    def tunnel_bytes(self, upstream: str, direction: str, n: int) -> None:
        """`direction` is "sent" (client → upstream) or "received"."""

    def tunnel_closed(self, stats: TunnelStats) -> None: ...


class NullTunnelObserver:
    def tunnel_opened(self, upstream: str, protocol: str) -> None:
        pass

    def tunnel_bytes(self, upstream: str, direction: str, n: int) -> None:
        pass

    def tunnel_closed(self, stats: TunnelStats) -> None:
        pass


def upgrade_tokens(value: str) -> list[str]:
    """Protocol names of an Upgrade field value ("websocket", "foo/2" → "foo")."""
    return [t.strip().split("/", 1)[0].lower() for t in value.split(",") if t.strip()]


def protocol_label(value: str) -> str:
    tokens = upgrade_tokens(value)
    return tokens[0] if tokens else "unknown"


def wants_tunnel(value: str) -> bool:
    """Whether an Upgrade request is to be tunnelled at all. An h2c upgrade is ignored, as
    RFC 9110 §7.8 lets a server do: the request is answered over HTTP/1.1."""
    tokens = upgrade_tokens(value)
    return bool(tokens) and not any(t in NEVER_TUNNELLED for t in tokens)


def refused_upgrade(value: str, allowed: Iterable[str], upstream: str) -> BadRequest | None:
    """The error for an upgrade the upstream's policy does not allow, or None."""
    names = {a.split("/", 1)[0] for a in allowed}
    refused = [t for t in upgrade_tokens(value) if t not in names]
    if not refused:
        return None
    return BadRequest(
        f"upgrade to {', '.join(refused)!s} is not allowed for {upstream!r}: "
        f"list it in upstreams.{upstream}.upgrades",
        upstream=upstream,
    )


class _Leg(asyncio.Protocol):
    """The protocol of one of the tunnel's two transports."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, direction: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.direction = direction  # of the bytes this leg reads
        self.peer: _Leg | None = None
        self.bytes = 0
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.tunnel.relay(self, data)

    def eof_received(self) -> bool:
        return self.tunnel.eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.lost(self)

    def pause_writing(self) -> None:
        # Our peer's bytes are piling up in our write buffer: stop reading them.
        if self.peer is not None and not self.peer.lost:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.lost:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.resume_reading()


class _NoChunks:
    def __aiter__(self) -> _NoChunks:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class Tunnel:
    """Both sides of one switched connection. Built by the upstream client at the switch;
    `run` attaches the client side and returns when both sides are closed."""

    # The Body protocol: nothing to stream through the HTTP layers.
    length: int | None = 0
    replayable = False

    def __init__(
        self,
        upstream_transport: asyncio.Transport,
        *,
        upstream: str,
        protocol: str,
        header: str = "",
        early: bytes = b"",
    ) -> None:
        self.upstream = upstream
        self.protocol = protocol  # metric label: "websocket", "connect", ...
        self.header = header  # the upstream's Upgrade field value, sent on to the client
        self.idle_timeout = 3600.0
        self.state = TunnelState.PENDING
        self._loop = asyncio.get_running_loop()
        self._observer: TunnelObserver = NullTunnelObserver()
        self._up = _Leg(self, upstream_transport, "received")
        self._down: _Leg | None = None
        self._held: list[bytes] = [early] if early else []
        self._started = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._callbacks: list[Callable[[TunnelStats], None]] = []
        self.stats: TunnelStats | None = None
        self._closing = False
        upstream_transport.set_protocol(self._up)
        with contextlib.suppress(RuntimeError):
            upstream_transport.pause_reading()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _NoChunks()

    # ------------------------------------------------------------ lifecycle
    def on_close(self, callback: Callable[[TunnelStats], None]) -> None:
        """Call `callback` with the tunnel's numbers once it is closed (at once if it is)."""
        if self.stats is not None:
            callback(self.stats)
        else:
            self._callbacks.append(callback)

    async def run(
        self,
        client_transport: asyncio.Transport,
        head: bytes,
        early: bytes = b"",
        registry: TunnelRegistry | None = None,
    ) -> TunnelStats:
        """Write `head` (the 101, or 200 to a CONNECT) to the client, then relay until both
        sides are closed. `early`: bytes the client sent after its request head."""
        if self.state is not TunnelState.PENDING:
            raise RuntimeError(f"tunnel is {self.state.value}")
        down = _Leg(self, client_transport, "sent")
        self._down = down
        up = self._up
        down.peer, up.peer = up, down
        client_transport.set_protocol(down)
        self.state = TunnelState.OPEN
        self._started = self._last = self._loop.time()
        if registry is not None:
            self._observer = registry.observer
            registry.add(self)
        self._observer.tunnel_opened(self.upstream, self.protocol)
        held, self._held = b"".join(self._held), []
        client_transport.write(head + held)
        if held:
            self._count(up, len(held))
        if early and not up.lost:
            up.transport.write(early)
            self._count(down, len(early))
        if up.lost:
            # The upstream closed before the client side was attached: what it sent is
            # delivered, then the client side closes too.
            client_transport.close()
        else:
            if up.eof:
                self.eof(up)
            with contextlib.suppress(RuntimeError):
                up.transport.resume_reading()
                client_transport.resume_reading()
            self._timer = self._loop.call_later(self.idle_timeout, self._check_idle)
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            if registry is not None:
                registry.discard(self)
        assert self.stats is not None
        return self.stats

    def close(self) -> None:
        """Cut both sides now (idle timeout, shutdown, a client gone before the switch)."""
        self._closing = True
        for leg in (self._up, self._down):
            if leg is not None and not leg.lost:
                leg.transport.abort()
        if self._down is None and self._up.lost:
            self._finish()

    # The Body protocol's way to drop a body nobody will read.
    abort = close

    # ------------------------------------------------------------ relaying
    def hold(self, data: bytes) -> None:
        """Bytes the upstream sent right after its 101, before the client side attached."""
        if data:
            self._held.append(data)

    def relay(self, leg: _Leg, data: bytes) -> None:
        peer = leg.peer
        if peer is None:
            self._held.append(data)  # only the upstream side reads before the client attaches
            return
        if peer.lost:
            return
        peer.transport.write(data)
        self._count(leg, len(data))
        self._last = self._loop.time()

    def _count(self, leg: _Leg, n: int) -> None:
        leg.bytes += n
        self._observer.tunnel_bytes(self.upstream, leg.direction, n)

    def eof(self, leg: _Leg) -> bool:
        leg.eof = True
        peer = leg.peer
        if peer is None:
            return True  # passed on when the client side is attached
        if peer.lost or peer.eof:
            peer.transport.close()
            return False
        if peer.transport.can_write_eof():
            # A half-close: the other direction may still carry bytes.
            peer.transport.write_eof()
            return True
        peer.transport.close()
        return False

    def lost(self, leg: _Leg) -> None:
        leg.lost = True
        peer = leg.peer
        if peer is None:
            if self._closing:
                self._finish()
            return  # else `run` delivers what was held, then closes the client side
        if not peer.lost:
            peer.transport.close()  # flushes what is still buffered for that side
            return
        self._finish()

    def _check_idle(self) -> None:
        self._timer = None
        if self.state is not TunnelState.OPEN:
            return
        due = self._last + self.idle_timeout
        if self._loop.time() >= due - 0.001:
            log.info(
                "closing %s tunnel to %s: idle for %.0f s",
                self.protocol,
                self.upstream,
                self.idle_timeout,
            )
            self.close()
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    def _finish(self) -> None:
        if self.state is TunnelState.CLOSED:
            return
        opened = self.state is TunnelState.OPEN
        self.state = TunnelState.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        down = self._down
        stats = TunnelStats(
            upstream=self.upstream,
            protocol=self.protocol,
            seconds=self._loop.time() - self._started if opened else 0.0,
            bytes_sent=down.bytes if down is not None else 0,
            bytes_received=self._up.bytes,
        )
        self.stats = stats
        if opened:
            self._observer.tunnel_closed(stats)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(stats)
            except Exception:
                log.exception("tunnel close callback failed")
        if not self._done.done():
            self._done.set_result(None)


class TunnelRegistry:
    """The process's open tunnels, so shutdown can close them; and where their numbers go."""

    def __init__(self, observer: TunnelObserver | None = None) -> None:
        self.observer: TunnelObserver = observer or NullTunnelObserver()
        self._open: set[Tunnel] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, tunnel: Tunnel) -> None:
        self._open.add(tunnel)

    def discard(self, tunnel: Tunnel) -> None:
        self._open.discard(tunnel)

    def close_all(self) -> int:
        tunnels = list(self._open)
        for tunnel in tunnels:
            tunnel.close()
        return len(tunnels)
