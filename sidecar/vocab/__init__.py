"""The shared vocabulary: names and plain values every layer speaks (header names, the
hop-by-hop set, method semantics, balancer/sampler/propagator names, endpoints, addresses).

Imports nothing of ours, so any module may import it without creating a cycle or a
dependency on a higher layer (tests/unit/test_layering.py enforces both). A name used in more
than one layer is defined here once; a name used by one module stays in that module."""
