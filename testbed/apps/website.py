"""A static web site standing in for a public one inside the testbed (the tutorial's
gwadvnet20.github.io): answers every GET with a small HTML page that shows the Host header
it received, and appends one JSON line per request to ``--log`` (peer, method, path, host,
headers), so an experiment can check what arrived and from where.

    python -m testbed.apps.website --bind 10.0.0.3 --port 80 --site gwadvnet20.github.io --log web.jsonl

Lab knobs: ``--nagle`` serves as http.server does by default (Nagle on, headers and body in
two writes: the front_proxy lab's question 3); ``--fail-every N`` answers every N-th request
503 (a flaky upstream, the front_proxy lab's retry exercise; logged with ``"status": 503``).
The failure is transient, as a retry policy assumes: a request whose ``x-request-id`` was seen
before (a proxy's retry: Envoy and minimesh-proxy resend the same id) is not counted and is
answered 200. Counting attempts instead would make the outcome depend on how concurrent
requests interleave: under load a request's three attempts can all land on multiples of N.

Standard library only (http.server, HTTP/1.1 keep-alive): it runs under any python3.
"""
from __future__ import annotations

import argparse
import html
import json
import signal
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO

__all__ = ["PAGE_MARKER", "page", "make_server", "main"]

PAGE_MARKER = "minimesh stand-in for"
SEEN_MAX = 10_000          # request ids remembered for --fail-every (a retry comes within seconds)


def page(site: str, host_seen: str) -> bytes:
    s, h = html.escape(site), html.escape(host_seen)
    return (f"<!doctype html>\n<html><head><title>{s}</title></head><body>\n"
            f"<h1>{s}</h1>\n<p>This page is served inside the testbed: {PAGE_MARKER} {s}.</p>\n"
            f"<p>Host header this server received: <b>{h}</b></p>\n</body></html>\n").encode()


def make_server(bind: str, port: int, site: str, log: IO[str] | None, nagle: bool = False,
                fail_every: int = 0) -> ThreadingHTTPServer:
    lock = threading.Lock()
    served = [0]
    seen: OrderedDict[str, int] = OrderedDict()     # x-request-id -> attempts (the last SEEN_MAX)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "minimesh-website"
        # headers and body leave in one segment (flushed after each request), without Nagle:
        # http.server's default (unbuffered, two writes) holds the body until the headers are
        # ACKed — up to the client's 40 ms delayed ACK, an artifact no real web server has
        wbufsize = 0 if nagle else -1
        disable_nagle_algorithm = not nagle

        def _answer(self, with_body: bool) -> None:
            host = self.headers.get("Host", "")
            rid = self.headers.get("x-request-id")
            with lock:
                attempt = seen.get(rid, 0) + 1 if rid else 1
                if rid:
                    seen[rid] = attempt
                    seen.move_to_end(rid)
                    if len(seen) > SEEN_MAX:
                        seen.popitem(last=False)
                if attempt == 1:
                    served[0] += 1
                status = 503 if fail_every and attempt == 1 and served[0] % fail_every == 0 else 200
                if log is not None:
                    rec = {"peer": self.client_address[0], "method": self.command, "path": self.path,
                           "host": host, "headers": {k.lower(): v for k, v in self.headers.items()},
                           "status": status, "attempt": attempt}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            body = page(site, host) if status == 200 else b"flaky upstream: 503 (--fail-every)\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # http.server's name
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:  # quiet; --log has it
            pass

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testbed.apps.website", description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--site", default="gwadvnet20.github.io", help="the site this stands in for")
    p.add_argument("--log", help="append one JSON line per request to this file")
    p.add_argument("--nagle", action="store_true", help="Nagle on, headers and body in two writes "
                   "(http.server's default)")
    p.add_argument("--fail-every", type=int, default=0, metavar="N", help="answer every N-th request 503 "
                   "(a retry, same x-request-id, is answered 200)")
    a = p.parse_args(argv)
    if a.fail_every < 0:
        p.error(f"--fail-every {a.fail_every}: allowed 0 (never) or N >= 1")
    log = open(a.log, "a", encoding="utf-8") if a.log else None
    server = make_server(a.bind, a.port, a.site, log, nagle=a.nagle, fail_every=a.fail_every)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving {a.site} on {a.bind}:{a.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if log is not None:
            log.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
