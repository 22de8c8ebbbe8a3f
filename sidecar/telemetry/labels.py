"""Bounded metric label values: HTTP method, route and upstream name.

Every label value that comes from traffic goes through one of these, so no request can create
an unbounded number of series (the cardinality explosions users meet in other proxies)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

OTHER_METHOD = "_OTHER"
OTHER = "other"
UNKNOWN = "unknown"

# OTel HTTP semconv's known methods; anything else is `_OTHER`.
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


_PARAM_RE = re.compile(r"\{[^{}/]+\}")


@dataclass(slots=True)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    # Segments with parameters: `{id}` matches any segment, `{name}.json` a compiled pattern.
    patterns: list[tuple[re.Pattern[str] | None, _Node]] = field(default_factory=list)
    template: str | None = None


class RouteMatcher:
    """Maps a request path to the first configured template it fits (`/users/{id}`), else
    `other`. Templates are compiled once into a segment trie, so a match costs O(segments)
    however many templates are configured; literal segments win over parameters."""

    __slots__ = ("_root",)

    def __init__(self, templates: Iterable[str]) -> None:
        self._root = _Node()
        for template in templates:
            self._add(template)

    def _add(self, template: str) -> None:
        node = self._root
        for segment in template.strip("/").split("/"):
            if "{" not in segment:
                node = node.literal.setdefault(segment, _Node())
                continue
            pattern: re.Pattern[str] | None = None
            if not _PARAM_RE.fullmatch(segment):
                parts = _PARAM_RE.split(segment)
                pattern = re.compile("[^/]+".join(re.escape(p) for p in parts))
            for existing, child in node.patterns:
                if _same(existing, pattern):
                    node = child
                    break
            else:
                child = _Node()
                node.patterns.append((pattern, child))
                node = child
        if node.template is None:
            node.template = template

    def match(self, path: str) -> str:
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        found = _walk(self._root, path.strip("/").split("/"), 0)
        return found if found is not None else OTHER


def _same(a: re.Pattern[str] | None, b: re.Pattern[str] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.pattern == b.pattern


def _walk(node: _Node, segments: list[str], i: int) -> str | None:
    if i == len(segments):
        return node.template
    segment = segments[i]
    child = node.literal.get(segment)
    if child is not None:
        found = _walk(child, segments, i + 1)
        if found is not None:
            return found
    if not segment:
        return None
    for pattern, child in node.patterns:
        if pattern is None or pattern.fullmatch(segment):
            found = _walk(child, segments, i + 1)
            if found is not None:
                return found
    return None


class BoundedValues:
    """Admits the first `cap` distinct values of a label as themselves and maps every later
    newcomer to `other` (names come from discovery, which we do not control). With `admit`,
    a value it does not vouch for is `unknown` and takes no place (upstream names a client
    made up must not fill the label)."""

    __slots__ = ("_admit", "_cap", "_seen")

    def __init__(self, cap: int, admit: Callable[[str], bool] | None = None) -> None:
        self._cap = cap
        self._seen: set[str] = set()
        self._admit = admit

    def admit_only(self, admit: Callable[[str], bool] | None) -> None:
        self._admit = admit

    def get(self, value: str) -> str:
        if value in self._seen:
            return value
        admit = self._admit
        if admit is not None and not admit(value):
            return UNKNOWN
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen.add(value)
        return value
