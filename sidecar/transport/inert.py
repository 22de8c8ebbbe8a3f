"""The protocol handed to a closed connection's parser."""

from __future__ import annotations


class NoCallbacks:
    """Nothing to call back. A connection swaps its httptools parser for one over this when
    it closes: the parser holds the connection's bound callbacks, a reference cycle that only
    the cyclic collector would free, and on the data path it runs rarely (see cli.py)."""
