"""Endpoints from a YAML file (`discovery.file.path`), re-read when it changes.

Same shape as `discovery.static`: a mapping of upstream name → ["host:port", ...]. The file is
polled (mtime + size + inode) rather than watched with inotify: portable, and works for
ConfigMap-style symlink swaps. A bad file is logged with its reason and the old endpoints stay;
names removed from the file are withdrawn from the Directory."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Publish
from sidecar.events import NullObserver, Observer
from sidecar.vocab.endpoint import Endpoint, parse_endpoint_address

log = logging.getLogger(__name__)

Withdraw = Callable[[str, str], None]  # (source, name), i.e. Directory.withdraw
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class EndpointFileError(ValueError):
    pass


def parse_endpoint_file(text: str) -> dict[str, tuple[Endpoint, ...]]:
    """Parse and validate the whole file; raises EndpointFileError naming the bad part."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EndpointFileError(f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EndpointFileError("expected a mapping of upstream name to a list of host:port")
    table: dict[str, tuple[Endpoint, ...]] = {}
    for name, addrs in data.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise EndpointFileError(f"invalid upstream name {name!r}")
        if not isinstance(addrs, list):
            raise EndpointFileError(f"{name}: expected a list of host:port")
        eps = []
        for addr in addrs:
            if not isinstance(addr, str):
                raise EndpointFileError(f"{name}: invalid address {addr!r}, expected host:port")
            try:
                eps.append(parse_endpoint_address(addr))
            except ValueError as exc:
                raise EndpointFileError(f"{name}: {exc}") from None
        table[name] = tuple(eps)
    return table


class FileResolver:
    source = "file"

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = 1.0,
        withdraw: Withdraw | None = None,
        observer: Observer | None = None,
    ) -> None:
        """`withdraw`: Directory.withdraw (set later with `use_withdraw` when the Directory is
        built after its resolvers)."""
        self.path = Path(path)
        self.interval = interval
        self._withdraw = withdraw
        self._table: dict[str, tuple[Endpoint, ...]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._loaded = False
        self._synced = asyncio.Event()
        self.last_error: str | None = None
        self._observer: Observer = observer or NullObserver()

    def use_withdraw(self, withdraw: Withdraw) -> None:
        self._withdraw = withdraw

    def static_names(self) -> frozenset[str]:
        return frozenset(self._table)

    def can_resolve(self, name: str) -> bool:
        return name in self._table

    def start_watch(self, name: str) -> None:
        pass

    def pending_sync(self) -> list[str]:
        """Why the file has not given endpoints yet, for /readyz (empty once it has)."""
        if self._loaded:
            return []
        return [f"endpoint file {self.last_error}" if self.last_error else f"file {self.path}"]

    async def wait_synced(self, within: float) -> bool:
        """Wait (bounded) until the file has been read successfully once."""
        try:
            await asyncio.wait_for(self._synced.wait(), within)
        except TimeoutError:
            return False
        return True

    def poll(self, publish: Publish) -> bool:
        """Re-read the file if it changed; True if a new table was applied."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._fail(f"cannot read {self.path}: {exc.strerror or exc}", stamp=None)
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            table = parse_endpoint_file(self.path.read_text())
        except (OSError, UnicodeDecodeError, EndpointFileError) as exc:
            self._fail(f"{self.path}: {exc}", stamp=stamp)
            return False
        self._stamp = stamp
        self._apply(table, publish)
        return True

    def _fail(self, reason: str, stamp: tuple[int, int, int] | None) -> None:
        if stamp is not None or reason != self.last_error:
            self._observer.discovery_error(self.source)
        if reason != self.last_error:
            kept = sum(len(v) for v in self._table.values())
            log.error(
                "endpoint file rejected, keeping %d endpoints from the last good version: %s",
                kept,
                reason,
            )
        self.last_error = reason
        self._stamp = stamp  # don't re-parse (and re-log) an unchanged bad file every second

    def _apply(self, table: dict[str, tuple[Endpoint, ...]], publish: Publish) -> None:
        if self.last_error is not None:
            log.info("endpoint file %s is valid again", self.path)
        self.last_error = None
        gone = [n for n in self._table if n not in table]
        changed = [n for n, eps in table.items() if self._table.get(n) != eps or not self._loaded]
        self._table = table
        self._loaded = True
        self._synced.set()
        now = time.time()
        for name in changed:
            publish(EndpointSet(name, table[name], self.source, now))
        for name in gone:
            if self._withdraw is not None:
                self._withdraw(self.source, name)
        if changed or gone:
            log.info(
                "endpoint file %s: %d upstreams (%d changed, %d removed)",
                self.path,
                len(table),
                len(changed),
                len(gone),
            )

    async def run(self, publish: Publish) -> None:
        while True:
            self.poll(publish)
            await asyncio.sleep(self.interval)
