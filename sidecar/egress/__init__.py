"""Egress: allow-listed external hosts reachable through the outbound listener, as named
upstreams (DNS-resolved, every connected address checked) or through CONNECT tunnels."""
