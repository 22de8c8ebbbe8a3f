"""Active health checks for endpoints from static or file discovery (Consul runs its own).

Per upstream with `health_check` set, a checker sends `GET <path>` to every endpoint of the
cluster each `interval` (shortened by up to 15 % at random, so upstreams and sidecars started
together drift apart; never lengthened, so the detection bounds below hold), on a connection
of its own with `Connection: close`, over TLS when requests to that endpoint go over TLS (the
upstream's `tls` policy, or an endpoint written `https://`), with the same trust, server
name and client certificate. An upstream with `protocol: h2` or `h2c` is probed as its
requests go: over HTTP/2 (prior knowledge, or TLS with ALPN `h2`), one GET on a connection of
its own, its `:status` read (`auto` may get either, and keeps HTTP/1.1 probes). A 2xx
answer within `timeout` passes; anything else (other status, refused, reset, timeout, a
certificate not accepted) fails. Probes only ever go to the
endpoints discovery lists for that upstream, and at most `max_concurrent` run at once across
all upstreams.

Verdicts are a small pure state machine per endpoint (`ActiveHealthTracker`): UNKNOWN until the
first verdict (and still picked, so turning checks on never takes traffic away by itself);
`unhealthy_threshold` failures in a row make it UNHEALTHY, `healthy_threshold` passes in a row
HEALTHY again (a first pass from UNKNOWN is enough). An UNHEALTHY endpoint is not picked,
whatever outlier detection says, and an ejected one is not picked whatever the checks say.
Each change is logged once at info (rate-limited) and every probe is counted in
`sidecar_health_checks_total{result}`: success | status | timeout | connect_failure | reset."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from sidecar.balance.cluster import ActiveState, Cluster, EndpointState
from sidecar.clock import Clock
from sidecar.config import HealthCheckConfig
from sidecar.errors import SidecarError, UpstreamConnectFailure
from sidecar.http import EMPTY_BODY, Headers, Request
from sidecar.resilience.log_limit import LogLimiter
from sidecar.transport.tls import TlsOrigination, endpoint_tls
from sidecar.vocab.endpoint import Endpoint

log = logging.getLogger(__name__)

CHECKED_SOURCES = frozenset({"static", "file"})
MAX_CONCURRENT_PROBES = 16
JITTER = 0.15
SUCCESS = "success"


class Probe(Protocol):
    """One check of `endpoint`: (result, detail); result is one of the metric's label
    values, detail is for the log."""

    def __call__(
        self,
        endpoint: Endpoint,
        host: str,
        path: str,
        timeout: float,
        tls: TlsOrigination | None = None,
    ) -> Awaitable[tuple[str, str]]: ...


# The upstream's TLS origination (its `tls` policy), None when it has none.
TlsFor = Callable[[str], TlsOrigination | None]


def _no_tls(upstream: str) -> TlsOrigination | None:
    return None


# The upstream's `protocol` policy (http1 | h2 | h2c | auto).
ProtocolFor = Callable[[str], str]
HTTP2_PROTOCOLS = frozenset({"h2", "h2c"})


def _http1(upstream: str) -> str:
    return "http1"


class HealthObserver(Protocol):
    def health_check(self, upstream: str, result: str) -> None: ...


class ActiveHealthTracker:
    """Consecutive-result thresholds of one endpoint. Pure: no I/O, no time."""

    __slots__ = ("_fails", "_healthy_threshold", "_passes", "_unhealthy_threshold", "state")

    def __init__(self, unhealthy_threshold: int, healthy_threshold: int) -> None:
        self._unhealthy_threshold = unhealthy_threshold
        self._healthy_threshold = healthy_threshold
        self._passes = 0
        self._fails = 0
        self.state = ActiveState.UNKNOWN

    def record(self, passed: bool) -> ActiveState | None:
        """One probe's verdict; returns the new state when it changed."""
        if passed:
            self._passes += 1
            self._fails = 0
            if self.state is ActiveState.HEALTHY:
                return None
            if self.state is ActiveState.UNKNOWN or self._passes >= self._healthy_threshold:
                self.state = ActiveState.HEALTHY
                return self.state
            return None
        self._fails += 1
        self._passes = 0
        if self.state is not ActiveState.UNHEALTHY and self._fails >= self._unhealthy_threshold:
            self.state = ActiveState.UNHEALTHY
            return self.state
        return None


