"""Access logs: Envoy's default format or a configured ``log_format``, written in batches
(flushed every second or 64 KiB).

``log_format``: Envoy's command operators, compiled once per logger.
``text_format_source.inline_string`` (or the older ``text_format``) is a template such as
``"[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\\n"``; ``json_format`` maps keys to such
templates and writes one JSON object per line.  As in Envoy, a JSON value that is exactly
one operator keeps its type (``%RESPONSE_CODE%`` is a number) and a missing value is
``null`` in JSON and ``-`` in text.  An operator minimesh does not implement is a
configuration error naming the field, never an empty column.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from proxy.config.reader import ConfigError, Obj

__all__ = ["AccessLogs", "AccessLogger", "format_entry", "write_entries",
           "LogFormat", "parse_log_format", "compile_format", "OPERATORS"]

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


# --- log_format ----------------------------------------------------------------------------------
_OP = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::(\d+))?%")
_HOSTNAME = socket.gethostname()


@dataclass(frozen=True)
class LogFormat:
    """``text`` (a template) or ``json`` (key -> template or nested mapping)."""
    text: str | None = None
    json: Any = None
    omit_empty_values: bool = False


def parse_log_format(o: Obj) -> LogFormat:
    kind = o.one_of(("text_format_source", "json_format", "text_format"))
    omit = o.take("omit_empty_values", False, bool)
    o.take("content_type", "", str)
    if kind == "json_format":
        fmt = LogFormat(json=o.take("json_format", kind=dict), omit_empty_values=omit)
        _check_json(fmt.json, o.sub("json_format"))
    elif kind == "text_format":
        fmt = LogFormat(text=o.take("text_format", kind=str), omit_empty_values=omit)
        compile_format(fmt, o.sub("text_format"))
    else:
        src = o.obj("text_format_source")
        assert src is not None
        fmt = LogFormat(text=src.take("inline_string", kind=str), omit_empty_values=omit)
        src.done()
        compile_format(fmt, src.sub("inline_string"))
    o.done()
    return fmt


def _check_json(tree: Any, path: str) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _check_json(v, f"{path}.{k}")
        elif isinstance(v, str):
            _template(v, f"{path}.{k}")
        elif not isinstance(v, (int, float, bool)) or v is None:
            raise ConfigError(f"{path}.{k}", f"expected a string, number or mapping, got {v!r}")


# --- operators: (stream, wall_start, duration_ms) -> value or None ------------------------------
def _header(headers: list, name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


def _req_header(stream, name: str):
    n = name.lower()
    if n == ":method":
        return stream.method.decode()
    if n == ":path":
        return stream.path.decode("latin-1")
    if n in (":authority", "host"):
        return stream.host.decode("latin-1") or None
    if n == ":scheme":
        return "http"
    return _header(stream.headers, n.encode())


def _resp(stream, name: str):
    return _header(stream.resp_headers, name.lower().encode())


def _alternatives(getter: Callable) -> Callable[[str], Callable]:
    def make(arg: str) -> Callable:
        names = arg.split("?")
        if not arg or len(names) > 2:
            raise ValueError("takes a header name, or two separated by '?'")

        def op(s, _w, _d):
            for n in names:
                v = getter(s, n)
                if v is not None:
                    return v
            return None
        return op
    return make


def _start_time_op(arg: str) -> Callable:
    if not arg:
        return lambda s, w, d: _start_time(w)

    def op(s, w, d):
        frac = w - int(w)
        out = arg
        for n in (9, 6, 3):
            out = out.replace(f"%{n}f", f"{int(frac * 10 ** n):0{n}d}")
        return time.strftime(out.replace("%f", f"{int(frac * 1e9):09d}"), time.gmtime(w))
    return op


def _upstream_host(s, w, d):
    h = s.upstream_host
    return f"{h.address}:{h.port}" if h is not None else None


def _no_arg(fn: Callable) -> Callable[[str], Callable]:
    def make(arg: str) -> Callable:
        if arg:
            raise ValueError("takes no argument")
        return fn
    return make


OPERATORS: dict[str, Callable[[str], Callable]] = {
    "START_TIME": _start_time_op,
    "REQ": _alternatives(_req_header),
    "RESP": _alternatives(_resp),
    "RESPONSE_CODE": _no_arg(lambda s, w, d: s.status or 0),
    "RESPONSE_FLAGS": _no_arg(lambda s, w, d: s.flag_string()),
    "BYTES_RECEIVED": _no_arg(lambda s, w, d: s.bytes_in),
    "BYTES_SENT": _no_arg(lambda s, w, d: s.bytes_out),
    "DURATION": _no_arg(lambda s, w, d: d),
    "PROTOCOL": _no_arg(lambda s, w, d: "HTTP/1.1" if s.head.http_version == "1.1" else "HTTP/1.0"),
    "UPSTREAM_HOST": _no_arg(_upstream_host),
    "UPSTREAM_CLUSTER": _no_arg(lambda s, w, d: s.cluster_name or None),
    "ROUTE_NAME": _no_arg(lambda s, w, d: s.route.name if s.route is not None else None),
    "DOWNSTREAM_REMOTE_ADDRESS": _no_arg(lambda s, w, d: "%s:%s" % tuple(s.conn.peer[:2])),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _no_arg(lambda s, w, d: str(s.conn.peer[0])),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _no_arg(lambda s, w, d: "%s:%s" % tuple(s.conn.peer[:2])),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _no_arg(lambda s, w, d: str(s.conn.peer[0])),
    "HOSTNAME": _no_arg(lambda s, w, d: _HOSTNAME),
    "UPSTREAM_SERVICE_TIME": _no_arg(lambda s, w, d: s.upstream_ms if s.upstream_ms >= 0 else None),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _no_arg(lambda s, w, d: None),
    "REQUESTED_SERVER_NAME": _no_arg(lambda s, w, d: None),
}


def _truncated(op: Callable, n: int) -> Callable:
    """``op`` with a string value cut to ``n`` characters (``%OPERATOR(...):n%``)."""
    def cut(s, w, d):
        v = op(s, w, d)
        return v[:n] if isinstance(v, str) else v
    return cut


def _template(text: str, path: str) -> list:
    """Literal strings and operator callables, in order."""
    parts: list = []
    pos = 0
    for m in _OP.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        name, arg, maxlen = m.group(1), m.group(2) or "", m.group(3)
        make = OPERATORS.get(name)
        if make is None:
            raise ConfigError(path, f"unsupported access log operator %{name}%; "
                              f"allowed: {', '.join('%' + k + '%' for k in OPERATORS)}")
        try:
            op = make(arg)
        except ValueError as e:
            raise ConfigError(path, f"%{name}({arg})%: {e}") from None
        if maxlen:
            op = _truncated(op, int(maxlen))
        parts.append(op)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return [p.replace("%%", "%") if isinstance(p, str) else p for p in parts]


def _render_text(parts: list, s, w, d) -> str:
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        else:
            v = p(s, w, d)
            out.append("-" if v is None or v == "" else str(v))
    return "".join(out)


def _json_value(parts: list, omit: bool, s, w, d):
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0](s, w, d)            # a single operator keeps its type
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    return _render_text(parts, s, w, d)


class _Nested(list):
    """A compiled JSON mapping: (key, value) pairs."""


def compile_format(fmt: LogFormat, path: str = "log_format") -> Callable[[Any, float, int], str]:
    """A function (stream, wall_start, duration_ms) -> one log line."""
    if fmt.text is not None:
        parts = _template(fmt.text, path)
        return lambda s, w, d: _render_text(parts, s, w, d)

    def build(tree: dict, p: str) -> _Nested:
        return _Nested((k, build(v, f"{p}.{k}") if isinstance(v, dict) else
                        (_template(v, f"{p}.{k}") if isinstance(v, str) else v)) for k, v in tree.items())

    compiled = build(fmt.json, path)
    omit = fmt.omit_empty_values

    def render(tree: _Nested, s, w, d) -> dict:
        out = {}
        for k, v in tree:
            if type(v) is _Nested:
                val = render(v, s, w, d)
            elif isinstance(v, list):
                val = _json_value(v, omit, s, w, d)
            else:
                val = v
            if omit and (val is None or val == ""):
                continue
            out[k] = val
        return out

    # Envoy writes the keys sorted (its JSON formatter goes through a protobuf Struct)
    return lambda s, w, d: json.dumps(render(compiled, s, w, d), separators=(",", ":"), sort_keys=True) + "\n"
