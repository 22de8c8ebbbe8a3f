"""Critical path of one trace: the chain of work the root actually waited for.

Walk backwards from the root's end: the blocking child that finished last is on the path;
descend into it; when a span has no child left that ends before the current point, its own
time from its start is on the path and we return to its parent at the span's start (the
algorithm of Jaeger UI's critical-path view). Async (FOLLOWS_FROM) children are never waited
for. Iterative, each child visited once, so huge or deep traces cost O(n log n)."""

from __future__ import annotations

from sidecar.diagnose.tree import Node, TraceTree


def critical_time(tree: TraceTree) -> dict[Node, int]:
    """µs of the critical path spent in each span itself (excluding its children)."""
    spent: dict[Node, int] = {}
    order: dict[Node, list[Node]] = {}  # blocking children, latest end first
    cursor: dict[Node, int] = {}
    node, t = tree.root, tree.root.cp_end
    while True:
        kids = order.get(node)
        if kids is None:
            kids = sorted((c for c in node.children if c.blocking), key=lambda c: -c.cp_end)
            order[node] = kids
            cursor[node] = 0
        i = cursor[node]
        while i < len(kids) and kids[i].cp_end > t:
            i += 1  # ends after the point we are at: ran concurrently with what followed
        if i < len(kids):
            child = kids[i]
            cursor[node] = i + 1
            spent[node] = spent.get(node, 0) + max(0, t - child.cp_end)
            node, t = child, child.cp_end
            continue
        cursor[node] = i
        spent[node] = spent.get(node, 0) + max(0, t - node.cp_start)
        if node.parent is None or node is tree.root:
            return spent
        node, t = node.parent, node.cp_start
