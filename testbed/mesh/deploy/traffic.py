"""Operations on a running :class:`~testbed.mesh.deploy.mesh.Mesh` (mixed into it): rules
(apply through Pilot's admin socket), status and registry, requests from mesh hosts
(through their sidecars), sidecar admin, logs, Pilot events; and the index of published
meshes (``<state dir>/mesh/<pid>.json``) that ``minimesh apply``/``registry`` read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from testbed.journal import proc_alive, state_dir

__all__ = ["ApplyError", "MeshError", "MeshTraffic", "running_meshes",
           "mesh_publish_dir", "terminate"]

from testbed.paths import REPO, child_env


def mesh_publish_dir() -> Path:
    return state_dir() / "mesh"


def running_meshes() -> list[dict]:
    """Published meshes whose runner is alive: {pid, topology, socket, pilot_url, ...}."""
    out = []
    for f in sorted(mesh_publish_dir().glob("*.json")) if mesh_publish_dir().is_dir() else []:
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if proc_alive(int(d.get("pid", 0)), d.get("start")):
            out.append(d)
    return out


class MeshError(RuntimeError):
    """The mesh could not be brought up or driven (names the process and its log)."""


class ApplyError(Exception):
    """Pilot rejected an apply; ``errors`` are Galley's messages. Nothing changed."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("apply rejected:\n" + "\n".join(errors))


