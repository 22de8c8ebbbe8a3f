"""One trace as a tree under the analysed operation's span, made fit for timing analysis:
clock skew between services corrected, orphans counted, downstream hops marked.

A *hop* is a call that crosses into another service: a CLIENT span whose callee is another
service (our sidecars emit one per attempt, tagged `sidecar.upstream`), or — for apps
instrumented without client spans — a span whose service differs from its parent's. It is
named by the callee service and the callee's operation, so the same call is one hop whether
the trace came from our sidecars or from directly instrumented apps."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.diagnose.model import Span, Trace
from sidecar.diagnose.signals import is_error, is_timeout

MAX_SPANS_PER_TRACE = 5000

OperationMatch = Callable[[str], bool]


@dataclass(frozen=True, slots=True, order=True)
class HopKey:
    service: str
    operation: str

    @property
    def name(self) -> str:
        return f"{self.service} {self.operation}".strip()


@dataclass(eq=False, slots=True)
class Node:
    span: Span
    parent: Node | None
    start: int  # µs, skew-corrected, absolute
    end: int
    cp_start: int = 0  # the window the parent actually waited for this span
    cp_end: int = 0
    children: list[Node] = field(default_factory=list)
    hop: HopKey | None = None
    owner: Node | None = None  # nearest enclosing hop; None = the analysed operation itself
    raw_operation: str = ""  # client op, kept to name childless attempts like their siblings
    callee: Node | None = None  # a client hop's server span in the callee, when it arrived
    skewed: bool = False  # shifted for clock skew: its offsets to the parent are not measured

    @property
    def blocking(self) -> bool:
        return not self.span.follows_from


@dataclass(slots=True)
class TraceTree:
    trace_id: str
    root: Node
    nodes: list[Node]  # the root's subtree, parents before children
    orphans: int
    skew_adjusted: int
    truncated: bool

    @property
    def hops(self) -> list[Node]:
        return [n for n in self.nodes if n.hop is not None]

    @property
    def duration(self) -> int:
        return self.root.end - self.root.start


def operation_matcher(wanted: str) -> OperationMatch:
    """Exact name, a prefix at a path boundary ("GET /context" ~ "GET /context/{user_id}"),
    or a concrete path against a route template ("GET /context/42")."""
    wanted = wanted.strip()

    def match(op: str) -> bool:
        if op == wanted:
            return True
        if op.startswith(wanted) and op[len(wanted)] in "/ ?":
            return True
        return "{" in op and _template_regex(op).fullmatch(wanted) is not None

    return match


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


def find_root(trace: Trace, service: str, matches: OperationMatch) -> Span | None:
    """The outermost span of `service` whose operation matches; the earliest if several."""
    by_id = {s.span_id: s for s in trace.spans}
    candidates = [s for s in trace.spans if s.service == service and matches(s.operation)]
    outermost = []
    for span in candidates:
        parent, seen = by_id.get(span.parent_id or ""), 0
        while parent is not None and seen < len(by_id):
            if parent.service == service and matches(parent.operation):
                break
            parent, seen = by_id.get(parent.parent_id or ""), seen + 1
        else:
            outermost.append(span)
    pool = outermost or candidates
    return min(pool, key=lambda s: s.start_us) if pool else None


def build_tree(trace: Trace, root_span: Span) -> TraceTree:
    spans = trace.spans
    truncated = len(spans) > MAX_SPANS_PER_TRACE
    if truncated:  # keep the earliest spans: the root and the start of its work
        spans = tuple(sorted(spans, key=lambda s: s.start_us)[:MAX_SPANS_PER_TRACE])
        if root_span not in spans:
            spans = (root_span, *spans[:-1])
    ids = {s.span_id for s in spans}
    above = _ancestors(root_span, spans)  # their missing parents are outside what we analyse
    children: dict[str, list[Span]] = {}
    orphans = 0
    for s in spans:
        if s.parent_id is None:
            continue
        if s.parent_id in ids:
            children.setdefault(s.parent_id, []).append(s)
        elif s is not root_span and s.span_id not in above:
            orphans += 1

    root = Node(root_span, None, root_span.start_us, root_span.end_us)
    root.cp_start, root.cp_end = root.start, root.end
    nodes, skewed = [root], 0
    stack: list[tuple[Node, int]] = [(root, 0)]  # (node, clock shift applied to its subtree)
    seen = {root_span.span_id}
    while stack:
        parent, shift = stack.pop()
        for span in sorted(children.get(parent.span.span_id, ()), key=lambda s: s.start_us):
            if span.span_id in seen:  # a reference cycle in bad data
                continue
            seen.add(span.span_id)
            delta = _skew_correction(parent, span.start_us + shift, span.end_us + shift, span)
            skewed += delta != 0
            node = Node(span, parent, span.start_us + shift + delta, span.end_us + shift + delta)
            node.skewed = delta != 0
            node.cp_start = max(node.start, parent.cp_start)
            node.cp_end = max(node.cp_start, min(node.end, parent.cp_end))
            parent.children.append(node)
            nodes.append(node)
            stack.append((node, shift + delta))
    _mark_hops(nodes)
    return TraceTree(trace.trace_id, root, nodes, orphans, skewed, truncated)


def _ancestors(span: Span, spans: tuple[Span, ...]) -> set[str]:
    by_id = {s.span_id: s for s in spans}
    found: set[str] = set()
    cur = by_id.get(span.parent_id or "")
    while cur is not None and cur.span_id not in found:
        found.add(cur.span_id)
        cur = by_id.get(cur.parent_id or "")
    return found


def _skew_correction(parent: Node, start: int, end: int, span: Span) -> int:
    """Shift a child that sticks out of its parent back inside it (clocks of different hosts
    disagree), as Jaeger's UI adjuster does. A child that outlives a parent which *failed* by
    timing out is not skew but work nobody waited for — it stays as it is."""
    if start < parent.start:
        return parent.start - start
    if span.follows_from or end <= parent.end:
        return 0
    if is_timeout(parent.span) or is_error(parent.span):
        return 0
    return max(parent.end - end, parent.start - start)


def _mark_hops(nodes: list[Node]) -> None:
    for node in nodes[1:]:
        parent = node.parent
        assert parent is not None
        if node.span.kind == "client":
            callee = _callee(node)
            local = callee is None and bool(node.children)
            own_app = _to_own_app(node, callee)
            if not own_app and (not local or _tag(node.span, "sidecar.upstream")):
                node.hop = _client_hop(node, callee)
                node.callee = callee
        elif node.span.service != parent.span.service and not _is_callee_of_client(node):
            node.hop = HopKey(node.span.service, node.span.operation)
        node.owner = parent if parent.hop is not None else parent.owner


def _callee(node: Node) -> Node | None:
    """The first child in another service (its SERVER span), if the call reached one."""
    others = [c for c in node.children if c.span.service != node.span.service]
    servers = [c for c in others if c.span.kind == "server"]
    pool = servers or others
    return min(pool, key=lambda c: c.start) if pool else None


def _to_own_app(node: Node, callee: Node | None) -> bool:
    """An inbound sidecar forwarding to the app it fronts: a CLIENT span naming its own
    service. That time is the service's own work (or, below a hop, part of that hop), not a
    second call; counting it would double every hop seen through two sidecars."""
    return callee is None and _tag(node.span, "sidecar.upstream") == node.span.service


def _is_callee_of_client(node: Node) -> bool:
    parent = node.parent
    return parent is not None and parent.hop is not None and parent.span.kind == "client"


def _client_hop(node: Node, callee: Node | None) -> HopKey:
    span = node.span
    service = (
        _tag(span, "sidecar.upstream")
        or _tag(span, "peer.service")
        or (callee.span.service if callee is not None else "")
        # a span recorded on the callee's behalf (HotROD's redis and mysql spans)
        or (span.service if node.parent and span.service != node.parent.span.service else "")
        or _host(_tag(span, "server.address") or _tag(span, "net.peer.name"))
        or _tag(span, "db.system")
        or "unknown"
    )
    op = span.operation
    route = _tag(span, "http.route")
    method = _tag(span, "http.request.method") or _tag(span, "http.method")
    if route and method and op in (method, f"{method} {route}", ""):
        op = f"{method} {route}"
    node.raw_operation = op
    if callee is not None:
        op = callee.span.operation
    return HopKey(service, op)


def _tag(span: Span, key: str) -> str:
    value = span.tags.get(key)
    return "" if value is None else str(value)


def _host(address: str) -> str:
    host, _, port = address.rpartition(":")
    return host if host and port.isdigit() else address
