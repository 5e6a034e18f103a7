"""Proxy processes under test: real Envoy (the oracle) and minimesh-proxy, same interface.

    with start_proxy("envoy", config_text, admin_port) as p:   # or "minimesh"
        ...  # p.pid, p.admin_get("/stats")

Both are started with the config written to a temp file, wait until the admin's
``/ready`` answers 200, and are stopped (SIGTERM, then SIGKILL) on every exit path.
Envoy runs ``--concurrency 1`` with a unique ``--base-id`` so parallel tests never share
its shared-memory region.
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tests.support.ports import unique_base_id

__all__ = ["ENVOY", "REPO", "ProxyProcess", "start_proxy", "validate", "proxy_argv",
           "minimesh_importable", "envoy_available"]

REPO = Path(__file__).resolve().parents[2]
ENVOY = os.environ.get("MINIMESH_ENVOY") or shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
KINDS = ("envoy", "minimesh")


def envoy_available() -> bool:
    return os.access(ENVOY, os.X_OK)


def minimesh_importable() -> tuple[bool, str]:
    """(True, "") if ``python -m proxy`` can be imported, else (False, the error)."""
    r = subprocess.run([sys.executable, "-c", "import proxy.__main__"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def proxy_argv(kind: str, config: str | Path, *, validate_only: bool = False) -> list[str]:
    if kind == "envoy":
        argv = [ENVOY, "-c", str(config), "--base-id", str(unique_base_id()), "--concurrency", "1",
                "--log-level", "warning", "--disable-hot-restart"]
    elif kind == "minimesh":
        argv = [sys.executable, "-m", "proxy", "-c", str(config)]
    else:
        raise ValueError(f"proxy kind {kind!r}; allowed: {', '.join(KINDS)}")
    return argv + (["--mode", "validate"] if validate_only else [])


def validate(kind: str, config: str | Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run ``<proxy> --mode validate -c config``; returns the finished process (rc, output)."""
    return subprocess.run(proxy_argv(kind, config, validate_only=True), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def _http_get(port: int, path: str, timeout_s: float = 2.0, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


@dataclass
class ProxyProcess:
    kind: str
    popen: subprocess.Popen
    admin_port: int
    workdir: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def admin_get(self, path: str) -> tuple[int, str]:
        return _http_get(self.admin_port, path)

    def log(self) -> str:
        return (self.workdir / "proxy.log").read_text(errors="replace")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.popen.returncode} before ready:\n"
                                   + self.log()[-3000:])
            try:
                if self.admin_get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready on admin port {self.admin_port} after "
                           f"{timeout_s}s:\n" + self.log()[-3000:])

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout_s)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ProxyProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_proxy(kind: str, config_text: str, admin_port: int, *, ready_timeout_s: float = 30,
                prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> ProxyProcess:
    """Start ``kind`` ("envoy" | "minimesh") on ``config_text``; wait for admin /ready.
    ``prefix`` is prepended to the command line (e.g. ``["taskset", "-c", "1"]``)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mmt-{kind}-"))
    config = workdir / "config.yaml"
    config.write_text(config_text)
    with open(workdir / "proxy.log", "wb") as log:
        popen = subprocess.Popen([*prefix, *proxy_argv(kind, config)], cwd=REPO, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})})
    proc = ProxyProcess(kind, popen, admin_port, workdir)
    try:
        proc.wait_ready(ready_timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc
