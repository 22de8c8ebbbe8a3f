"""Listeners, routing, header hygiene and forwarding."""
