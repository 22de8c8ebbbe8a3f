"""A bounded LRU of the last good (2xx) GET responses of one upstream, for fallback replies
while the upstream can't answer (opossum's cache-as-fallback). Bounded by entries, bytes and
age; pure, time passed in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float


class LastGoodCache:
    __slots__ = ("_bytes", "_entries", "max_age", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int, max_age: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def fits(self, length: int) -> bool:
        """Whether a body of `length` bytes may be stored (evicting older entries if needed)."""
        return length <= self.max_bytes

    def get(self, key: str, now: float) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.stored_at > self.max_age:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CachedResponse) -> None:
        size = len(entry.body)
        if not self.fits(size):
            return
        if key in self._entries:
            self._drop(key)
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            self._drop(oldest)
        self._entries[key] = entry
        self._bytes += size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.body)
