"""Sans-IO HTTP/1.1 codec on httptools (llhttp, the C parser Node.js uses).

Like h11, the codec only turns bytes into events and events into bytes:
``events = codec.receive_data(data)`` returns :class:`RequestHead` / :class:`ResponseHead`,
:class:`Data` and :class:`EndOfMessage` events; ``encode_*`` functions build the bytes to
send.  Nothing here touches sockets, so tests feed bytes directly.  Events are immutable
NamedTuples (cheaper to build than frozen dataclasses on the hot path).

Header names are lower-cased bytes (Envoy lower-cases names on HTTP/1 too); values are
bytes as received.  Protocol violations raise :class:`ProtocolError` carrying the status
the server should answer with (400, 413 or 431) before closing the connection.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import httptools

from proxy.http.headers import ABSOLUTE_FORM
from proxy.http.target import (head_end, host_error, needs_normalizing, normalize_head, target_error,
                               unsupported_coding)

__all__ = ["RequestHead", "ResponseHead", "Data", "EndOfMessage", "ProtocolError", "ServerCodec",
           "ClientCodec", "encode_request_head", "encode_response_head", "encode_chunk", "LAST_CHUNK",
           "Headers", "get_header", "REASONS"]

Headers = list  # list[tuple[bytes, bytes]]
_HTTP09 = re.compile(rb"[A-Z]+[ \t]+[^\x00-\x20\x7f]+[ \t]*\r?")     # a request line without a version
LAST_CHUNK = b"0\r\n\r\n"


class RequestHead(NamedTuple):
    method: bytes
    target: bytes
    headers: list
    keep_alive: bool
    chunked: bool
    content_length: int | None
    http_version: str


class ResponseHead(NamedTuple):
    status: int
    reason: bytes
    headers: list
    keep_alive: bool
    chunked: bool
    content_length: int | None


class Data(NamedTuple):
    data: bytes


class EndOfMessage(NamedTuple):
    pass


END = EndOfMessage()


class ProtocolError(Exception):
    """``status`` is what the server answers before closing; ``body`` None means the reason phrase."""

    events: list = []          # ServerCodec: events parsed before the violation
    interim = False            # send "100 Continue" before the answer

    def __init__(self, message: str, status: int = 400, body: bytes | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


def get_header(headers: list, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _framing(headers: list, path: str) -> tuple[bool, int | None]:
    """(chunked, content_length) from the headers; rejects ambiguous framing."""
    chunked, length = False, None
    for k, v in headers:
        if k == b"transfer-encoding":
            # Envoy (like RFC 9112 6.1 lets a proxy) implements only `chunked`: any other
            # coding, before chunked too (`gzip, chunked`), or chunked twice is 501, never
            # forwarded with a coding dropped
            if chunked or [c.strip() for c in v.lower().split(b",")] != [b"chunked"]:
                raise ProtocolError(f"{path}: unsupported transfer-encoding {v!r}", 501 if path == "request" else 502)
            chunked = True
        elif k == b"content-length":
            if not v.strip().isdigit():
                raise ProtocolError(f"{path}: bad content-length {v!r}")
            n = int(v)
            if length is not None and n != length:
                raise ProtocolError(f"{path}: conflicting content-length values")
            length = n
    if chunked and length is not None:
        raise ProtocolError(f"{path}: both content-length and transfer-encoding given")
    return chunked, length


def _check_host(headers: list, target: bytes) -> None:
    """Host is required with an origin-form target and checked there; an absolute-form
    target's authority replaces it unchecked (as Envoy does)."""
    absolute = ABSOLUTE_FORM.match(target)
    for k, v in headers:
        if k == b"host":
            why = None if absolute else host_error(v)
            if why is not None:
                raise ProtocolError(why)
            return
    if not absolute:
        raise ProtocolError("HTTP/1.1 request without Host", 400, b"")


def _check_upgrade(headers: list, method: bytes) -> None:
    """No upgrade_configs on the HCM: Envoy refuses an upgrade (h2c aside) with 403."""
    upgrades = [v.strip() for k, v in headers if k == b"upgrade"]
    upgrade = bool(upgrades) and b",".join(upgrades).lower() != b"h2c"      # repeated: joined, as Envoy
    conn_upgrade = any(k == b"connection" and b"upgrade" in v.lower() for k, v in headers)
    if upgrade and conn_upgrade and method != b"CONNECT":
        e = ProtocolError(f"upgrade to {get_header(headers, b'upgrade')!r} is not configured", 403)
        # Envoy answers `Expect: 100-continue` before it refuses the upgrade
        e.interim = any(k == b"expect" and v.lower() == b"100-continue" for k, v in headers)
        raise e