class MeshTraffic:
    """Mixed into Mesh; needs ``tb``, ``python``, ``admin``, ``events``, ``_dir()``, ``_spec()``."""

    tb: Any
    python: str
    events: Path
    admin: Any

    def status(self) -> dict:
        """Pilot's /status: generation, registered endpoints, per-node sync."""
        return self.admin.get("/status")

    def registry(self) -> dict:
        return self.admin.get("/registry")

    def apply_text(self, text: str, name: str = "<text>") -> list[str]:
        return self.apply_texts([(text, name)])

    def apply_texts(self, files: list[tuple[str, str]]) -> list[str]:
        """All or nothing; returns warnings, raises ApplyError (nothing changed)."""
        ok, body = self.admin.apply_texts(files)
        if not ok:
            raise ApplyError(list(body["errors"]))
        return list(body["warnings"])

    def apply_files(self, paths: list[str | Path]) -> list[str]:
        return self.apply_texts([(Path(p).read_text(), str(p)) for p in paths])

    def curl(self, host: str, url: str, headers: dict[str, str] | None = None,
             timeout_s: float = 5.0) -> tuple[int, str]:
        """One request with curl inside ``host``: (HTTP status, body); status 0 = failed."""
        argv = ["curl", "-s", "-m", str(timeout_s), "-o", "-", "-w", "\n%{http_code}"]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        out, _, _ = self.tb.host(host).pexec(argv + [url])
        body, _, code = out.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def sidecar_admin(self, name: str, path: str = "/clusters", timeout_s: float = 3.0) -> str:
        """GET a sidecar's admin endpoint (``name``: an instance, or ``client@<host>``)."""
        if name.startswith("client@"):
            host, port = name.split("@", 1)[1], 15000
        else:
            inst = self._spec(name)
            host, port = inst.host, inst.admin_port
        out, err, code = self.tb.host(host).pexec(
            ["curl", "-s", "-m", str(timeout_s), f"http://127.0.0.1:{port}{path}"])
        if code != 0:
            raise MeshError(f"sidecar admin of {name} ({host}:{port}{path}): curl exit {code} {err}")
        return out

    def requests(self, host: str, url: str, n: int, headers: dict[str, str] | None = None,
                 timeout_s: float = 5.0) -> dict:
        """``n`` requests over one keep-alive connection from ``host`` (deploy_client)."""
        argv = [self.python, "-m", "testbed.mesh.deploy.load_client", url, "-n", str(n),
                "--timeout", str(timeout_s)]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        p = self.tb.popen(host, argv, cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          env=child_env())
        out, err = p.communicate(timeout=60 + n * timeout_s / 10)
        if p.returncode != 0:
            raise MeshError(f"load client on {host} failed: {err.decode(errors='replace')[-800:]}")
        return json.loads(out)

    def keylogs(self) -> dict[str, Path]:
        """Sidecar name (instance or ``client@<host>``) -> its NSS key log file
        (``mesh.security.keylog``; empty otherwise). For ``editcap --inject-secrets tls,FILE``."""
        sec = getattr(self, "security", None)
        return sec.keylogs() if sec is not None else {}

    # --- identity faults (testbed.mesh.citadel.faults) ------------------------------------

    def citadel_call(self, action: str, body: dict) -> dict:
        """Citadel's POST /v1/<action> (revoke, block, rotate_root), run with curl on the
        control-plane host (testbed subnets are not routed to the root namespace)."""
        from testbed.mesh.citadel.faults import citadel_curl_argv
        sec = getattr(self, "security", None)
        if sec is None or not sec.enabled:
            raise MeshError("no Citadel in this mesh: set mesh.security (docs/topology.md)")
        cp = self.spec.control_plane  # type: ignore[attr-defined]
        out, err, code = self.tb.host(cp).pexec(citadel_curl_argv(sec.url, action, body))
        if code != 0:
            raise MeshError(f"Citadel {action} on {cp}: curl exit {code}: {(out or err).strip()}")
        return json.loads(out)

    def restart_citadel(self) -> subprocess.Popen:
        """Kill what is left of the CA process and start it again (same --state-dir: same
        roots and revocations); returns once it answers."""
        procs = self._procs["citadel"]  # type: ignore[attr-defined]
        old = procs["server"]
        if old.poll() is None:
            old.kill()
        old.wait(5)
        cp = self.spec.control_plane  # type: ignore[attr-defined]
        procs["server"] = self.security.start(  # type: ignore[attr-defined]
            lambda a: self._spawn(cp, "citadel.server", a),  # type: ignore[attr-defined]
            lambda a: self.tb.host(cp).pexec(a)[2])
        return procs["server"]

    def fault_target(self) -> Any:
        """A :class:`~testbed.faults.targets.TestbedTarget` for the fault model. Processes
        by name — each instance (its app, sidecar and agent together), ``pilot``, every etcd
        member, and ``citadel`` when security is on — for crash/pause/resume (signals) and
        restart; plus ``citadel(action, body)`` for the identity faults. Names are looked up
        live, so a restarted process is the one signalled next."""
        from testbed.faults.targets import TestbedTarget
        m: Any = self
        procs: dict[str, Any] = {}
        restarters: dict[str, Any] = {}
        for inst in m.spec.instances:
            name = inst.instance
            procs[name] = _Live(lambda n=name: list(m._procs.get(n, {}).values()))
            restarters[name] = lambda n=name: m._respawn_instance(n)
        procs["pilot"] = _Live(lambda: [m._pilot] if m._pilot is not None else [])
        restarters["pilot"] = lambda: (m.stop_pilot(), m.start_pilot(), procs["pilot"])[-1]
        if m.etcd is not None:
            for member in m.spec.registry.members:
                procs[member] = _Live(lambda n=member: [m.etcd.handles[n]] if n in m.etcd.handles else [])
                restarters[member] = lambda n=member: (m.etcd.crash(n), m.etcd.restart(n), procs[n])[-1]
        if "citadel" in getattr(m, "_procs", {}):
            procs["citadel"] = _Live(lambda: [m._procs["citadel"]["server"]])
            restarters["citadel"] = lambda: (m.restart_citadel(), procs["citadel"])[-1]
        return TestbedTarget(self.tb, processes=procs, restarters=restarters,
                             citadel=self.citadel_call)

    def _respawn_instance(self, name: str) -> Any:
        """Restart an instance whatever state a fault left it in (killed, stopped)."""
        m: Any = self
        for p in m._procs.get(name, {}).values():
            if p.poll() is None:
                p.kill()
            p.wait()
        m._procs.pop(name, None)
        m.restart(name)
        return _Live(lambda: list(m._procs.get(name, {}).values()))

    def log(self, name: str) -> Path:
        """A process's log, e.g. log('echo-v1-0.sidecar'), log('pilot')."""
        return self._dir() / "logs" / f"{name}.log"

    def iter_events(self) -> Iterator[dict]:
        try:
            with open(self.events) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        except FileNotFoundError:
            return


class _Live:
    """Popen-like: signals whatever processes ``current()`` names at that moment."""

    def __init__(self, current: Any):
        self.current = current

    def send_signal(self, sig: int) -> None:
        alive = [p for p in self.current() if p is not None and p.poll() is None]
        if not alive:
            raise ProcessLookupError("not running")
        for p in alive:
            p.send_signal(sig)

    def poll(self) -> int | None:
        ps = [p for p in self.current() if p is not None]
        return None if any(p.poll() is None for p in ps) else 0


def terminate(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every live process, SIGKILL those still alive after ``timeout_s`` (in all)."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
