"""Identity faults scheduled by the fault model on a secure Mininet mesh (root).

Hosts: `c` (a client-only sidecar, principal sa/client), `h1` (service echo), `e1` etcd,
`cp` Pilot + Citadel. STRICT mTLS from boot; certificates live CERT_TTL_S seconds and are
renewed at RENEW_FRACTION of their life, so expiry happens within the test.

A probe loop on `c` calls http://echo:8080/ every ~0.1 s through the client sidecar and
prints (wall time, HTTP code). Open upstream connections keep the peer they verified at
their handshake (as in Envoy), so the loop closes the client sidecar's upstream connections
(`ss -K`) before each request: every request is a new mTLS handshake, the place where
revocation and expiry are checked.

1. ``cert-revoke`` of service `client`, scheduled right after the client renewed: echo's
   sidecar refuses the revoked certificate (``ssl.rejected.revoked`` in its /stats, a
   ``reason=revoked`` line in its log), the client gets 503s, until its next renewal.
2. ``ca-stop`` (kill Citadel, revert = restart it) for CA_DOWN_S > CERT_TTL_S: the sidecars'
   renewals fail (``citadel.failures`` grows), the certificates expire, requests fail; after
   the revert every request succeeds again within RECOVER_S.
Both schedules are recorded in a History and end healed. Names carry a per-run prefix; the
Testbed and Mesh context managers remove everything on every exit path.
"""
from __future__ import annotations

import json
import random
import signal
import string
import subprocess
import threading
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

CERT_TTL_S = 6.0
RENEW_FRACTION = 0.8        # renewal 4.8 s after each fetch
CA_DOWN_S = 8.0             # > CERT_TTL_S: every certificate expires while the CA is down
RECOVER_S = 10.0            # rotator retries back off to 5 s (+-20 %), plus Citadel's start

STRICT = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""


def topology_text(p: str, rules) -> str:
    hosts = ["c", "h1", "e1", "cp"]
    lines = ["name: meshidf", "hosts:", *[f"  {p}{h}: {{}}" for h in hosts],
             "switches:", f"  {p}s: {{}}", "links:", *[f"  - {{between: [{p}{h}, {p}s]}}" for h in hosts]]
    return "\n".join(lines) + f"""
mesh:
  registry: {{members: [{p}e1], heartbeat_ms: 50, election_ms: 500, ttl_s: 2}}
  control_plane: {{host: {p}cp}}
  security: {{cert_ttl_s: {CERT_TTL_S}, renew_fraction: {RENEW_FRACTION}}}
  rules: [{rules}]
  clients: [{p}c]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{hosts: [{p}h1]}}}}}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology

    p = "mi" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    rules = tmp_path_factory.mktemp("rules") / "strict.yaml"
    rules.write_text(STRICT)
    topo = parse_topology(topology_text(p, rules), "<test_mesh_identity_faults>")
    with Testbed(topo, link_backend="auto") as tb:
        with Mesh(tb, topo.sections["mesh"]) as m:
            m.prefix = p
            yield m


class Probe:
    """The probe loop on the client host; ``results()``: [(wall time, HTTP code)]."""

    def __init__(self, m) -> None:
        echo_ip = m.tb.ip(m.prefix + "h1")
        loop = (f"while :; do ss -K -tn dst {echo_ip} dport = :8080 >/dev/null 2>&1; "
                "t=$(date +%s.%N); c=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "
                "http://echo:8080/); echo \"$t $c\"; sleep 0.1; done")
        self.proc = m.tb.popen(m.prefix + "c", ["sh", "-c", loop], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        self.lines: list[tuple[float, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for ln in self.proc.stdout:
            t, _, c = ln.strip().partition(" ")
            if c.isdigit():
                self.lines.append((float(t), int(c)))

    def results(self, since: float = 0.0) -> list[tuple[float, int]]:
        return [r for r in list(self.lines) if r[0] >= since]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(5)
        self._reader.join(5)


def stat(m, sidecar: str, name: str) -> int:
    for ln in m.sidecar_admin(sidecar, "/stats").splitlines():
        k, _, v = ln.partition(":")
        if k.strip() == name:
            return int(float(v))
    return 0


def wait_for_renewal(m, client: str, timeout_s: float = 2 * CERT_TTL_S) -> None:
    """Returns just after the client sidecar fetched a new certificate."""
    n0 = stat(m, client, "citadel.renewals")
    deadline = time.monotonic() + timeout_s
    while stat(m, client, "citadel.renewals") == n0:
        assert time.monotonic() < deadline, "client sidecar did not renew its certificate"
        time.sleep(0.05)


def wait_ok(probe: Probe, since: float, n: int, timeout_s: float) -> float:
    """Wall time of the first of ``n`` consecutive 200s after ``since``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rs = probe.results(since)
        for i in range(len(rs) - n + 1):
            if all(c == 200 for _, c in rs[i:i + n]):
                return rs[i][0]
        time.sleep(0.1)
    raise AssertionError(f"no {n} consecutive 200s within {timeout_s} s: {probe.results(since)[-30:]}")


