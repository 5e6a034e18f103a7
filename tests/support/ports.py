"""Free loopback ports and unique Envoy base ids."""
from __future__ import annotations

import itertools
import os
import socket

__all__ = ["free_port", "free_ports", "unique_base_id"]

_base_ids = itertools.count(1)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the kernel just handed out (all held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def unique_base_id() -> int:
    """An Envoy ``--base-id`` no other test process uses at the same time (pid-derived)."""
    return 100_000 + (os.getpid() % 50_000) * 20 + next(_base_ids) % 20
