"""A small HTTP load client for mesh hosts: N requests over one keep-alive connection.

    python -m testbed.mesh.deploy.load_client http://echo:8080/ -n 2000 -H "User-Agent: Android"

Run inside a mesh host (``Mesh.requests``); the name resolves to the service VIP and the
connection is captured by the host's sidecar. Prints one JSON object:
``{"n", "codes": {"200": n}, "versions": {"v1": n}, "errors": n, "elapsed_s",
"first_error"}``. The version is the ``x-echo-version`` response header, else the JSON
body's ``version`` field, else "-".
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

__all__ = ["run", "main"]


def run(url: str, n: int, headers: dict[str, str], timeout_s: float = 5.0) -> dict:
    u = urlsplit(url)
    host = u.hostname
    if host is None:
        raise ValueError(f"{url!r}: no host (expected http://HOST[:PORT]/PATH)")
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    codes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    errors, first_error = 0, ""
    conn = None
    t0 = time.monotonic()
    for _ in range(n):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, u.port or 80, timeout=timeout_s)
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            codes[str(r.status)] += 1
            version = r.getheader("x-echo-version")
            if version is None:
                try:
                    version = str(json.loads(body).get("version", "-"))
                except (ValueError, AttributeError):
                    version = "-"
            versions[version] += 1
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return {"n": n, "codes": dict(codes), "versions": dict(versions), "errors": errors,
            "elapsed_s": round(time.monotonic() - t0, 3), "first_error": first_error}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.mesh.deploy.load_client")
    p.add_argument("url")
    p.add_argument("-n", type=int, default=1)
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args(argv)
    headers = {}
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep:
            p.error(f"header {h!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    print(json.dumps(run(a.url, a.n, headers, a.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
