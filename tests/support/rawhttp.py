"""Raw-socket HTTP/1.1 probes: send exact bytes (malformed on purpose), read what comes
back until the proxy closes or goes quiet."""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

__all__ = ["RawAnswer", "probe"]


_STATUS = re.compile(rb"HTTP/1\.[01] \d{3}[^\r\n]*")


@dataclass(frozen=True)
class RawAnswer:
    status_line: str                # the first one; "" when nothing came back
    closed: bool                    # the proxy closed (or reset) the connection
    statuses: tuple[str, ...] = ()  # every status line, in order (pipelining, 100-continue)


def probe(port: int, data: bytes, quiet_s: float = 2.5, host: str = "127.0.0.1") -> RawAnswer:
    """Send ``data`` on a fresh connection; collect the answer until close or ``quiet_s``
    without bytes. The default outlasts Envoy's delayed_close_timeout (1 s): Envoy sends a
    400 and closes the connection about a second later."""
    buf, closed = b"", False
    with socket.create_connection((host, port), 3) as s:
        s.settimeout(quiet_s)
        try:
            s.sendall(data)
        except OSError:
            return RawAnswer("", True)
        deadline = time.monotonic() + 2 * quiet_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
    lines = tuple(m.group(0).decode("latin-1") for m in _STATUS.finditer(buf))
    return RawAnswer(buf.split(b"\r\n", 1)[0].decode("latin-1"), closed, lines)
