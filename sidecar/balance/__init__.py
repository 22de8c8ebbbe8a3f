"""Load balancers: pick one endpoint among the healthy ones of an upstream."""
