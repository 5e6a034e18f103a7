"""One HTTP request/response exchange on a downstream connection.

A :class:`Stream` owns one instance of every configured HTTP filter, runs decode callbacks
in order and encode callbacks in reverse (the router is the terminal decoder), frames the
response for the downstream HTTP version and coalesces its writes.
"""
from __future__ import annotations

import ipaddress
import random
import time
from typing import Sequence

from proxy.filters.base import FLAG_ORDER, HttpFilter
from proxy.http.codec import LAST_CHUNK, RequestHead, encode_chunk, encode_response_head
from proxy.http.headers import ABSOLUTE_FORM, HOP_BY_HOP

__all__ = ["Stream", "http_date"]


class Stream:
    __slots__ = ("conn", "cfg", "head", "method", "path", "headers", "host", "route", "filters", "idx",
                 "stopped", "held", "flags", "t0", "status", "resp_headers", "req_done", "resp_started",
                 "resp_done", "keep_alive", "chunked_out", "bytes_in", "bytes_out", "upstream_host",
                 "cluster_name", "request_id", "end_at_headers", "upstream_ms", "head_only", "reset", "out")

    def __init__(self, conn, head: RequestHead):
        self.conn = conn
        self.cfg = conn.cfg
        self.head = head
        self.method = head.method
        self.path = head.target
        self.headers = head.headers
        self.flags: list[str] = []
        self.t0 = time.monotonic()
        self.status = 0
        self.resp_headers: list = []
        self.req_done = False
        self.resp_started = False
        self.resp_done = False
        self.keep_alive = head.keep_alive
        self.chunked_out = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_host = None
        self.cluster_name = ""
        self.request_id = b""
        self.upstream_ms = -1
        self.head_only = head.method == b"HEAD"
        self.end_at_headers = not head.chunked and not head.content_length
        self.stopped = False
        self.out: list = []
        self.held: list = []
        self.reset = False
        self.idx = 0

    # --- decode path ----------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        st = cfg.stats
        st.downstream_rq_total += 1
        st.downstream_rq_http1_total += 1
        st.downstream_rq_active += 1
        headers = self.headers
        if self.path[:1] != b"/" and ABSOLUTE_FORM.match(self.path):
            self.path = _absolute_form(self.path, headers)
        host = rid = None
        expect = dup_host = expect_seen = False
        for k, v in headers:
            if k == b"host":
                if host is not None:
                    dup_host = True
                    host += b"," + v
                else:
                    host = v
            elif k == b"x-request-id":
                rid = v
            elif k == b"expect":      # repeated, the joined value is no longer 100-continue (Envoy)
                expect = v.lower() == b"100-continue" and not expect_seen
                expect_seen = True
        if dup_host:
            # Envoy joins repeated Host headers into one value, as for any repeated header
            headers[:] = [(k, v) for k, v in headers if k != b"host"]
            headers.insert(0, (b"host", host))
        if expect:
            # like Envoy (proxy_100_continue off): answer 100 here, do not forward Expect
            headers[:] = [(k, v) for k, v in headers if k != b"expect"]
            self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if host is None:
            host = b""
        elif cfg.spec.strip_host_port:
            c = host.rfind(b":")
            if c > 0 and host[c + 1:].isdigit() and b"]" not in host[c:]:
                host = host[:c]
        self.host = host
        if rid is not None and cfg.spec.use_remote_address and not cfg.spec.preserve_external_request_id \
                and _external(self.conn.peer[0]):
            headers[:] = [(k, v) for k, v in headers if k != b"x-request-id"]    # edge: don't trust it
            rid = None
        if rid is None and cfg.spec.generate_request_id:
            rid = _request_id()
            headers.append((b"x-request-id", rid))
        self.request_id = rid or b""
        table = cfg.route_table
        self.route = table.route(host, self.path, headers) if table is not None else None
        self.filters: Sequence[HttpFilter] = [f() for f in cfg.factories]
        self.touch()
        if expect_seen and not expect:
            # Envoy: an Expect that is not one 100-continue fails here (417), never upstream
            self.send_local_reply(417)
            return
        self._decode_headers(0)

    def _decode_headers(self, i: int) -> None:
        filters = self.filters
        end = self.end_at_headers
        n = len(filters)
        while i < n:
            status = filters[i].decode_headers(self, end)
            if self.resp_started or self.reset:
                return
            i += 1
            if status and i < n:      # later filters wait; the stopping filter still gets data
                self.stopped = True
                self.idx = i
                return
        self.idx = n

    def continue_decoding(self) -> None:
        """Resume a chain stopped by a filter (e.g. after a fault delay)."""
        if not self.stopped or self.reset:
            return
        self.stopped = False
        self._decode_headers(self.idx)
        held, self.held = self.held, []
        for data, end in held:
            if self.stopped or self.resp_started:
                break
            self._decode_data(data, end)

    def _decode_data(self, data: bytes, end: bool) -> None:
        for f in self.filters:
            if f.decode_data(self, data, end) or self.resp_started:
                return

    def touch(self) -> None:
        """Activity: push the stream idle deadline (checked by the server's 1 s sweeper)."""
        t = self.cfg.spec.stream_idle_timeout_s
        self.conn.deadline = time.monotonic() + t if t else 0.0

    def on_downstream_data(self, data: bytes) -> None:
        self.touch()
        self.bytes_in += len(data)
        if self.resp_started and self.resp_done:
            return            # draining the body of a request already answered
        if self.stopped:
            self.held.append((data, False))
            if sum(len(d) for d, _ in self.held) > self.conn.buffer_limit:
                self.pause_downstream()
            return
        self._decode_data(data, False)

    def on_downstream_end(self) -> None:
        self.req_done = True
        if self.resp_done:
            self._finish()
            return
        if self.end_at_headers:
            return
        if self.stopped:
            self.held.append((b"", True))
        else:
            self._decode_data(b"", True)

    # --- flow control used by filters ---------------------------------------------------------
    def pause_downstream(self) -> None:
        self.conn._pause(1)

    def resume_downstream(self) -> None:
        self.conn._resume(1)

    def on_downstream_pause(self) -> None:
        r = self.filters[-1] if self.filters else None
        if r is not None and hasattr(r, "on_downstream_pause"):
            r.on_downstream_pause()

    def on_downstream_resume(self) -> None:
        r = self.filters[-1] if self.filters else None
        if r is not None and hasattr(r, "on_downstream_resume"):
            r.on_downstream_resume()

    # --- encode path ----------------------------------------------------------------------------
    def encode_headers(self, status: int, headers: list, end_stream: bool) -> None:
        self.status = status
        self.resp_headers = headers
        filters = self.filters
        for i in range(len(filters) - 2, -1, -1):
            filters[i].encode_headers(self, end_stream)
        self._write_head(end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        filters = self.filters
        for i in range(len(filters) - 2, -1, -1):
            filters[i].encode_data(self, data, end_stream)
        out = self.out
        if data and not self.head_only:
            self.bytes_out += len(data)
            out.append(encode_chunk(data) if self.chunked_out else data)
        if end_stream:
            if self.chunked_out and not self.head_only:
                out.append(LAST_CHUNK)
            self.resp_done = True       # before flush: the last write needs no idle push
            self.flush()
            if self.req_done:
                self._finish()
            elif not self.end_at_headers:
                self.keep_alive = False     # answered before the body arrived: close afterwards
                self._finish()

    def _write_head(self, end_stream: bool) -> None:
        cfg = self.cfg
        self.resp_started = True
        out = []
        length = None
        have_server = False
        for k, v in self.resp_headers:
            if k in HOP_BY_HOP:
                if k == b"content-length":
                    length = v
                continue
            if k == b"server":
                if cfg.server_mode == "OVERWRITE":
                    continue
                have_server = True
            out.append((k, v))
        if cfg.server_mode == "OVERWRITE" or (cfg.server_mode == "APPEND_IF_ABSENT" and not have_server):
            out.append((b"server", cfg.server_header))
        status = self.status
        if length is not None:
            out.append((b"content-length", length))
        elif end_stream:
            if status != 204 and status != 304 and status >= 200:
                out.append((b"content-length", b"0"))
        elif self.head.http_version == "1.1":
            out.append((b"transfer-encoding", b"chunked"))
            self.chunked_out = True
        else:
            self.keep_alive = False
        if not self.keep_alive or self.conn.closing:
            out.append((b"connection", b"close"))
        elif self.head.http_version == "1.0":
            out.append((b"connection", b"keep-alive"))
        self.out.append(encode_response_head(status, out))
        if end_stream:
            self.resp_done = True
            self.flush()
            if self.req_done:
                self._finish()
            elif not self.end_at_headers:
                self.keep_alive = False
                self._finish()

    def flush(self) -> None:
        """Write what the encode path produced (coalesced: one write per upstream read)."""
        out = self.out
        if out:
            if not self.resp_done:
                self.touch()
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            t = self.conn.transport
            if not t.is_closing():
                t.write(data)

    def send_local_reply(self, status: int, body: bytes = b"", flag: str | None = None,
                         headers: list | None = None) -> None:
        if flag is not None:
            self.flags.append(flag)
        if self.resp_started:
            self.conn.close()
            self.downstream_reset()
            return
        h = list(headers or ())
        h.append((b"content-length", b"%d" % len(body)))
        if body:
            h.append((b"content-type", b"text/plain"))
        h.append((b"date", http_date()))
        self.encode_headers(status, h, not body)
        if body:
            self.encode_data(body, True)

    # --- completion -----------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.reset:
            return
        self.reset = True      # no further callbacks
        cfg = self.cfg
        st = cfg.stats
        st.downstream_rq_active -= 1
        st.downstream_rq_completed += 1
        codes = st.codes
        codes[self.status] = codes.get(self.status, 0) + 1
        self._destroy_filters()
        cfg.ctx.record(self)
        self.conn.stream_finished(self, self.keep_alive)

    def downstream_reset(self) -> None:
        """The downstream connection went away mid-stream."""
        if self.reset:
            return
        self.reset = True
        st = self.cfg.stats
        st.downstream_rq_active -= 1
        st.downstream_rq_rx_reset += 1
        if not self.resp_started:
            self.flags.append("DC")
        self._destroy_filters()
        self.cfg.ctx.record(self)

    def _destroy_filters(self) -> None:
        """on_destroy for each filter, then drop them: filters point back at the stream, and
        breaking that cycle lets reference counting free a finished stream at once instead of
        leaving ~20 objects per request to the cyclic garbage collector."""
        for f in self.filters:
            f.on_destroy()
        self.filters = ()

    def flag_string(self) -> str:
        if not self.flags:
            return "-"
        return ",".join(sorted(set(self.flags), key=lambda f: FLAG_ORDER.index(f) if f in FLAG_ORDER else 99))


_getrandbits = random.getrandbits


def _absolute_form(target: bytes, headers: list) -> bytes:
    """Absolute-form request target (forward-proxy style, ``curl -x``): like Envoy, the
    authority (without userinfo) replaces Host and the rest is forwarded as the path;
    ``http://h`` becomes ``/``, ``http://h?q`` keeps ``?q`` as the path (and so matches no
    prefix route, as in Envoy)."""
    rest = target[target.index(b"//") + 2:]
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    at = authority.rfind(b"@")
    if at >= 0:
        authority = authority[at + 1:]
    headers[:] = [(k, v) for k, v in headers if k != b"host"]
    headers.insert(0, (b"host", authority))
    return path or b"/"


def _external(ip: str) -> bool:
    """Envoy's notion of an external client: not loopback, RFC 1918 or link-local."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (a.is_private or a.is_loopback or a.is_link_local)


def _request_id() -> bytes:
    """A random (version 4) UUID as bytes; x-request-id needs uniqueness, not secrecy."""
    h = b"%032x" % ((_getrandbits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60))
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


_date_cache: tuple[int, bytes] = (0, b"")       # (second, its Date header value)


def http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode())
    return _date_cache[1]
