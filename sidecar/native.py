"""Which build of the data path this process runs: the mypyc-compiled extensions that `make`
builds beside the sources (setup.py, native-modules.txt), or the sources themselves.

Python prefers `x.cpython-311-….so` over `x.py` in the same directory, so a build older than
its sources would silently run yesterday's code. `install` (called by `sidecar/__init__.py`
before anything else in the package is imported) checks that; if any compiled module is older
than its source, or SIDECAR_PURE_PYTHON=1, it puts a finder first on `sys.meta_path` that loads
*every* compiled module from source. All or nothing: compiled modules call each other directly
through their shared library, so a mix of compiled and interpreted ones is not safe.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path
from types import ModuleType

COMPILED = "compiled (mypyc)"
NOT_BUILT = "pure Python (no native build)"
STALE = "pure Python (native build older than the sources; `make native` rebuilds it)"
FORCED = "pure Python (SIDECAR_PURE_PYTHON=1)"


class _SourcesFirst(MetaPathFinder):
    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        source = self._sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def compiled_modules(package_dir: Path, package: str = "sidecar") -> dict[str, tuple[Path, Path]]:
    """module name → (extension, source) for every compiled module beside its source."""
    found: dict[str, tuple[Path, Path]] = {}
    for suffix in EXTENSION_SUFFIXES:
        for ext in package_dir.rglob("*" + suffix):
            source = ext.with_name(ext.name[: -len(suffix)] + ".py")
            if source.exists():
                parts = source.relative_to(package_dir).with_suffix("").parts
                found[".".join((package, *parts))] = (ext, source)
    return found


def install(package_dir: Path, environ: dict[str, str] | None = None) -> str:
    """Decide which build runs; returns one of the mode strings above."""
    env = os.environ if environ is None else environ
    modules = compiled_modules(package_dir)
    if not modules:
        return NOT_BUILT
    if env.get("SIDECAR_PURE_PYTHON") == "1":
        mode = FORCED
    elif any(src.stat().st_mtime > ext.stat().st_mtime for ext, src in modules.values()):
        mode = STALE
        warnings.warn(f"sidecar: {mode}", RuntimeWarning, stacklevel=2)
    else:
        return COMPILED
    sys.meta_path.insert(0, _SourcesFirst({name: src for name, (_, src) in modules.items()}))
    return mode
