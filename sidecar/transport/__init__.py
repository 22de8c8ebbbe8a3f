"""HTTP/1.1 transport behind the seam: a protocol-level server (uvloop + httptools/llhttp, a
strict C parser) and a pooled upstream client. Layers never see this package's classes."""
