"""Test helpers shared by unit, integration and differential tests: a scriptable upstream
HTTP/1.1 server on the sans-IO codec, and (from proxy/http/client.py) a minimal keep-alive client.

``Upstream`` records every request (method, target, headers, body) and answers according to
``behaviour(request) -> Reply``; replies may be delayed, chunked, large, or a connection reset.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from proxy.http.client import HttpClient, Response, http_request
from proxy.http.codec import END, LAST_CHUNK, Data, RequestHead, ServerCodec, encode_chunk, encode_response_head

__all__ = ["Recorded", "Reply", "Upstream", "Response", "http_request", "HttpClient"]


@dataclass
class Recorded:
    method: str
    target: str
    headers: dict            # lower-case name -> last value (str)
    raw_headers: list
    body: bytes = b""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: list = field(default_factory=list)
    delay_s: float = 0.0
    chunked: bool = False
    reset: bool = False          # close the connection instead of answering
    chunk_size: int = 65536


class _UpConn(asyncio.Protocol):
    def __init__(self, up: "Upstream"):
        self.up = up
        self.codec = ServerCodec(max_header_bytes=1 << 20, max_headers=1000)
        self.cur: Recorded | None = None
        self.transport = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.up.connections += 1
        self.task = asyncio.get_event_loop().create_task(self._answer_loop())

    def data_received(self, data: bytes) -> None:
        for ev in self.codec.receive_data(data):
            if type(ev) is RequestHead:
                hd = {k.decode(): v.decode("latin-1") for k, v in ev.headers}
                self.cur = Recorded(ev.method.decode(), ev.target.decode(), hd, ev.headers)
            elif type(ev) is Data:
                if self.up.count_only:
                    self.up.body_bytes += len(ev.data)
                else:
                    self.cur.body += ev.data
            elif ev is END:
                self.up.requests.append(self.cur)
                self.queue.put_nowait(self.cur)

    def connection_lost(self, exc) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _answer_loop(self) -> None:
        while True:
            req = await self.queue.get()
            reply = self.up.behaviour(req)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply.reset:
                self.transport.abort()
                return
            headers = list(reply.headers)
            if reply.chunked:
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                headers.append((b"content-length", b"%d" % len(reply.body)))
            self.transport.write(encode_response_head(reply.status, headers))
            if req.method == "HEAD":
                continue
            if reply.chunked:
                for i in range(0, len(reply.body), reply.chunk_size):
                    self.transport.write(encode_chunk(reply.body[i:i + reply.chunk_size]))
                    await asyncio.sleep(0)
                self.transport.write(LAST_CHUNK)
            else:
                self.transport.write(reply.body)


class Upstream:
    """``async with Upstream(behaviour) as up:`` listens on 127.0.0.1:<free port> (``up.port``)."""

    def __init__(self, behaviour: Callable[[Recorded], Reply] | None = None, port: int = 0,
                 count_only: bool = False):
        self.behaviour = behaviour or (lambda req: Reply())
        self.requests: list[Recorded] = []
        self.connections = 0
        self.port = port
        self.count_only = count_only
        self.body_bytes = 0
        self._srv = None

    async def start(self) -> "Upstream":
        self._srv = await asyncio.get_event_loop().create_server(lambda: _UpConn(self), "127.0.0.1", self.port)
        self.port = self._srv.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()
            self._srv = None

    async def __aenter__(self) -> "Upstream":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
