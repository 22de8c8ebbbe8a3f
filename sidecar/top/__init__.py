"""`sidecar top`: a live terminal view of what each sidecar sees, from its admin port."""