async def http_probe(
    endpoint: Endpoint,
    host: str,
    path: str,
    timeout: float,
    tls: TlsOrigination | None = None,
) -> tuple[str, str]:
    """One `GET path` on a fresh connection (TLS with `tls`); only the status line is read."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                if tls is None:
                    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                else:
                    reader, writer = await asyncio.open_connection(
                        endpoint.host,
                        endpoint.port,
                        ssl=tls.context,
                        server_hostname=tls.server_hostname(endpoint, host),
                    )
            except ssl.SSLCertVerificationError as exc:
                return "connect_failure", f"certificate not accepted: {exc.verify_message}"
            except ssl.SSLError as exc:
                return "connect_failure", f"TLS handshake failed: {exc.reason or exc}"
            except OSError as exc:
                return "connect_failure", exc.strerror or type(exc).__name__
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sidecar-health-check\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            line = await reader.readline()
    except TimeoutError:
        return "timeout", f"no answer within {timeout * 1000:.0f} ms"
    except OSError as exc:
        return "reset", exc.strerror or type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "reset", "no HTTP status line" if not line else f"bad status line {line[:40]!r}"
    return _verdict(int(parts[1]))


async def h2_probe(
    endpoint: Endpoint,
    host: str,
    path: str,
    timeout: float,
    tls: TlsOrigination | None = None,
) -> tuple[str, str]:
    """One `GET path` over HTTP/2 on a connection of its own, opened as the data path opens
    one to this endpoint (prior knowledge, or TLS offering only `h2` with `tls`); only the
    `:status` is read."""
    # The HTTP/2 stack is imported only when an upstream that speaks it is checked.
    from sidecar.transport.h2_client import H2Client

    client = H2Client()
    request = Request(
        "GET",
        path,
        Headers.from_lower([("host", host), ("user-agent", "sidecar-health-check")]),
        EMPTY_BODY,
        upstream=host,
        authority=host,
        endpoint=endpoint,
    )
    try:
        async with asyncio.timeout(timeout):
            response = await client.send(request, timeout, fallback=False, tls=tls)
    except TimeoutError:
        return "timeout", f"no answer within {timeout * 1000:.0f} ms"
    except UpstreamConnectFailure as exc:  # refused, TLS, ALPN other than h2, stream refused
        return "connect_failure", exc.message
    except SidecarError as exc:  # the connection or stream reset, not HTTP/2 at all
        return "reset", exc.message
    finally:
        client.close()  # the probe's own connection: the body is not read
    return _verdict(response.status)


def _verdict(status: int) -> tuple[str, str]:
    """A probe's result from the status it got: 2xx passes."""
    return (SUCCESS, "") if 200 <= status <= 299 else ("status", f"status {status}")


