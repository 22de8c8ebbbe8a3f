"""`sidecar demo`: the embedded demo (command.py drives it; topology, processes, load and
traces are its parts)."""
