"""Sockets for sidecar mTLS: inbound STRICT/PERMISSIVE/DISABLE listeners and outbound
connects, built on proxy/tls/context.py's contexts and checks.

* `start_inbound(factory, host, port, tls, mode)` accepts connections itself so that every
  connection picks up the newest context (rotation), PERMISSIVE can tell TLS from plaintext
  by peeking at the first byte (0x16: TLS handshake record), and handshake failures reach us
  with their reason (asyncio's `create_server(ssl=...)` would swallow them).
* `connect_outbound(factory, host, port, tls, expected)` / `open_mtls_stream(...)`: the
  client side, checking the server's SPIFFE ID.
Both build the app protocol with `factory(peer)` only after the checks passed, so the app
never sees a byte from a rejected peer.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Callable, Collection

from proxy.tls.context import MeshTLS, Peer, PeerRejected, addr_str, describe_tls_error, log
from proxy.tls.identity import DISABLE, STRICT


# ---------------------------------------------------------------- protocol gate
class _Gate(asyncio.Protocol):
    """Runs the peer check in connection_made and only then creates the app protocol."""

    def __init__(self, check: Callable[[asyncio.BaseTransport], Peer],
                 factory: Callable[[Peer], asyncio.Protocol]) -> None:
        self._check, self._factory = check, factory
        self.inner: asyncio.Protocol | None = None
        self._ssl = False
        self.checked: asyncio.Future = asyncio.get_event_loop().create_future()

    def connection_made(self, transport) -> None:
        self._ssl = transport.get_extra_info("ssl_object") is not None
        try:
            peer = self._check(transport)
        except Exception as e:  # any failed check closes the connection
            transport.abort()
            self.checked.set_exception(e if isinstance(e, PeerRejected) else PeerRejected(
                "handshake_error", f"peer check failed: {type(e).__name__}: {e}"))
            return
        self.inner = self._factory(peer)
        self.checked.set_result(peer)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        keep_open = self.inner.eof_received() if self.inner is not None else None
        # over TLS asyncio closes on EOF anyway and warns once per connection if we say True
        return None if self.inner is not None and self._ssl else keep_open

    def connection_lost(self, exc) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)
        elif not self.checked.done():
            self.checked.set_exception(ConnectionError("closed before the peer check"))

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


# ---------------------------------------------------------------- inbound
async def _first_byte(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Peek at the first byte without consuming it; None on timeout."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)
    loop.add_reader(sock.fileno(), readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    except asyncio.TimeoutError:
        return None
    finally:
        loop.remove_reader(sock.fileno())
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


class InboundServer:
    """Looks like asyncio.Server where the proxy uses it: `sockets`, `close()`,
    `wait_closed()`."""

    def __init__(self, sock: socket.socket, accept_task: asyncio.Task) -> None:
        self.sockets = [sock]
        self._task = accept_task
        self._conns: set[asyncio.Task] = set()

    def close(self) -> None:
        self._task.cancel()
        self.sockets[0].close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)


async def start_inbound(factory: Callable[[Peer], asyncio.Protocol], host: str, port: int,
                        tls: MeshTLS, mode: Callable[[], str] | str = STRICT,
                        handshake_timeout_s: float = 5.0, peek_timeout_s: float = 5.0,
                        backlog: int = 1024) -> InboundServer:
    """Listen on host:port; each connection is handled per the *current* `mode()` and the
    current material of `tls`. `factory(peer)` builds the app protocol after the checks."""
    loop = asyncio.get_running_loop()
    mode_of = mode if callable(mode) else (lambda: mode)
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(backlog)
    lsock.setblocking(False)

    async def handle(sock: socket.socket, addr) -> None:
        m = mode_of()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if m != DISABLE:
                first = await _first_byte(sock, peek_timeout_s)
                if first == b"":
                    sock.close()
                    return
                is_tls = first == b"\x16"
                if not is_tls and m == STRICT:
                    sock.close()
                    what = "sent no data" if first is None else "is not TLS (plaintext)"
                    tls.reject("inbound", addr, "plaintext", f"first byte {what}; "
                               "STRICT mTLS requires TLS with a client certificate")
                    return
                if is_tls:
                    await _handshake_inbound(loop, sock, addr, factory, tls, handshake_timeout_s)
                    return
                tls.stats["ssl.plaintext_accepted"] += 1
            await loop.connect_accepted_socket(lambda: _Gate(lambda t: Peer(False), factory),
                                               sock)
        except Exception:  # one bad connection must not stop the listener
            log.exception("mtls: inbound connection from %s failed", addr_str(addr))
            sock.close()

    async def accept_loop() -> None:
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as e:  # EMFILE and friends: keep listening
                log.warning("mtls: accept on %s:%s failed: %s", host, port, e)
                await asyncio.sleep(0.1)
                continue
            t = asyncio.ensure_future(handle(sock, addr))
            server._conns.add(t)
            t.add_done_callback(server._conns.discard)

    server = InboundServer(lsock, asyncio.ensure_future(accept_loop()))
    return server


async def _handshake_inbound(loop, sock, addr, factory, tls: MeshTLS, timeout_s: float) -> None:
    def check(transport) -> Peer:
        return tls.check(transport.get_extra_info("ssl_object"))

    gate = _Gate(check, factory)  # uvloop returns its SSLProtocol, not ours: keep a handle
    try:
        await loop.connect_accepted_socket(lambda: gate, sock, ssl=tls.server_ctx(),
                                           ssl_handshake_timeout=timeout_s)
    except (ssl.SSLError, OSError, asyncio.TimeoutError) as e:
        sock.close()
        tls.reject("inbound", addr, *describe_tls_error(e))
        return
    try:
        await gate.checked
    except PeerRejected as e:
        tls.reject("inbound", addr, e.reason, e.detail)
        return
    tls.stats["ssl.handshake"] += 1


# ---------------------------------------------------------------- outbound
async def connect_outbound(factory: Callable[[Peer], asyncio.Protocol], host: str, port: int,
                           tls: MeshTLS, expected: str | Collection[str] | None = None,
                           handshake_timeout_s: float = 5.0):
    """mTLS connect + SPIFFE check of the server; returns (transport, app protocol).
    Raises PeerRejected (also logged and counted) when the server fails a check."""
    loop = asyncio.get_running_loop()
    ctx = tls.client_ctx(expected)
    exp = ctx.expected_spiffe_ids

    def check(transport) -> Peer:
        return tls.check(transport.get_extra_info("ssl_object"), exp)

    gate = _Gate(check, factory)
    try:
        transport, _ = await loop.create_connection(
            lambda: gate, host, port, ssl=ctx, server_hostname="",
            ssl_handshake_timeout=handshake_timeout_s)
        await gate.checked
    except PeerRejected as e:
        tls.reject("outbound", (host, port), e.reason, e.detail)
        raise
    except (ssl.SSLError, asyncio.TimeoutError) as e:
        reason, detail = describe_tls_error(e)
        tls.reject("outbound", (host, port), reason, detail)
        raise PeerRejected(reason, detail) from e
    tls.stats["ssl.handshake"] += 1
    return transport, gate.inner


async def open_mtls_stream(host: str, port: int, tls: MeshTLS,
                           expected: str | Collection[str] | None = None,
                           limit: int = 2**16):
    """Stream flavour of connect_outbound: (reader, writer, peer)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    peer_box: list[Peer] = []

    def factory(peer: Peer) -> asyncio.Protocol:
        peer_box.append(peer)
        return asyncio.StreamReaderProtocol(reader)

    transport, proto = await connect_outbound(factory, host, port, tls, expected)
    return reader, asyncio.StreamWriter(transport, proto, reader, loop), peer_box[0]
