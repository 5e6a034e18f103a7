"""Citadel in a deployed mesh (``mesh.security``, docs/topology.md): the CA process on the
control-plane host and what each sidecar's bootstrap needs to use it.

    sec = MeshSecurity(spec.security, run_dir, cp_ip)
    proc = sec.start(spawn, popen)           # python -m testbed.mesh.citadel.server on the CP host
    boot["node"]["metadata"].update(sec.metadata("echo-v1-0", "echo"))
    sec.keylogs()                            # {sidecar name: <run>/keylog/<name>.keys}

* Citadel listens on ``<cp ip>:15012`` (``CITADEL_PORT``) with its state (roots,
  revocations) in ``<run dir>/citadel``; the sidecars fetch their first certificate before
  opening any socket, so :meth:`MeshSecurity.start` waits until Citadel answers.
* Identities: an instance's sidecar is ``spiffe://cluster.local/ns/default/sa/<service>``;
  a client-only sidecar (a ``clients:`` host without an instance) is ``sa/client`` on
  every client host (its xDS node is service ``client``; Citadel only issues the service
  the node id names).
* Key logs (``keylog: true``): one NSS key log per sidecar,
  ``<run dir>/keylog/<instance>.keys`` or ``client@<host>.keys`` (in ``keylog_dir`` instead
  when ``minimesh up --capture`` sets it, so they outlive the run dir), for
  ``tshark -o tls.keylog_file:FILE`` / ``editcap --inject-secrets tls,FILE``.
* Real Envoy (``sidecar: envoy``) reads its secrets from SDS files that Pilot names
  (``pilot.security.sds_dir``: ``$MINIMESH_SDS_ROOT/<node instance>``; the deployer gives
  Pilot ``MINIMESH_SDS_ROOT=<run dir>/sds``). An SDS agent next to each Envoy sidecar,
  ``python -m testbed.mesh.deploy.security --citadel URL ...`` (:func:`main`), keeps them
  current with a :class:`~proxy.tls.rotator.CertificateRotator` and
  ``citadel.envoy.write_sds``. Envoy sidecars write no key log.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from testbed.aio import stop_event
from testbed.mesh.citadel.envoy import write_sds
from testbed.mesh.pilot.security import citadel_metadata
from testbed.mesh.spec import CITADEL_PORT, SecuritySpec

__all__ = ["MeshSecurity", "SecurityUnavailable"]


class SecurityUnavailable(RuntimeError):
    """Citadel did not come up (names its log)."""


class MeshSecurity:
    def __init__(self, spec: SecuritySpec, run_dir: Path, cp_ip: str, python: str = "python3",
                 bundle_refresh_s: float = 2.0):
        self.spec, self.run_dir, self.cp_ip = spec, Path(run_dir), cp_ip
        self.python, self.bundle_refresh_s = python, bundle_refresh_s
        self._keylogs: dict[str, Path] = {}

    @property
    def enabled(self) -> bool:
        return self.spec.citadel

    @property
    def url(self) -> str:
        return f"http://{self.cp_ip}:{CITADEL_PORT}"

    def argv(self) -> list[str]:
        return [self.python, "-m", "testbed.mesh.citadel.server", "--host", self.cp_ip,
                "--port", str(CITADEL_PORT), "--trust-domain", self.spec.trust_domain,
                "--ttl-s", f"{self.spec.cert_ttl_s:g}",
                "--max-ttl-s", f"{max(self.spec.cert_ttl_s, 86400.0):g}",
                "--state-dir", str(self.run_dir / "citadel")]

    def start(self, spawn: Callable[[list[str]], subprocess.Popen],
              probe: Callable[[list[str]], int], timeout_s: float = 15.0) -> subprocess.Popen:
        """``spawn(argv)`` runs Citadel on the CP host; ``probe(argv)`` runs curl there and
        returns its exit code. Returns the Citadel process once it answers."""
        (self.run_dir / "citadel").mkdir(parents=True, exist_ok=True)
        proc = spawn(self.argv())
        check = ["curl", "-s", "-o", "/dev/null", "-m", "1", "-f", f"{self.url}/v1/trust_bundle"]
        deadline = time.monotonic() + timeout_s
        while probe(check) != 0:
            if proc.poll() is not None:
                raise SecurityUnavailable(f"citadel exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise SecurityUnavailable(f"citadel did not answer on {self.url} within {timeout_s:g} s")
            time.sleep(0.1)
        return proc

    def metadata(self, name: str, service: str, kind: str = "minimesh") -> dict[str, Any]:
        """Bootstrap ``node.metadata`` keys for the sidecar ``name`` ({} with Citadel off)."""
        if not self.enabled or kind != "minimesh":
            return {}     # real Envoy: SDS files from sds_agent_argv's process
        keylog = ""
        if self.spec.keylog:
            path = Path(self.spec.keylog_dir or self.run_dir / "keylog") / f"{name}.keys"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            self._keylogs[name] = path
            keylog = str(path)
        return citadel_metadata(self.url, service, cert_ttl_s=self.spec.cert_ttl_s, keylog=keylog,
                                bundle_refresh_s=self.bundle_refresh_s,
                                renew_fraction=self.spec.renew_fraction)

    @property
    def sds_root(self) -> Path:
        return self.run_dir / "sds"

    def sds_agent_argv(self, instance: str, node_id: str, service: str) -> list[str]:
        """The SDS agent for a real-Envoy sidecar whose xDS node has ``instance``/``node_id``."""
        return [self.python, "-m", "testbed.mesh.deploy.security", "--citadel", self.url,
                "--service", service, "--node-id", node_id, "--dir", str(self.sds_root / instance),
                "--ttl-s", f"{self.spec.cert_ttl_s:g}", "--renew-fraction", f"{self.spec.renew_fraction:g}",
                "--bundle-refresh-s", f"{self.bundle_refresh_s:g}"]

    def start_sds(self, spawn: Callable[[list[str]], subprocess.Popen], node: Any) -> subprocess.Popen:
        """``spawn(argv)`` the SDS agent for a real-Envoy sidecar's xDS ``node``; returns it
        once the first secrets are written."""
        proc = spawn(self.sds_agent_argv(node.instance, node.id, node.service))
        self.wait_sds(node.instance, proc)
        return proc

    def wait_sds(self, instance: str, proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
        """Until the agent has written the first secrets (Envoy then finds them at once)."""
        done = self.sds_root / instance / "ca.json"
        deadline = time.monotonic() + timeout_s
        while not done.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SecurityUnavailable(f"SDS agent for {instance} wrote no certificate within "
                                          f"{timeout_s:g} s (status {proc.poll()})")
            time.sleep(0.05)

    def keylogs(self) -> dict[str, Path]:
        """Sidecar name -> its NSS key log (empty unless ``keylog: true``)."""
        return dict(self._keylogs)


async def _agent(args: argparse.Namespace) -> None:
    from proxy.tls.rotator import CertificateRotator    # late: aiohttp, for the SDS agent only (not the runner)
    rotator = CertificateRotator(args.citadel, args.service, lambda m: write_sds(m, args.dir),
                                 node_id=args.node_id, ttl_s=args.ttl_s,
                                 renew_fraction=args.renew_fraction,
                                 bundle_refresh_s=args.bundle_refresh_s)
    await rotator.start()
    print(f"sds agent: {args.service} secrets in {args.dir}", flush=True)
    await stop_event().wait()
    await rotator.stop()


def main(argv: list[str] | None = None) -> int:
    """SDS agent for one real-Envoy sidecar (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m testbed.mesh.deploy.security")
    p.add_argument("--citadel", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--ttl-s", type=float)
    p.add_argument("--renew-fraction", type=float, default=0.5)
    p.add_argument("--bundle-refresh-s", type=float, default=2.0)
    asyncio.run(_agent(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