class _Base:
    __slots__ = ("_parser", "_events", "_headers", "_header_bytes", "_max_header_bytes", "_max_headers")

    def __init__(self, max_header_bytes: int, max_headers: int):
        self._events: list = []
        self._headers: list = []
        self._header_bytes = 0
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers

    def on_message_begin(self) -> None:
        self._headers = []
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            raise ProtocolError("headers too large", 431)
        headers = self._headers
        headers.append((name.lower(), value))
        if len(headers) > self._max_headers:
            raise ProtocolError("too many headers", 431)

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._events.append(END)


class ServerCodec(_Base):
    """Parses requests received by a server.

    llhttp is strict; Envoy's Balsa parser takes a few lenient head forms (bare LF, obs-fold,
    HTAB in the request line; see :mod:`proxy.http.target`). Bytes that may hold one go
    the slow way: each head is buffered whole, rewritten to strict HTTP/1.1 and fed, then
    its Content-Length body; after a chunked body in that mode the rest is fed as is."""

    __slots__ = ("_url", "head", "_chunk", "_in_head", "_done", "_slow", "_buf", "_body_left")

    def __init__(self, max_header_bytes: int = 60 * 1024, max_headers: int = 100):
        super().__init__(max_header_bytes, max_headers)
        self._parser = httptools.HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)   # as Envoy
        self._url = b""
        self._chunk = b""
        self._in_head = False       # a message began and its head is not complete yet
        self._done = True           # no message is in progress
        self._slow = False
        self._buf = b""
        self._body_left = 0

    def on_message_begin(self) -> None:
        self._headers = []
        self._header_bytes = 0
        self._url = b""
        self._in_head = True
        self._done = False

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._done = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:
            raise ProtocolError("request line too long", 431)

    def on_headers_complete(self) -> None:
        """The head's checks, in Envoy's order: an HTTP/0.9 line, the transfer coding, the
        version, CONNECT's framing, the target, Host, an upgrade."""
        self._in_head = False
        p = self._parser
        headers = self._headers
        version = p.get_http_version()
        if version == "0.9":
            raise ProtocolError("HTTP/0.9 request (only HTTP/1.1 is accepted)", 400 if headers else 426)
        chunked, length = _framing(headers, "request")
        method = p.get_method()
        if method == b"CONNECT" and (chunked or length):
            raise ProtocolError("CONNECT with a body", 501 if chunked else 400)
        if version != "1.1":
            # Envoy's default (accept_http_10: false): 426 Upgrade Required, then close;
            # llhttp also takes RTSP/ and ICE/ request lines, which Envoy rejects with 400
            other = b"RTSP/" in self._chunk or b"ICE/" in self._chunk
            raise ProtocolError(f"HTTP/{version} request (only HTTP/1.1 is accepted)", 400 if other else 426)
        why = target_error(method, self._url)
        if why is not None:
            raise ProtocolError(f"request target {self._url[:80]!r}: {why}")
        _check_host(headers, self._url)
        _check_upgrade(headers, method)
        self._events.append(RequestHead(method, self._url, headers, p.should_keep_alive() and method != b"CONNECT",
                                        chunked, length, version))
        self._body_left = length or 0

    def receive_data(self, data: bytes) -> list:
        """Events parsed from ``data``.  On a protocol violation raises :class:`ProtocolError`
        whose ``events`` holds the events parsed before it (earlier pipelined requests)."""
        try:
            if self._slow or self._buf or (self._done and (b"\r\n\r\n" not in data or needs_normalizing(data))):
                self._receive_lenient(data)
            else:
                self._parse(data)             # the common case: whole strict heads
        except ProtocolError as e:
            e.events, self._events = self._events, []
            raise
        events = self._events
        self._events = []
        return events

    def _receive_lenient(self, data: bytes) -> None:
        """Heads buffered whole and normalised; a Content-Length body fed by count; after a
        chunked body's head, llhttp takes the rest as is."""
        buf = self._buf + data
        self._buf = b""
        self._slow = False
        while buf:
            if not self._done:                  # a body is in progress
                if self._body_left <= 0:        # chunked: its framing is llhttp's from here
                    self._parse(buf)
                    return
                n = min(self._body_left, len(buf))
                self._body_left -= n
                self._parse(buf[:n])
                buf = buf[n:]
                continue
            end = head_end(buf)
            if end < 0:
                self._incomplete_head(buf)
                self._buf = buf
                return
            self._parse(normalize_head(buf[:end]))
            buf = buf[end:]
        self._slow = not self._done and self._body_left > 0

    def _incomplete_head(self, buf: bytes) -> None:
        if len(buf) > self._max_header_bytes:
            raise ProtocolError("headers too large", 431)
        line = buf.lstrip(b"\r\n")
        nl = line.find(b"\n")
        if nl >= 0 and _HTTP09.fullmatch(line[:nl]):
            # "GET /" and a line end: HTTP/0.9, answered at once as Envoy does
            raise ProtocolError("HTTP/0.9 request (only HTTP/1.1 is accepted)", 426)

    def _parse(self, data: bytes) -> None:
        self._chunk = data
        try:
            self._parser.feed_data(data)       # the common case, without the loop below
        except httptools.HttpParserUpgrade as e:
            self._feed(data, e)
        except httptools.HttpParserError as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> ProtocolError:
        cause = e.__context__
        if isinstance(cause, ProtocolError):
            return cause
        if self._parser.get_http_version() == "0.9":
            return ProtocolError(f"malformed HTTP/0.9 request: {e}", 400)
        if str(e) == "Invalid HTTP version" and unsupported_coding(self._chunk):
            # llhttp stops at the request line; Envoy reads the head and refuses the coding first
            return ProtocolError(f"malformed request: {e}, and an unsupported transfer-encoding", 501)
        # llhttp knows only HTTP/0.9, 1.0, 1.1 and 2.0; Envoy answers other versions with 426;
        # a repeated chunked or a coding after it is an unsupported coding to Envoy: 501
        status = {"Invalid HTTP version": 426, "Invalid `Transfer-Encoding` header value": 501}.get(str(e), 400)
        return ProtocolError(f"malformed request: {e}", status)

    def _feed(self, data: bytes, e: Exception) -> None:
        while True:
            # Upgrades are not proxied: the request is served as plain HTTP/1.1 and
            # whatever followed it is parsed by a fresh parser.
            offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            self._parser = httptools.HttpRequestParser(self)
            self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
            self._done, self._in_head = True, False
            data = data[offset:]
            if not data:
                return
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as u:
                e = u
            except ProtocolError:
                raise
            except httptools.HttpParserError as err:
                raise self._error(err) from None