def wait_first_failure(probe: Probe, since: float, timeout_s: float) -> float:
    """Wall time of the first non-200 answer after ``since``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        bad = [t for t, c in probe.results(since) if c != 200]
        if bad:
            return bad[0]
        time.sleep(0.1)
    raise AssertionError(f"no refusal within {timeout_s} s of the fault: {probe.results(since)[-30:]}")


def play(target, schedule, tmp_path, name: str, until_s: float):
    from testbed.faults.schedule import run_schedule
    from testbed.history import History, RunClock
    clock = RunClock()
    path = tmp_path / f"{name}.jsonl"
    with History(path, clock) as hist:
        ops = run_schedule(schedule, target, clock, hist, until_s=until_s)
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return clock, ops, [r for r in records if r.get("type") == "fault"]


def test_revoke_then_ca_stop_fail_visibly_and_heal(mesh, tmp_path):
    from testbed.faults.schedule import at
    from testbed.mesh.citadel.faults import CAStop, CertRevoke

    client, server = f"client@{mesh.prefix}c", "echo-v1-0"
    target = mesh.fault_target()
    probe = Probe(mesh)
    try:
        t_start = time.time()
        wait_ok(probe, t_start, 5, 10)

        # --- 1. revoke the client's certificate right after it renewed --------------------
        wait_for_renewal(mesh, client)
        clock, ops, faults = play(target, at(0.2, CertRevoke("client")), tmp_path, "revoke", 0.3)
        t_revoke = clock.wall0 + faults[0]["t_start"]
        assert [(f["phase"], f["fault"]["kind"], f["ok"]) for f in faults] == \
            [("apply", "cert-revoke", True)], faults
        assert ops[0].state["revoked"], ops[0]          # at least the client's current serial
        # the server sidecar learns revoked serials with its trust-bundle refresh (every 2 s):
        # wait for the first refusal, then for recovery (the client's next renewal)
        t_fail = wait_first_failure(probe, t_revoke, 2.0 + 3.0)
        t_back = wait_ok(probe, t_fail, 5, 2 * CERT_TTL_S)
        window = probe.results(t_revoke)
        failed = [(t, c) for t, c in window if t < t_back and c != 200]
        assert failed and all(c == 503 for _, c in failed), window
        stats = mesh.sidecar_admin(server, "/stats")
        rejected = [ln for ln in stats.splitlines() if "ssl.rejected.revoked" in ln]
        assert rejected and int(rejected[0].rsplit(":", 1)[1]) >= 1, rejected
        log = mesh.log(f"{server}.sidecar").read_text()
        assert "reason=revoked" in log, log[-1500:]
        revoke_fail_s = failed[-1][0] - failed[0][0]
        revoke_recover_s = t_back - t_revoke
        # the client renews RENEW_FRACTION * TTL after its last fetch: recovered by then
        # (+2 s: the renewal round trip and the next probe, on 2 shared cores)
        assert revoke_recover_s <= RENEW_FRACTION * CERT_TTL_S + 2.0, revoke_recover_s

        # --- 2. stop the CA for longer than a certificate lives ----------------------------
        wait_for_renewal(mesh, client)
        fail0 = stat(mesh, client, "citadel.failures")
        clock, ops, faults = play(target, at(0.2, CAStop(), for_s=CA_DOWN_S), tmp_path, "castop",
                                  CA_DOWN_S + 0.5)
        assert [(f["phase"], f["fault"]["kind"], f["ok"]) for f in faults] == \
            [("apply", "ca-stop", True), ("revert", "ca-stop", True)], faults
        t_stop, t_revert = (clock.wall0 + f["t_start"] for f in faults)
        t_revert_end = clock.wall0 + faults[1]["t_end"]
        down = probe.results(t_stop)
        assert stat(mesh, client, "citadel.failures") > fail0
        assert stat(mesh, server, "citadel.failures") >= 1
        # certificates expire CERT_TTL_S after the last renewal (just before t_stop) ...
        expired = [(t, c) for t, c in down if t_stop + CERT_TTL_S + 0.5 <= t < t_revert]
        assert expired and all(c != 200 for _, c in expired), down
        # ... and nothing failed before the first one could expire: echo's sidecar renews on
        # its own phase, its certificate has >= (1 - RENEW_FRACTION) * TTL left at t_stop
        early = [(t, c) for t, c in down if t < t_stop + (1 - RENEW_FRACTION) * CERT_TTL_S]
        assert early and all(c == 200 for _, c in early), early
        t_ok = wait_ok(probe, t_revert, 5, RECOVER_S + 5)
        ca_recover_s = t_ok - t_revert_end
        assert ca_recover_s <= RECOVER_S, ca_recover_s
        assert mesh._procs["citadel"]["server"].poll() is None     # healed: the CA runs
        assert "reason=expired" in (mesh.log(f"{server}.sidecar").read_text()
                                    + mesh.log(f"client@{mesh.prefix}c.sidecar").read_text())
        print(f"\nrevoke: {len(failed)} failed probes over {revoke_fail_s:.1f} s, success "
              f"{revoke_recover_s:.1f} s after the revoke; ca-stop: {len(expired)} failed "
              f"probes after expiry (codes {sorted({c for _, c in expired})}), success "
              f"{ca_recover_s:.1f} s after the CA restarted")
    finally:
        probe.stop()


def test_root_rotation_with_activation_delay_loses_no_request(mesh, tmp_path):
    """``ca-root-rotate`` with ``activate_after_s`` > the sidecars' bundle refresh (2 s): every
    sidecar trusts the new root before any certificate is issued under it, and every
    certificate is reissued under it within a renewal period, without a failed request."""
    from testbed.faults.schedule import at
    from testbed.mesh.citadel.faults import RootRotate

    client, server = f"client@{mesh.prefix}c", "echo-v1-0"
    activate_s = 3.0
    probe = Probe(mesh)
    try:
        wait_ok(probe, time.time(), 5, 15)          # (after the previous test, if it ran)
        clock, ops, faults = play(mesh.fault_target(), at(0.2, RootRotate(activate_s)),
                                  tmp_path, "rotate", 0.3)
        assert [(f["phase"], f["fault"]["kind"], f["ok"]) for f in faults] == \
            [("apply", "ca-root-rotate", True)], faults
        gen = ops[0].state["generation"]
        assert gen >= 2, ops[0]
        t_rotate = clock.wall0 + faults[0]["t_start"]
        # renewals after the activation are issued under the new root: one per sidecar
        # within a renewal period (+2 s)
        time.sleep(max(0.0, t_rotate + activate_s + 0.1 - time.time()))
        renewals0 = {s: stat(mesh, s, "citadel.renewals") for s in (client, server)}
        deadline = t_rotate + activate_s + RENEW_FRACTION * CERT_TTL_S + 2.0
        time.sleep(max(0.0, deadline - time.time()))
        window = probe.results(t_rotate)
        assert len(window) >= 5 * (deadline - t_rotate) * 0.5, len(window)  # the probe kept going
        assert all(c == 200 for _, c in window), [r for r in window if r[1] != 200]
        for s in (client, server):
            assert stat(mesh, s, "citadel.renewals") > renewals0[s], s
        print(f"\nroot rotation to generation {gen}: {len(window)} probes over "
              f"{deadline - t_rotate:.1f} s, none failed")
    finally:
        probe.stop()
