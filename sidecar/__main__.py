"""`python -m sidecar ...`, the same as the `sidecar` console script."""

from sidecar.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