class HealthChecker:
    """The checks of one upstream: a task that probes, then sleeps, until stopped."""

    __slots__ = (
        "_clock",
        "_cluster",
        "_limit",
        "_log",
        "_observer",
        "_rng",
        "_task",
        "_trackers",
        "config",
        "probe",
        "tls",
    )

    def __init__(
        self,
        cluster: Cluster,
        config: HealthCheckConfig,
        clock: Clock,
        limit: asyncio.Semaphore,
        observer: HealthObserver | None = None,
        probe: Probe = http_probe,
        rng: random.Random | None = None,
        tls: TlsOrigination | str | None = None,
    ) -> None:
        self._cluster = cluster
        self.tls = tls
        self.config = config
        self._clock = clock
        self._limit = limit
        self._observer = observer
        self.probe = probe  # HTTP/1.1 or HTTP/2, as the upstream's requests go
        self._rng = rng or random.Random()
        self._log = LogLimiter()
        self._trackers: dict[EndpointState, ActiveHealthTracker] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"health-check {self._cluster.name}")

    def cancel(self) -> None:
        """Stop without waiting (from synchronous code: discovery updates, reload)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def next_delay(self) -> float:
        return self.config.interval * (1.0 - JITTER * self._rng.random())

    async def _run(self) -> None:
        # A random first delay too: sidecars and upstreams started together don't probe in step.
        await asyncio.sleep(self.next_delay() * self._rng.random())
        while True:
            await self.check_once()
            await asyncio.sleep(self.next_delay())

    async def check_once(self) -> None:
        """Probe every endpoint of the cluster once (concurrently, within the shared limit)."""
        cluster = self._cluster
        states = cluster.states if cluster.source in CHECKED_SOURCES else []
        # Endpoints that left the cluster take their history with them.
        for gone in self._trackers.keys() - set(states):
            del self._trackers[gone]
        await asyncio.gather(*(self._check(s) for s in states))

    async def _check(self, state: EndpointState) -> None:
        cfg = self.config
        endpoint, tls = state.endpoint, self.tls
        if isinstance(tls, str):  # the TLS policy can't be built: requests would fail too
            result, detail = "connect_failure", tls
        else:
            async with self._limit:
                result, detail = await self.probe(
                    endpoint, self._cluster.name, cfg.path, cfg.timeout, endpoint_tls(tls, endpoint)
                )
        if self._observer is not None:
            self._observer.health_check(self._cluster.name, result)
        tracker = self._trackers.get(state)
        if tracker is None:
            tracker = self._trackers[state] = ActiveHealthTracker(
                cfg.unhealthy_threshold, cfg.healthy_threshold
            )
        changed = tracker.record(result == SUCCESS)
        if changed is None:
            return
        was = state.active
        self._cluster.set_active(state, changed)
        if changed is ActiveState.UNHEALTHY:
            self._log.info(
                log,
                self._clock.monotonic(),
                "upstream %s: endpoint %s failed %d health checks in a row (last: %s): "
                "out of rotation",
                self._cluster.name,
                state.endpoint.address,
                cfg.unhealthy_threshold,
                detail or result,
            )
        elif was is ActiveState.UNHEALTHY:
            self._log.info(
                log,
                self._clock.monotonic(),
                "upstream %s: endpoint %s passed %d health checks in a row: back in rotation",
                self._cluster.name,
                state.endpoint.address,
                cfg.healthy_threshold,
            )


class HealthChecks:
    """The sidecar's active checkers, one per upstream that asks for checks and whose
    endpoints come from static or file discovery. `update` is called with each cluster
    snapshot and after a reload; it creates, replaces or drops that upstream's checker."""

    __slots__ = (
        "_checkers",
        "_clock",
        "_h2_probe",
        "_limit",
        "_observer",
        "_probe",
        "_protocol_for",
        "_running",
        "_tls_for",
    )

    def __init__(
        self,
        clock: Clock,
        observer: HealthObserver | None = None,
        max_concurrent: int = MAX_CONCURRENT_PROBES,
        probe: Probe = http_probe,
        tls_for: TlsFor = _no_tls,
        protocol_for: ProtocolFor = _http1,
        h2_probe: Probe = h2_probe,
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._probe = probe
        self._h2_probe = h2_probe
        self._tls_for = tls_for
        self._protocol_for = protocol_for
        # Shared by every checker (created here, bound to the loop on first use).
        self._limit = asyncio.Semaphore(max_concurrent)
        self._checkers: dict[str, HealthChecker] = {}
        self._running = False

    def __contains__(self, upstream: str) -> bool:
        return upstream in self._checkers

    def update(self, cluster: Cluster, config: HealthCheckConfig | None) -> None:
        wanted = config if cluster.source in CHECKED_SOURCES else None
        current = self._checkers.get(cluster.name)
        tls: TlsOrigination | str | None = None
        if wanted is not None:
            try:
                tls = self._tls_for(cluster.name)
            except ValueError as exc:  # TlsSetupError: files that can't be used
                tls = f"TLS policy: {exc}"
        probe = (
            self._h2_probe if self._protocol_for(cluster.name) in HTTP2_PROTOCOLS else self._probe
        )
        if current is not None and current.config == wanted:
            current.tls = tls  # after a reload: new certificates, same verdicts
            current.probe = probe
            return
        if current is not None:
            del self._checkers[cluster.name]
            current.cancel()
            for state in cluster.states:  # no checks any more: no verdict either
                cluster.set_active(state, ActiveState.UNKNOWN)
        if wanted is None:
            return
        checker = HealthChecker(
            cluster,
            wanted,
            self._clock,
            self._limit,
            self._observer,
            probe,
            tls=tls,
        )
        self._checkers[cluster.name] = checker
        if self._running:
            checker.start()

    def start(self) -> None:
        self._running = True
        for checker in self._checkers.values():
            checker.start()

    async def stop(self) -> None:
        self._running = False
        checkers, self._checkers = list(self._checkers.values()), {}
        for checker in checkers:
            await checker.stop()
