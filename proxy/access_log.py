"""Access logs in Envoy's default format or a configured ``log_format`` (proxy.access_log_format),
written in batches (flushed every second or 64 KiB)."""
from __future__ import annotations

import asyncio
import os
import sys
import time

__all__ = ["AccessLogs", "AccessLogger", "format_entry", "write_entries"]

FLUSH_INTERVAL_S = 1.0
FLUSH_BYTES = 64 * 1024


_second = [-1, ""]


def _start_time(wall: float) -> str:
    sec = int(wall)
    if _second[0] != sec:
        _second[0] = sec
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((wall - sec) * 1000):03d}Z"


_WANTED = (b"x-forwarded-for", b"user-agent", b"x-request-id")


def format_entry(stream, wall_start: float, duration_ms: int) -> str:
    """One line of Envoy's default access log format for a finished stream."""
    xff = agent = rid = None
    for k, v in stream.headers:           # first value of each, as Envoy's %REQ(...)%
        if k in _WANTED:
            if k == b"x-forwarded-for":
                xff = v if xff is None else xff
            elif k == b"user-agent":
                agent = v if agent is None else agent
            elif rid is None:
                rid = v
    proto = "HTTP/1.1" if stream.head.http_version == "1.1" else "HTTP/1.0"
    host = stream.upstream_host
    upstream = f"{host.address}:{host.port}" if host is not None else "-"
    ust = str(stream.upstream_ms) if stream.upstream_ms >= 0 else "-"
    return (f'[{_start_time(wall_start)}] "{stream.method.decode()} {stream.path.decode("latin-1")} {proto}" '
            f'{stream.status or 0} {stream.flag_string()} {stream.bytes_in} {stream.bytes_out} {duration_ms} {ust} '
            f'"{_req(xff)}" "{_req(agent)}" "{_req(rid)}" "{stream.host.decode("latin-1") or "-"}" "{upstream}"\n')


def _req(value: bytes | None) -> str:
    return "-" if value is None else value.decode("latin-1")


def write_entries(loggers: list, stream, wall_start: float, duration_ms: int) -> None:
    """Log a finished stream to each ``(logger, formatter or None)`` of a connection manager."""
    default = None
    for lg, fmt in loggers:
        if fmt is None:
            if default is None:
                default = format_entry(stream, wall_start, duration_ms)
            lg.write(default)
        else:
            lg.write(fmt(stream, wall_start, duration_ms))


class AccessLogger:
    def __init__(self, kind: str, path: str):
        self.kind = kind
        self.path = path
        self.buf: list[str] = []
        self.size = 0
        self._fd: int | None = None
        if kind == "file":
            d = os.path.dirname(path)
            if d and not os.path.isdir(d):
                raise OSError(f"access log directory {d!r} does not exist")
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        else:
            self._fd = (sys.stdout if kind == "stdout" else sys.stderr).fileno()

    def write(self, line: str) -> None:
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buf and self._fd is not None:
            data = "".join(self.buf).encode()
            self.buf.clear()
            self.size = 0
            try:
                os.write(self._fd, data)
            except OSError:
                pass

    def close(self) -> None:
        self.flush()
        if self.kind == "file" and self._fd is not None:
            os.close(self._fd)
        self._fd = None


class AccessLogs:
    """Shares one logger per destination and flushes all of them periodically."""

    def __init__(self) -> None:
        self.loggers: dict[tuple[str, str], AccessLogger] = {}
        self._timer: asyncio.TimerHandle | None = None

    def get(self, spec) -> AccessLogger:
        key = (spec.kind, spec.path)
        lg = self.loggers.get(key)
        if lg is None:
            lg = self.loggers[key] = AccessLogger(spec.kind, spec.path)
        return lg

    def get_formatted(self, spec) -> tuple:
        """(shared writer, formatter or None for Envoy's default format)."""
        from proxy.access_log_format import compile_format
        return self.get(spec), (compile_format(spec.log_format) if spec.log_format is not None else None)

    def start(self) -> None:
        self._timer = asyncio.get_event_loop().call_later(FLUSH_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        for lg in self.loggers.values():
            lg.flush()
        self._timer = asyncio.get_event_loop().call_later(FLUSH_INTERVAL_S, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for lg in self.loggers.values():
            lg.close()
