"""Header names and request-target forms shared by the codec and the connection manager.

* ``HOP_BY_HOP`` -- connection-specific headers never forwarded as received (the framing
  headers ``transfer-encoding`` and ``content-length`` are rewritten for the next hop): the
  response path drops exactly these.
* ``REQUEST_HOP_BY_HOP`` -- ``HOP_BY_HOP`` plus ``te`` and ``trailer``, dropped from the
  upstream request (Envoy forwards only ``te: trailers``).
* ``ABSOLUTE_FORM`` -- matches the start of an absolute-form request target
  (``GET http://host/path``, forward-proxy style).
"""
from __future__ import annotations

import re

__all__ = ["HOP_BY_HOP", "REQUEST_HOP_BY_HOP", "ABSOLUTE_FORM"]

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                        b"content-length"))
REQUEST_HOP_BY_HOP = HOP_BY_HOP | frozenset((b"te", b"trailer"))
ABSOLUTE_FORM = re.compile(rb"(?i)https?://")
