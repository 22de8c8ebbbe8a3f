"""Optional native build of the data path with mypyc.

`pip install` alone gives the pure-Python package (nothing to compile, works anywhere). With
SIDECAR_MYPYC=1 (`make` does it: scripts/build-native.sh) the modules in native-modules.txt
are compiled to C extensions; `build_ext --inplace` puts them beside their sources, which
Python prefers at import. The code is written for it (mypy --strict, no async generators);
`sidecar/native.py` falls back to the sources when a build is older than them.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup


def native_modules() -> list[str]:
    text = (Path(__file__).parent / "native-modules.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _ext_modules() -> list[object]:
    if os.environ.get("SIDECAR_MYPYC") != "1":
        return []
    from mypyc.build import mypycify

    # One group, named inside the package, so the shared library imports as
    # `sidecar._native__mypyc` wherever the package is (an editable install maps only
    # `sidecar`, not the repository root).
    return list(mypycify(native_modules(), opt_level="3", group_name="sidecar._native"))


setup(ext_modules=_ext_modules())
