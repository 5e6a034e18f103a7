"""Bring a topology's ``mesh:`` section up on a running Testbed, and drive it.

    with Testbed(topo) as tb, Mesh(tb, topo.sections["mesh"]) as mesh:
        mesh.requests("h0", "http://echo:8080/", n=100)    # through h0's sidecar
        mesh.apply_text(open("rules.yaml").read(), "rules.yaml"); mesh.crash("echo-v1-0")

What runs where (every process through ``tb.popen``: journaled, killed on every exit):

* etcd members on ``registry.members``; Citadel (``mesh.security``, :mod:`testbed.mesh.deploy.security`)
  on the CP host;
* Pilot on the control-plane host (``python -m testbed.mesh.pilot.process``): xDS on
  ``<cp ip>:15010``, admin on the unix socket ``<run dir>/pilot.sock`` (how ``minimesh
  apply``/``registry`` reach it from the root namespace);
* per instance on its host: the app on ``127.0.0.1:<app_port>``, its sidecar (minimesh
  proxy or real Envoy) from ``pilot.resources.sidecar_bootstrap``, and a registration agent
  (``python -m testbed.mesh.deploy.agent``: etcd lease + keep-alive, revoke on SIGTERM);
* a client-only sidecar on each ``clients:`` host that runs no instance;
* names, VIP route and iptables capture on the mesh hosts (:mod:`testbed.mesh.deploy.net`).

``start()`` returns once every instance is registered and every sidecar has ACKed all of its
xDS subscriptions; the mesh is then published as ``<state dir>/mesh/<pid>.json``
(:func:`running_meshes`, what ``minimesh apply``/``registry`` read).

A running mesh takes rules (applied through Pilot's admin socket, all or nothing:
:class:`ApplyError`), answers status and registry queries, sends requests from mesh hosts
through their sidecars, reads sidecar admin pages, logs and Pilot's events, and is a fault
target (:meth:`Mesh.fault_target`: its processes, and Citadel for the identity faults of
:mod:`testbed.mesh.citadel.faults`, whose kinds importing this module registers).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from testbed.faults.targets import TestbedTarget
from testbed.journal import proc_alive, proc_start, state_dir
from testbed.mesh.citadel.faults import citadel_curl_argv
from testbed.mesh.deploy.net import Plumbing
from testbed.mesh.deploy.security import MeshSecurity
from testbed.mesh.etcd.cluster import EtcdCluster, EtcdMember, EtcdRunner, popen_probe
from testbed.mesh.pilot.process import AdminClient, AdminUnavailable
from testbed.mesh.pilot.resources import NodeInfo, sidecar_bootstrap
from testbed.mesh.spec import PILOT_PORT, SIDECARS, InstanceSpec, MeshSpec, app_argv
from testbed.net.running import RunningTestbed
from testbed.paths import REPO, child_env

__all__ = ["Mesh", "MeshError", "ApplyError", "InstanceInfo", "running_meshes", "mesh_publish_dir"]


class MeshError(RuntimeError):
    """The mesh could not be brought up or driven (names the process and its log)."""


class ApplyError(Exception):
    """Pilot rejected an apply; ``errors`` are Galley's messages. Nothing changed."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("apply rejected:\n" + "\n".join(errors))


@dataclass(frozen=True)
class InstanceInfo:
    service: str
    version: str
    instance: str
    host: str
    ip: str
    port: int
    app_port: int
    sidecar: str
    pids: dict[str, int]              # app, sidecar, agent (absent: not running)


