"""A minimal HTTP/1.1 client on the sans-IO codec: the xDS client's transport, and the
client of tests and benchmarks.

``HttpClient(host, port)``: ``await connect()``, then ``await request(method, target,
headers, body)`` any number of times on the one keep-alive connection (a list ``body`` is
sent chunked), ``await close()``. ``http_request(port, ...)`` is one request on a fresh
connection. Both return a :class:`Response`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.http.codec import (END, ClientCodec, Data, LAST_CHUNK, ResponseHead, encode_chunk,
                              encode_request_head)

__all__ = ["Response", "HttpClient", "http_request"]


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes
    raw_headers: list


class HttpClient:
    """A keep-alive HTTP/1.1 client on one connection (``await c.request(...)``)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None     # set by connect()
        self.writer: asyncio.StreamWriter | None = None
        self.codec = ClientCodec(max_header_bytes=1 << 20, max_headers=1000)

    async def connect(self) -> "HttpClient":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def send_raw(self, data: bytes) -> None:
        if TYPE_CHECKING:
            assert self.writer is not None       # connect() first
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str = "GET", target: str = "/", headers: list | None = None,
                      body: bytes | list[bytes] = b"", timeout: float = 10.0) -> Response:
        hs = [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
              for k, v in (headers or [])]
        if not any(k.lower() == b"host" for k, _ in hs):
            hs.insert(0, (b"host", b"example.com"))
        if isinstance(body, list):
            hs.append((b"transfer-encoding", b"chunked"))
            data = encode_request_head(method.encode(), target.encode(), hs)
            data += b"".join(encode_chunk(c) for c in body if c) + LAST_CHUNK
        else:
            if body or method in ("POST", "PUT"):
                hs.append((b"content-length", b"%d" % len(body)))
            data = encode_request_head(method.encode(), target.encode(), hs) + body
        self.codec.expect_response(method == "HEAD")
        if TYPE_CHECKING:
            assert self.writer is not None       # connect() first
        self.writer.write(data)
        return await asyncio.wait_for(self.read_response(), timeout)

    async def read_response(self) -> Response:
        head: ResponseHead | None = None
        body: list[bytes] = []
        if TYPE_CHECKING:
            assert self.reader is not None       # connect() first
        while True:
            data = await self.reader.read(65536)
            events = self.codec.receive_data(data) if data else self.codec.feed_eof()
            for ev in events:
                if type(ev) is ResponseHead:
                    head = ev
                elif type(ev) is Data:
                    body.append(ev.data)
                elif ev is END:
                    if TYPE_CHECKING:
                        assert head is not None      # the codec yields the head before END
                    hd = {k.decode(): v.decode("latin-1") for k, v in head.headers}
                    return Response(head.status, hd, b"".join(body), head.headers)
            if not data:
                raise ConnectionError("connection closed before the response completed")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


async def http_request(port: int, method: str = "GET", target: str = "/", headers: list | None = None,
                       body: bytes | list[bytes] = b"", host: str = "127.0.0.1", timeout: float = 10.0) -> Response:
    """One request on a fresh connection."""
    c = await HttpClient(host, port).connect()
    try:
        return await c.request(method, target, headers, body, timeout)
    finally:
        await c.close()