class ClientCodec(_Base):
    """Parses responses received by a client; call :meth:`expect_response` per request."""

    __slots__ = ("_status", "_head_request", "_interim", "_until_close")

    def __init__(self, max_header_bytes: int = 60 * 1024, max_headers: int = 100):
        super().__init__(max_header_bytes, max_headers)
        self._parser = httptools.HttpResponseParser(self)
        self._status = b""
        self._head_request = False
        self._interim = False
        self._until_close = False

    def on_message_complete(self) -> None:
        self._until_close = False
        if self._interim:
            self._interim = False
        else:
            self._events.append(END)

    def expect_response(self, head_request: bool) -> None:
        self._head_request = head_request

    def on_status(self, status: bytes) -> None:
        self._status = status

    def on_headers_complete(self) -> None:
        p = self._parser
        code = p.get_status_code()
        headers = self._headers
        chunked, length = _framing(headers, "response")
        if 100 <= code < 200:
            self._interim = True     # 1xx interim responses are swallowed (Envoy's default)
            return
        keep_alive = p.should_keep_alive()
        self._events.append(ResponseHead(code, self._status or b"", headers, keep_alive, chunked, length))
        self._until_close = not chunked and length is None
        if self._head_request or code in (204, 304):
            self._events.append(END)
            self._parser = httptools.HttpResponseParser(self)
            self._head_request = False
            self._until_close = False
            raise _Done()

    def receive_data(self, data: bytes) -> list:
        try:
            self._parser.feed_data(data)
        except ProtocolError:
            raise
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Done):
                pass
            elif isinstance(cause, ProtocolError):
                raise cause from None
            else:
                raise ProtocolError(f"malformed response: {e}", 502) from None
        except _Done:
            pass
        events = self._events
        self._events = []
        return events

    def feed_eof(self) -> list:
        """The upstream closed; completes a response delimited by connection close."""
        if self._until_close:
            self._until_close = False
            return [END]
        return []


class _Done(Exception):
    """Stops the parser after a body-less response (HEAD, 204, 304)."""


REASONS = {
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified", 307: b"Temporary Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large",
    417: b"Expectation Failed", 421: b"Misdirected Request", 426: b"Upgrade Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}


def encode_request_head(method: bytes, target: bytes, headers: list) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_response_head(status: int, headers: list, reason: bytes | None = None) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
