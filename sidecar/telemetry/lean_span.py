"""A recording span for the sampled path, lighter than the SDK's.

The SDK's span takes a lock on every call, cleans every attribute value through
`BoundedAttributes`, and its `Tracer.start_span` asks the sampler again and records self-metrics:
about 90 µs for the server and client span of one proxied request, ~150 µs with the rest of
the sampled path, all on the event loop. At 1 % sampling that made every hundredth request the
slowest one, i.e. the p99 latency. A `LeanSpan` is only ever used from the event loop, for
a decision the `SpanStarter` already took, with attributes the layers set from known types; on
`end()` it becomes the SDK's `ReadableSpan` and goes to the same span processors (the span
buffer for /debug/traces, the batching OTLP exporter), so what leaves the process is unchanged.
The SDK's own span stays the path for anything else (a sampler we don't know)."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace import Span as ApiSpan
from opentelemetry.util import types

log = logging.getLogger(__name__)

# The SDK's default span limits.
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
_UNSET = Status(StatusCode.UNSET)
_PRIMITIVE = (str, bool, int, float)


class LeanSpan(ApiSpan):
    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_processor",
        "_resource",
        "_scope",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        processor: SpanProcessor,
        resource: Resource,
        scope: InstrumentationScope | None,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._processor = processor
        self._resource = resource
        self._scope = scope
        self._attributes: dict[str, types.AttributeValue] = {}
        self._events: list[Event] = []
        self._status = _UNSET
        self._end_time: int | None = None
        self._start_time = time.time_ns()

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None:
            return
        attributes = self._attributes
        if key not in attributes and len(attributes) >= MAX_ATTRIBUTES:
            return
        if isinstance(value, _PRIMITIVE):
            attributes[key] = value
        elif isinstance(value, Sequence) and all(isinstance(v, _PRIMITIVE) for v in value):
            attributes[key] = tuple(value)  # the SDK keeps sequences as tuples, too

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self._end_time is not None or len(self._events) >= MAX_EVENTS:
            return
        self._events.append(
            Event(name, dict(attributes or {}), timestamp if timestamp else time.time_ns())
        )

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET never overwrites.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        module, qualname = cls.__module__, cls.__qualname__
        kind = f"{module}.{qualname}" if module and module != "builtins" else qualname
        fields: dict[str, Any] = {
            "exception.type": kind,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.debug("span %s ended twice", self._name)
            return
        self._end_time = end = end_time if end_time is not None else time.time_ns()
        self._processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._resource,
                attributes=self._attributes,
                events=self._events,
                links=_NO_LINKS,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=end,
                instrumentation_scope=self._scope,
            )
        )

    def __repr__(self) -> str:
        return f"LeanSpan({self._name!r}, {self._context!r})"


_NO_LINKS: tuple[Link, ...] = ()
