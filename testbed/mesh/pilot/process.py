"""Pilot as a process on the control-plane host, and the client of its admin socket.

    python -m testbed.mesh.pilot.process CONFIG.json

CONFIG (written by :mod:`testbed.mesh.deploy.mesh`)::

    {"services": [{"name", "port", "run", "versions": [{"name", "replicas", "hosts"}]}],
     "rules": ["rules.yaml", ...], "etcd": ["http://10.0.0.5:2379", ...],
     "listen": ["10.0.0.8", 15010], "events": "run/pilot-events.jsonl",
     "socket": "run/pilot.sock", "applied": "run/applied.jsonl", "hold_s": 15}

Every accepted apply is appended to ``applied`` (one JSON line per apply; a delete is a
line ``{"delete": [files]}``), and a restarted Pilot replays them after the topology's rules, so stopping Pilot loses no
config. Pilot serves xDS on ``listen`` (inside the testbed) and watches the registry with
:class:`~testbed.mesh.etcd.registry.Discovery`. A second HTTP server on the **unix socket**
``socket`` is the way in from the root namespace (a unix socket's path is reachable from
every network namespace that sees the file): ``POST /apply`` (same body and answers as
Pilot's own /apply), ``POST /delete`` (the same body; ``kubectl delete -f``), ``GET /rules``
(the applied rules with their YAML), ``GET /registry`` (a linearizable listing of etcd), ``GET /status``
(generation, endpoints, which nodes have ACKed everything), ``GET /syncz``, ``/healthz``,
``GET /proxy-status`` (per node and xDS type: SYNCED, STALE, NOT SENT) and
``GET /describe?service=NAME`` (:mod:`testbed.mesh.pilot.describe`).
:class:`AdminClient` speaks to it; ``minimesh apply`` / ``registry`` use it.

The process's body -- Pilot, the registry watch, the admin API's server -- is
:mod:`testbed.mesh.pilot.daemon`, which :func:`main` imports late: it loads aiohttp and
cryptography, and this module stays light for ``minimesh``.
"""
from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["AdminClient", "AdminUnavailable", "main"]


class AdminUnavailable(OSError):
    """Nobody answers on the admin socket (Pilot not running)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class AdminClient:
    """HTTP over Pilot's admin unix socket (root namespace, or any host)."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0):
        self.path, self.timeout_s = str(path), timeout_s

    def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.path, self.timeout_s)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, url, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
        except (ConnectionError, FileNotFoundError, socket.timeout) as e:
            raise AdminUnavailable(f"Pilot admin socket {self.path}: {e}") from None
        finally:
            conn.close()

    def get(self, url: str) -> Any:
        status, body = self.request("GET", url)
        if status != 200:
            raise RuntimeError(f"GET {url}: HTTP {status}: {body}")
        return body

    def apply_texts(self, files: list[tuple[str, str]]) -> tuple[bool, dict]:
        """All or nothing: (applied, body with generation and warnings or errors)."""
        status, body = self.request("POST", "/apply",
                                    {"files": [{"name": n, "text": t} for t, n in files]})
        if status not in (200, 400):
            raise RuntimeError(f"POST /apply: HTTP {status}: {body}")
        return bool(body["applied"]), body

    def delete_texts(self, files: list[tuple[str, str]]) -> tuple[int, dict]:
        """``kubectl delete -f``: (HTTP status, {deleted, generation, errors})."""
        status, body = self.request("POST", "/delete",
                                    {"files": [{"name": n, "text": t} for t, n in files]})
        if status not in (200, 400):
            raise RuntimeError(f"POST /delete: HTTP {status}: {body}")
        return status, body

    def apply_files(self, paths: list[str]) -> tuple[list[str], int]:
        """`minimesh apply -f`: (message lines, exit code 0 / 1 rejected / 2 unreachable)."""
        files = [(Path(p).read_text(), str(p)) for p in paths]
        try:
            ok, body = self.apply_texts(files)
        except AdminUnavailable as e:
            return [f"Error: cannot reach Pilot: {e}"], 2
        if not ok:
            return list(body["errors"]) + ["rejected: nothing was changed"], 1
        return list(body["warnings"]) + [f"applied {len(paths)} file(s): config version "
                                         f"{body['generation']}"], 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m testbed.mesh.pilot.process CONFIG.json", file=sys.stderr)
        return 2
    cfg = json.loads(Path(args[0]).read_text())
    # late: asyncio, aiohttp and cryptography (Pilot's server, the etcd client, the xDS
    # resources) are for the Pilot process only; AdminClient, above, is what `minimesh
    # apply`/`registry` load.
    import asyncio

    from testbed.mesh.pilot.daemon import run
    asyncio.run(run(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
