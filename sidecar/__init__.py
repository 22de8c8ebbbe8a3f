"""Observability and resilience sidecar for Python microservices."""

from pathlib import Path

from sidecar import native as _native

__version__ = "0.1.0"

# Before any other module of the package is imported: run the compiled data path only if it
# is as new as its sources (see sidecar/native.py).
BUILD = _native.install(Path(__file__).parent)
