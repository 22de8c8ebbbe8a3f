"""A TCP address that never answers a connect: a listener whose accept queue is full, so the
kernel drops further SYNs and a connect to it hangs until the caller's timeout (what a
firewalled or dead host looks like), on loopback, on a chosen address and port."""

from __future__ import annotations

import socket
from types import TracebackType


class Blackhole:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def __enter__(self) -> Blackhole:
        self._listener.bind((self.host, self.port))
        self._listener.listen(0)  # Linux queues backlog + 1: the filler takes the one place
        self._filler.settimeout(2)
        self._filler.connect((self.host, self.port))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._filler.close()
        self._listener.close()
