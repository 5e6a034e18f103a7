"""HTTP into a testbed host's network namespace from this process.

A socket belongs to the network namespace its creating thread was in, and ``setns(2)``
with ``CLONE_NEWNET`` moves only the calling thread. So :func:`http_in` enters the host's
namespace (``/proc/<pid>/ns/net`` of the host's shell), opens the connection, and returns
the thread to its own namespace before sending a byte: one HTTP exchange costs two
syscalls more than a local one, instead of a fork and exec of curl per request (what
``tb.host(h).pexec(["curl", ...])`` costs; the live page polls every sidecar each second).
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

__all__ = ["NetnsError", "http_in"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


class NetnsError(OSError):
    """The namespace could not be entered or the endpoint did not answer."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


def _connect_in(pid: int, address: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP socket connected to address:port inside the namespace of process ``pid``."""
    with _lock:     # one thread at a time leaves its namespace; each returns before unlocking
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as e:
            os.close(own)
            raise NetnsError(e.errno, f"namespace of pid {pid}: {e.strerror}") from None
        try:
            _setns(target)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)
    sock.settimeout(timeout_s)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """The whole response: up to Content-Length when the server gives one (a keep-alive
    server need not close), else until it closes."""
    data = b""
    want = None
    while want is None or len(data) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if want is None and b"\r\n\r\n" in data:
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip() == "content-length" and value.strip().isdigit():
                    want = len(head) + 4 + int(value.strip())
    return data


def http_in(pid: int, address: str, port: int, path: str, method: str = "GET", body: bytes = b"",
            timeout_s: float = 1.0) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 request (Connection: close) to address:port inside the network namespace
    of process ``pid``. Raises :class:`NetnsError` (an OSError) when nothing answers."""
    try:
        sock = _connect_in(pid, address, port, timeout_s)
    except OSError as e:
        raise NetnsError(e.errno, f"{address}:{port} in the namespace of pid {pid}: {e.strerror or e}") from None
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {address}:{port}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/json\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + body)
        raw = _read_response(sock)
    except OSError as e:
        raise NetnsError(e.errno, f"{address}:{port}{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(header.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise NetnsError(0, f"{address}:{port}{path}: not an HTTP answer") from None
    return status, payload
