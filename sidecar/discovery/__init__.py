"""Service discovery: resolvers yield endpoint-set snapshots per upstream name."""