class Mesh:
    """A ``mesh:`` section deployed on a started Testbed. Context manager."""

    def __init__(self, tb: RunningTestbed, spec: MeshSpec | None = None, sidecar_default: str = "minimesh",
                 run_dir: str | Path | None = None, ready_timeout_s: float = 40.0,
                 hold_s: float = 15.0, python: str = sys.executable, envoy: str | None = None,
                 keep_run_dir: bool = False, publish: bool = True, pilot_etcd: tuple[str, ...] = ()):
        if sidecar_default not in SIDECARS:
            raise ValueError(f"sidecar_default {sidecar_default!r}; allowed: {', '.join(SIDECARS)}")
        self.tb = tb
        self.spec = spec if spec is not None else tb.topology.sections["mesh"]
        self.sidecar_default = sidecar_default
        self.ready_timeout_s, self.hold_s = ready_timeout_s, hold_s
        self.python = python
        self.envoy = envoy or str(Path(python).parent / "envoy")
        self.keep_run_dir, self.publish = keep_run_dir, publish
        self.pilot_etcd = pilot_etcd      # members Pilot may use (default: all, in spec order)
        self._run_dir_arg = run_dir
        self.run_dir: Path | None = None
        self.etcd: EtcdRunner | None = None
        self.plumbing = Plumbing(tb)
        self._procs: dict[str, dict[str, subprocess.Popen]] = {}
        self._pilot: subprocess.Popen | None = None
        self._published: Path | None = None
        self._published_eid = 0
        self._run_dir_eid = 0         # journal entry of a run directory this mesh made
        self._started = False
        self.cp_ip = ""
        self.security: MeshSecurity | None = None     # Citadel (mesh.security): start()

    # --- paths and names --------------------------------------------------------------

    @property
    def events(self) -> Path:
        """Pilot's JSON-lines events (docs/control-plane.md)."""
        return self._dir() / "pilot-events.jsonl"

    @property
    def socket(self) -> Path:
        return self._dir() / "pilot.sock"

    @property
    def pilot_url(self) -> str:
        return f"http://{self.cp_ip}:{PILOT_PORT}"

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.socket)

    def _dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("mesh is not started")
        return self.run_dir

    def log(self, name: str) -> Path:
        """A process's log, e.g. log('echo-v1-0.sidecar'), log('pilot')."""
        return self._dir() / "logs" / f"{name}.log"

    def sidecar_kind(self, inst: InstanceSpec) -> str:
        return inst.sidecar or self.sidecar_default

    def node_id(self, inst: InstanceSpec) -> str:
        return self._node(inst).id

    def client_node_id(self, host: str) -> str:
        return NodeInfo.make(self.tb.ip(host), host, "client").id

    def sidecar_nodes(self) -> dict[str, str]:
        """Sidecar name (instance, or ``client@<host>``) -> xDS node id, for every sidecar
        running now (a crashed instance's is left out)."""
        out = {i.instance: self.node_id(i) for i in self.spec.instances
               if (p := self._procs.get(i.instance, {}).get("sidecar")) is not None and p.poll() is None}
        out.update({f"client@{h}": self.client_node_id(h) for h in self.spec.client_sidecar_hosts})
        return out

    def node_ids(self) -> list[str]:
        return [self.node_id(i) for i in self.spec.instances] + \
            [self.client_node_id(h) for h in self.spec.client_sidecar_hosts]

    def _node(self, inst: InstanceSpec) -> NodeInfo:
        return NodeInfo.make(inst.ip, inst.instance, inst.service,
                             labels={"app": inst.service, "version": inst.version},
                             app_port=inst.app_port, outbound_port=inst.outbound_port,
                             outbound_address="0.0.0.0" if inst.slot == 0 else "127.0.0.1")

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "Mesh":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Mesh":
        if self._started:
            return self
        self._started = True
        try:
            self.run_dir = Path(self._run_dir_arg) if self._run_dir_arg else self._make_run_dir()
            (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
            self.cp_ip = self.tb.ip(self.spec.control_plane)
            self.plumbing.set_names(dict(self.spec.vips), self.tb.host_names)
            for host in self.spec.mesh_hosts:
                self.plumbing.capture(host)
            self._start_etcd()
            self._start_citadel()
            self.start_pilot(wait=False)
            for inst in self.spec.instances:
                self._start_instance(inst)
            for host in self.spec.client_sidecar_hosts:
                self._start_client(host)
            self.wait_ready(self.ready_timeout_s)
            if self.publish:
                self._publish()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_run_dir(self) -> Path:
        """``<state dir>/mesh-XXXXXXXX``, journaled before it is made (etcd's preallocated
        WAL files, logs and pilot.sock live there): `clean` removes it after a SIGKILL."""
        base = state_dir()
        base.mkdir(parents=True, exist_ok=True)
        while True:
            path = base / f"mesh-{secrets.token_hex(4)}"
            eid = self.tb.journal.record("dir", path=str(path))
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:         # someone else's: not ours to remove
                self.tb.journal.forget(eid)
                continue
            self._run_dir_eid = eid
            return path

    def stop(self) -> list[str]:
        """Deregister (agents revoke their leases), stop every process, undo the
        plumbing. Idempotent; returns what could not be undone."""
        if not self._started:
            return []
        self._started = False
        errors: list[str] = []
        if self._published is not None:
            self._published.unlink(missing_ok=True)
            self.tb.journal.forget(self._published_eid)
            self._published = None
        agents = [p["agent"] for p in self._procs.values() if "agent" in p]
        _terminate(agents, 3.0)
        _terminate([p for procs in self._procs.values() for k, p in procs.items() if k != "agent"], 3.0)
        self._procs.clear()
        self.stop_pilot()
        if self.etcd is not None:
            try:
                self.etcd.stop()
            except Exception as e:  # reported with the other teardown errors
                errors.append(f"etcd stop: {e}")
        errors += self.plumbing.remove()
        if self._run_dir_eid:
            if not self.keep_run_dir:
                shutil.rmtree(self._dir(), ignore_errors=True)
            self.tb.journal.forget(self._run_dir_eid)
            self._run_dir_eid = 0
        return errors

    def _publish(self) -> None:
        d = mesh_publish_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{os.getpid()}.json"
        self._published_eid = self.tb.journal.record("path", path=str(path))  # gone after a crash too
        path.write_text(json.dumps({
            "pid": os.getpid(), "start": proc_start(os.getpid()), "topology": self.spec.source,
            "socket": str(self.socket), "pilot_url": self.pilot_url, "run_dir": str(self._dir()),
            "etcd": self.etcd_endpoints, "events": str(self.events)}))
        self._published = path

    # --- etcd, Citadel and Pilot -----------------------------------------------------------

    def _start_etcd(self) -> None:
        r = self.spec.registry
        cluster = EtcdCluster(
            members=tuple(EtcdMember(m, self.tb.ip(m)) for m in r.members),
            data_root=str(self._dir() / "etcd"), heartbeat_ms=r.heartbeat_ms,
            election_ms=r.election_ms, token=f"minimesh-{self._dir().name}")
        self.etcd = EtcdRunner(cluster, spawn=lambda m, argv: self.tb.popen(
            m.run_on, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            probe=popen_probe(self.tb.popen))
        self.etcd.start()

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"http://{self.tb.ip(m)}:2379" for m in self.spec.registry.members]

    def _start_citadel(self) -> None:
        self.security = sec = MeshSecurity(self.spec.security, self._dir(), self.cp_ip, self.python)
        if sec.enabled:  # in _procs: checked by wait_ready, stopped with the others
            cp = self.spec.control_plane
            self._procs["citadel"] = {"server": sec.start(lambda a: self._spawn(cp, "citadel.server", a),
                                                          lambda a: self.tb.host(cp).pexec(a)[2])}

    def restart_citadel(self) -> subprocess.Popen:
        """Kill what is left of the CA process and start it again (same --state-dir: same
        roots and revocations); returns once it answers."""
        assert self.security is not None
        procs = self._procs["citadel"]
        old = procs["server"]
        if old.poll() is None:
            old.kill()
        old.wait(5)
        cp = self.spec.control_plane
        procs["server"] = self.security.start(lambda a: self._spawn(cp, "citadel.server", a),
                                              lambda a: self.tb.host(cp).pexec(a)[2])
        return procs["server"]

    def start_pilot(self, wait: bool = True) -> None:
        if self._pilot is not None and self._pilot.poll() is None:
            return
        path = self._dir() / "pilot.json"
        path.write_text(json.dumps(self._pilot_config(), indent=1))
        self._pilot = self._spawn(self.spec.control_plane, "pilot",
                                  [self.python, "-m", "testbed.mesh.pilot.process", str(path)])
        if wait:
            self._wait(lambda: self._admin_ok(), 15.0, "Pilot's admin socket")

    def _pilot_config(self) -> dict:
        """The JSON file ``python -m testbed.mesh.pilot.process`` reads."""
        return {"services": [{"name": s.name, "port": s.port, "run": s.run, "versions": [
            {"name": v.name, "replicas": v.replicas, "hosts": list(v.hosts)} for v in s.versions]}
            for s in self.spec.services],
            "rules": list(self.spec.rules), "etcd": [f"http://{self.tb.ip(m)}:2379" for m in self.pilot_etcd]
            or self.etcd_endpoints,
            "listen": [self.cp_ip, PILOT_PORT], "events": str(self.events),
            "socket": str(self.socket), "applied": str(self._dir() / "applied.jsonl"),
            "hold_s": self.hold_s, "citadel": self.spec.security.citadel,
            "auto_mtls": self.spec.security.auto_mtls, "sds_root": str(self._dir() / "sds")}

    def stop_pilot(self) -> None:
        """Stop Pilot (SIGTERM); sidecars keep serving on their last config."""
        if self._pilot is not None:
            _terminate([self._pilot], 3.0)
            self._pilot = None

    def _admin_ok(self) -> bool:
        try:
            self.admin.get("/status")
            return True
        except (AdminUnavailable, RuntimeError, ValueError):
            return False

    # --- instances -----------------------------------------------------------------------

    def _start_instance(self, inst: InstanceSpec) -> None:
        procs: dict[str, subprocess.Popen] = {}
        self._procs[inst.instance] = procs
        procs["app"] = self._spawn(inst.host, f"{inst.instance}.app", app_argv(inst.run, inst, self.python))
        procs["sidecar"] = self._sidecar(inst.host, inst.instance, self._node(inst),
                                         inst.admin_port, self.sidecar_kind(inst))
        procs["agent"] = self._spawn(inst.host, f"{inst.instance}.agent", [
            self.python, "-m", "testbed.mesh.deploy.agent", "--etcd", ",".join(self.etcd_endpoints),
            "--service", inst.service, "--version", inst.version, "--instance", inst.instance,
            "--host", inst.host, "--ip", inst.ip, "--port", str(inst.port),
            "--app-port", str(inst.app_port), "--ttl", str(self.spec.registry.ttl_s)])

    def _start_client(self, host: str) -> None:
        node = NodeInfo.make(self.tb.ip(host), host, "client")
        self._procs.setdefault(f"client@{host}", {})["sidecar"] = self._sidecar(
            host, f"client@{host}", node, 15000, self.sidecar_default)

    def _sidecar(self, host: str, name: str, node: NodeInfo, admin_port: int,
                 kind: str) -> subprocess.Popen:
        # every sidecar keeps in the run dir an access log (JSON, Envoy's %RESPONSE_FLAGS% etc.)
        # and an outlier event log (EJECT/UNEJECT, Envoy's OutlierDetectionEvent JSON lines)
        logs = self._dir() / "logs"
        node = replace(node, access_log=str(logs / f"{name}.access.log"))
        boot = sidecar_bootstrap(node, (self.cp_ip, PILOT_PORT), admin_port,
                                 outlier_log=str(logs / f"{name}.outlier.log"))
        if self.security is not None:
            boot["node"]["metadata"].update(self.security.metadata(name, node.service, kind))
        path = self._dir() / f"{name}.bootstrap.json"
        path.write_text(json.dumps(boot, indent=1))
        if kind == "envoy":
            if self.security is not None and self.security.enabled:  # SDS files first
                self._procs.setdefault(name, {})["sds"] = self.security.start_sds(
                    lambda a: self._spawn(host, f"{name}.sds", a), node)
            argv = [self.envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                    "--log-level", "warning", "--file-flush-interval-msec", "50"]
        else:
            argv = [self.python, "-m", "proxy", "-c", str(path), "--log-level", "warning"]
        return self._spawn(host, f"{name}.sidecar", argv)

    def _spawn(self, host: str, name: str, argv: list[str]) -> subprocess.Popen:
        log = self._dir() / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            return self.tb.popen(host, argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=str(REPO), env=child_env())

    def _spec(self, instance: str) -> InstanceSpec:
        for i in self.spec.instances:
            if i.instance == instance:
                return i
        raise KeyError(f"no instance {instance!r}; instances: "
                       + ", ".join(i.instance for i in self.spec.instances))

    def crash(self, instance: str) -> None:
        """SIGKILL the instance's app, sidecar and agent (a host crash: the registration
        stays until its lease expires, within the TTL)."""
        self._spec(instance)
        procs = self._procs.pop(instance, {})
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for p in procs.values():
            p.wait()

    def kill_host(self, host: str) -> list[str]:
        """Crash every instance on ``host``; returns their names."""
        names = [i.instance for i in self.spec.instances if i.host == host]
        for n in names:
            self.crash(n)
        return names

    def restart(self, instance: str) -> None:
        inst = self._spec(instance)
        if instance in self._procs:
            raise RuntimeError(f"{instance} is running; crash() it first")
        self._start_instance(inst)

    def _respawn_instance(self, name: str, ready_timeout_s: float | None = None) -> "_Live":
        """Restart an instance whatever state a fault left it in (killed, stopped); with
        ``ready_timeout_s``, wait until the mesh is ready again."""
        for p in self._procs.get(name, {}).values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self._procs.pop(name, None)
        self.restart(name)
        if ready_timeout_s is not None:
            self.wait_ready(ready_timeout_s)
        return _Live(lambda: list(self._procs.get(name, {}).values()))

    def instances(self) -> list[InstanceInfo]:
        out = []
        for i in self.spec.instances:
            procs = self._procs.get(i.instance, {})
            out.append(InstanceInfo(i.service, i.version, i.instance, i.host, i.ip, i.port,
                                    i.app_port, self.sidecar_kind(i),
                                    {k: p.pid for k, p in procs.items() if p.poll() is None}))
        return out

    # --- readiness -------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 40.0, instances: list[str] | None = None) -> dict:
        """Until every (given) instance is registered and every running sidecar has ACKed."""
        want = set(instances if instances is not None else
                   [i.instance for i in self.spec.instances if i.instance in self._procs])
        nodes = set(self.sidecar_nodes().values())
        last: dict = {}

        def ready() -> bool:
            nonlocal last
            self._check_alive()
            try:
                last = self.status()
            except (AdminUnavailable, RuntimeError, ValueError):
                return False
            synced = {n for n, s in last["nodes"].items() if s["synced"]}
            return want <= set(last["endpoints"]) and nodes <= synced
        self._wait(ready, timeout_s, "the mesh to be ready",
                   lambda: f"registered {sorted(last.get('endpoints', []))} of {sorted(want)}; "
                           f"synced nodes: {sorted(n for n, s in last.get('nodes', {}).items() if s['synced'])}")
        return last

    def _check_alive(self) -> None:
        named = [(n, k, p) for n, procs in self._procs.items() for k, p in procs.items()]
        if self._pilot is not None:
            named.append(("pilot", "", self._pilot))
        for name, kind, p in named:
            if p.poll() is not None:
                log = self._dir() / "logs" / (f"{name}.{kind}.log" if kind else f"{name}.log")
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise MeshError(f"{name} {kind} exited with status {p.returncode}; {log}:\n{tail}")

    def _wait(self, cond: Any, timeout_s: float, what: str, detail: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise MeshError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                                + (f": {detail()}" if detail else ""))
            time.sleep(0.1)

    # --- rules, status and registry (Pilot's admin socket) ---------------------------------

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

    def delete_files(self, paths: list[str | Path]) -> tuple[list[str], list[str]]:
        """``kubectl delete -f``: (deleted ``Kind/name``, NotFound errors). Raises ApplyError
        (nothing deleted) when a file does not parse."""
        status, body = self.admin.delete_texts([(Path(p).read_text(), str(p)) for p in paths])
        if status != 200:
            raise ApplyError(list(body["errors"]))
        return list(body["deleted"]), list(body["errors"])

    def rules(self) -> list[dict]:
        """The applied rules (Pilot's ``GET /rules``): kind, namespace, name, file, line,
        age_s and ``manifest`` (the YAML document as applied)."""
        return list(self.admin.get("/rules")["rules"])

    def iter_events(self) -> Iterator[dict]:
        """Pilot's events so far (:attr:`events`), one dict per line."""
        try:
            with open(self.events) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        except FileNotFoundError:
            return

    # --- traffic from mesh hosts, through their sidecars -----------------------------------

    def curl(self, host: str, url: str, headers: dict[str, str] | None = None,
             timeout_s: float = 5.0) -> tuple[int, str]:
        """One request with curl inside ``host``: (HTTP status, body); status 0 = failed."""
        argv = ["curl", "-s", "-m", str(timeout_s), "-o", "-", "-w", "\n%{http_code}"]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        out, _, _ = self.tb.host(host).pexec(argv + [url])
        body, _, code = out.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def requests(self, host: str, url: str, n: int, headers: dict[str, str] | None = None,
                 timeout_s: float = 5.0) -> dict:
        """``n`` requests over one keep-alive connection from ``host``
        (:mod:`testbed.mesh.deploy.load_client`)."""
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

    def keylogs(self) -> dict[str, Path]:
        """Sidecar name (instance or ``client@<host>``) -> its NSS key log file
        (``mesh.security.keylog``; empty otherwise). For ``editcap --inject-secrets tls,FILE``."""
        return self.security.keylogs() if self.security is not None else {}

    # --- faults ------------------------------------------------------------------------------

    def citadel_call(self, action: str, body: dict) -> dict:
        """Citadel's POST /v1/<action> (revoke, block, rotate_root), run with curl on the
        control-plane host (testbed subnets are not routed to the root namespace)."""
        sec = self.security
        if sec is None or not sec.enabled:
            raise MeshError("no Citadel in this mesh: it opted out with mesh.security.citadel: false "
                            "(docs/topology.md)")
        cp = self.spec.control_plane
        out, err, code = self.tb.host(cp).pexec(citadel_curl_argv(sec.url, action, body))
        if code != 0:
            raise MeshError(f"Citadel {action} on {cp}: curl exit {code}: {(out or err).strip()}")
        return json.loads(out)

    def fault_target(self, ready_timeout_s: float | None = None) -> TestbedTarget:
        """A :class:`~testbed.faults.targets.TestbedTarget` for the fault model. Processes
        by name — each instance (its app, sidecar and agent together), ``pilot``, every etcd
        member, and ``citadel`` when security is on — for crash/pause/resume (signals) and
        restart; plus ``citadel(action, body)`` for the identity faults. Names are looked up
        live, so a restarted process is the one signalled next. With ``ready_timeout_s``, an
        instance's restart (a crash's revert) ends only once the mesh is whole again
        (:meth:`wait_ready`), so the fault's window closes when the instance serves."""
        procs: dict[str, Any] = {}
        restarters: dict[str, Any] = {}
        for inst in self.spec.instances:
            name = inst.instance
            procs[name] = _Live(lambda n=name: list(self._procs.get(n, {}).values()))
            restarters[name] = lambda n=name: self._respawn_instance(n, ready_timeout_s)
        procs["pilot"] = _Live(lambda: [self._pilot] if self._pilot is not None else [])
        restarters["pilot"] = lambda: self._restart_pilot(procs["pilot"])
        if self.etcd is not None:
            for member in self.spec.registry.members:
                procs[member] = _Live(lambda n=member: self._etcd_member(n))
                restarters[member] = lambda n=member: self._restart_etcd_member(n, procs[n])
        if "citadel" in self._procs:
            procs["citadel"] = _Live(lambda: [self._procs["citadel"]["server"]])
            restarters["citadel"] = lambda: (self.restart_citadel(), procs["citadel"])[-1]
        return TestbedTarget(self.tb, processes=procs, restarters=restarters,
                             citadel=self.citadel_call)

    def _restart_pilot(self, live: "_Live") -> "_Live":
        self.stop_pilot()
        self.start_pilot()
        return live

    def _etcd_member(self, name: str) -> list[Any]:
        """The etcd member's process while it runs (what a fault signals)."""
        handles = self.etcd.handles if self.etcd is not None else {}
        return [handles[name]] if name in handles else []

    def _restart_etcd_member(self, name: str, live: "_Live") -> "_Live":
        assert self.etcd is not None
        self.etcd.crash(name)
        self.etcd.restart(name)
        return live


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


def _terminate(procs: list[subprocess.Popen], timeout_s: float) -> None:
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


# --- the index of published meshes (what `minimesh apply`/`registry` read) -----------------

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
