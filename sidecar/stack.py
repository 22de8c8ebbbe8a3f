"""The layer seam: a handler is `async (Request) -> Response`; a layer wraps a handler.

As in linkerd2-proxy's stack and aiohttp's middleware chain, each concern is one small layer and
`compose` folds a list of them around a terminal handler, outermost first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from sidecar.http import Request, Response

Handler = Callable[[Request], Awaitable[Response]]


class Layer(Protocol):
    def wrap(self, inner: Handler) -> Handler:
        """Return a handler that does this layer's job around `inner`.
        Called once when a stack is built, never per request."""
        ...


def compose(layers: Sequence[Layer], terminal: Handler) -> Handler:
    """`compose([a, b, c], t)` handles a request as a(b(c(t)))."""
    handler = terminal
    for layer in reversed(layers):
        handler = layer.wrap(handler)
    return handler
