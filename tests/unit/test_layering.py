"""The layering of the package (docs/architecture.md): a module imports only from its own
layer or the layers below it, and the vocabulary imports nothing of ours.

Imports are read from the source with `ast`, including those inside functions and under
`if TYPE_CHECKING:` (a type-only import still ties the lower layer to the higher one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sidecar"

# Lowest first. A module belongs to the layer of the longest prefix naming it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Names and plain values; imports nothing of ours.
    ("vocabulary", ("sidecar.vocab", "sidecar.clock", "sidecar.events", "sidecar.native")),
    # The HTTP model every stage passes along, the errors that become replies, and the
    # shape of a stage (Handler, Filter, Layer) and the Chain that runs filters.
    ("types", ("sidecar.http", "sidecar.grpc", "sidecar.errors", "sidecar.stack")),
    ("config", ("sidecar.config",)),
    ("discovery", ("sidecar.discovery",)),
    # Protocols: HTTP/1.1, HTTP/2, gRPC framing, tunnels, TLS, connection pools.
    ("transport", ("sidecar.transport",)),
    # Endpoint state and the pickers over it.
    ("balance", ("sidecar.balance",)),
    # Stages that protect: deadline, breaker, retry, outlier detection, health checks...
    ("resilience", ("sidecar.resilience",)),
    ("telemetry", ("sidecar.telemetry",)),
    # Stages that decide and forward: prepare, route, forward.
    ("proxy", ("sidecar.proxy",)),
    ("egress", ("sidecar.egress",)),
    # Per-upstream state, built from the layers above.
    ("registry", ("sidecar.registry",)),
    ("admin", ("sidecar.admin",)),
    # Composition root and process: builds and runs everything.
    (
        "composition",
        (
            "sidecar",  # the package itself: version and the native loader
            "sidecar.discovery.build",
            "sidecar.app",
            "sidecar.runtime",
            "sidecar.cli",
            "sidecar.__main__",
            "sidecar.config_check",
            "sidecar.logsetup",
        ),
    ),
    # Commands that are not the proxy: they may use anything, nothing uses them.
    (
        "tools",
        (
            "sidecar.diagnose",
            "sidecar.top",
            "sidecar.demo",
        ),
    ),
]
# `sidecar/__init__.py` only loads the native modules and names the version: every layer may
# read `sidecar.__version__`.
ANYONE_MAY_IMPORT = {"sidecar"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            # "sidecar" names only the package itself, not everything under it.
            if prefix == "sidecar" and module != "sidecar":
                matches = False
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the docs)")
    return best


def imports_of(module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ours in `module`."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sidecar"
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "sidecar":
                continue
            for alias in node.names:
                # `from sidecar import grpc` imports a module, `from sidecar import BUILD` a name.
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative import>"))
    return found


def upward(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """The imports of `module` that reach a higher layer than its own."""
    mine = layer_of(module)
    problems = []
    for line, target in imports:
        if target == "<relative import>":
            problems.append(f"{module}:{line} uses a relative import")
        elif target not in ANYONE_MAY_IMPORT and layer_of(target) > mine:
            theirs = layer_of(target)
            problems.append(
                f"{module}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
            )
    return problems


def test_no_module_imports_a_higher_layer() -> None:
    problems = [p for module in MODULES for p in upward(module, imports_of(module))]
    assert problems == []


def test_the_vocabulary_imports_nothing_of_ours() -> None:
    vocabulary = [m for m in MODULES if layer_of(m) == 0]
    assert {"sidecar.vocab.headers", "sidecar.vocab.endpoint", "sidecar.clock"} <= set(vocabulary)
    leaks = [
        f"{m}:{line} imports {target}"
        for m in vocabulary
        for line, target in imports_of(m)
        # The vocabulary package's modules may use each other.
        if not (m.startswith("sidecar.vocab") and target.startswith("sidecar.vocab"))
    ]
    assert leaks == []


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        # The layering inversions that were fixed...
        ("sidecar.http", "sidecar.discovery.endpoints"),
        ("sidecar.transport.client", "sidecar.proxy.forward"),
        ("sidecar.telemetry.metrics", "sidecar.admin.server"),
        ("sidecar.transport.h2_server", "sidecar.resilience.deadline"),
        ("sidecar.config", "sidecar.discovery.endpoints"),
        # ...and two obvious ones.
        ("sidecar.vocab.headers", "sidecar.http"),
        ("sidecar.resilience.retry", "sidecar.app"),
    ],
)
def test_an_upward_import_is_reported(importer: str, imported: str) -> None:
    """The check is not vacuous: writing any of these imports would fail the suite."""
    assert upward(importer, [*imports_of(importer), (1, imported)]) != []
    assert upward(importer, imports_of(importer)) == []
