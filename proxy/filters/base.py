"""Envoy-style HTTP filter interface.

A filter instance lives for one stream. The connection manager calls ``decode_headers``
/ ``decode_data`` on the filters in order and ``encode_headers`` / ``encode_data`` in
reverse order; each call returns :data:`CONTINUE` or :data:`STOP_ITERATION`.  A filter that
stopped resumes the chain with ``stream.continue_decoding()`` or answers with
``stream.send_local_reply(status, body, flag)``.  The router is the terminal decoder.

What a filter sees on ``stream`` (see :class:`proxy.http.stream.Stream`): ``method``, ``path``,
``headers`` (list of ``(bytes, bytes)``, lower-case names, mutable), ``host``,
``route`` (the matched :class:`proxy.http.route_table.Route` or None), ``flags`` (response flags),
and while encoding ``status`` and ``resp_headers``.
"""
from __future__ import annotations

__all__ = ["CONTINUE", "STOP_ITERATION", "HttpFilter", "FLAG_ORDER"]

CONTINUE = 0
STOP_ITERATION = 1

# Envoy's response flag short names, in Envoy's print order.
FLAG_ORDER = ("UH", "UF", "UO", "NR", "URX", "UT", "LR", "UR", "UC", "DI", "FI", "RL", "DC", "NC", "SI", "DPE", "RBAC")


class HttpFilter:
    """Base class with pass-through behaviour; override what you need."""

    __slots__ = ()

    def decode_headers(self, stream, end_stream: bool) -> int:
        return CONTINUE

    def decode_data(self, stream, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def encode_headers(self, stream, end_stream: bool) -> int:
        return CONTINUE

    def encode_data(self, stream, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def on_destroy(self) -> None:
        """The stream ended (completed or reset); release timers and connections."""
