"""Citadel in the Mininet mesh (root): ``mesh.security`` starts Citadel on the control-plane
host, every minimesh-proxy sidecar gets a SPIFFE certificate, and the topology's rule file
makes the mesh STRICT from boot. Names carry a per-run prefix; everything is removed on
every exit path (Testbed + Mesh context managers).

Hosts: `a` runs service `a` (its sidecar is principal sa/a), `b` runs `b` with a real-Envoy
sidecar (sa/b; certificates as SDS files from an agent next to it), `h1` runs
`echo` (one replica, so captures on h1 see every request), `x` runs no sidecar (an outsider),
`e1` etcd, `cp` Pilot + Citadel.

* STRICT: N plaintext requests from x straight to echo's host_ip:8080 are all refused,
  N mesh requests a -> echo through the sidecars all succeed.
* AuthorizationPolicy (applied with ``minimesh apply -f``) allowing only sa/a: a 100 % 200,
  b 100 % 403, and echo's sidecar counts the denials in /stats.
* tcpdump on h1's interface: tshark finds TLS records and no HTTP; with echo's key log
  (``Mesh.keylogs()``) it decrypts to the HTTP requests.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
N = 50

STRICT = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""

ALLOW_A = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: echo-allow-a, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]
"""


def topology_text(p: str, rules: Path) -> str:
    hosts = ["a", "b", "h1", "x", "e1", "cp"]
    lines = ["name: meshsec", "hosts:", *[f"  {p}{h}: {{}}" for h in hosts],
             "switches:", f"  {p}s: {{}}", "links:", *[f"  - {{between: [{p}{h}, {p}s]}}" for h in hosts]]
    return "\n".join(lines) + f"""
mesh:
  registry: {{members: [{p}e1], heartbeat_ms: 50, election_ms: 500, ttl_s: 2}}
  control_plane: {{host: {p}cp}}
  security: {{cert_ttl_s: 600, keylog: true}}
  rules: [{rules}]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{hosts: [{p}h1]}}}}}}
    a: {{port: 9001, run: "builtin:echo", versions: {{v1: {{hosts: [{p}a]}}}}}}
    b: {{port: 9002, run: "builtin:echo", sidecar: envoy, versions: {{v1: {{hosts: [{p}b]}}}}}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology

    p = "ms" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    rules = tmp_path_factory.mktemp("rules") / "strict.yaml"
    rules.write_text(STRICT)
    topo = parse_topology(topology_text(p, rules), "<test_mesh_security>")
    assert topo.sections["mesh"].security.citadel
    t0 = time.monotonic()
    with Testbed(topo, link_backend="auto") as tb:
        with Mesh(tb, topo.sections["mesh"]) as m:
            m.prefix = p
            m.boot_s = time.monotonic() - t0
            yield m


def h(m, name: str) -> str:
    return f"{m.prefix}{name}"


def curl_results(m, host: str, url: str, n: int) -> list[tuple[int, int]]:
    """``n`` fresh curl connections from ``host`` (one shell loop): (HTTP code, curl exit)."""
    loop = (f"for i in $(seq {n}); do curl -s -o /dev/null -m 2 "
            f"-w '%{{http_code}} %{{exitcode}}\\n' {url}; done")
    out, _, _ = m.tb.host(host).pexec(["sh", "-c", loop])
    return [(int(c), int(e)) for c, e in (ln.split() for ln in out.splitlines() if ln.strip())]


def curl_codes(m, host: str, url: str, n: int) -> list[int]:
    """HTTP codes of ``n`` fresh connections, 0 = no answer."""
    return [c for c, _ in curl_results(m, host, url, n)]


def wait_sidecar_ready(m, name: str, timeout_s: float) -> None:
    """Until the restarted sidecar answers /ready (Pilot may still list the old one as synced)."""
    from testbed.mesh.deploy.mesh import MeshError
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if m.sidecar_admin(name, "/ready").strip().upper().startswith("LIVE"):
                return
        except MeshError:
            pass
        assert time.monotonic() < deadline, f"{name} not ready: {m.log(name + '.sidecar').read_text()[-800:]}"
        time.sleep(0.1)


def test_citadel_runs_and_every_sidecar_has_a_spiffe_certificate(mesh):
    assert mesh.boot_s < 45
    assert mesh.instances()[0].pids and "citadel" in mesh._procs
    for inst in ("echo-v1-0", "a-v1-0"):
        stats = mesh.sidecar_admin(inst, "/stats")
        assert "citadel." in stats, stats[:500]
    sds = mesh.run_dir / "sds" / "b-v1-0"                          # Envoy's SDS files
    assert "BEGIN CERTIFICATE" in (sds / "cert.json").read_text()
    assert sorted(mesh.keylogs()) == ["a-v1-0", "echo-v1-0"]       # Envoy writes none
    assert all(p.parent == mesh.run_dir / "keylog" for p in mesh.keylogs().values())
    assert mesh.status()["rules"] == ["PeerAuthentication/default"]


def test_strict_refuses_plaintext_from_outside_and_mesh_traffic_succeeds(mesh):
    echo_ip = mesh.tb.ip(h(mesh, "h1"))
    plain = curl_results(mesh, h(mesh, "x"), f"http://{echo_ip}:8080/", N)
    assert len(plain) == N and all(c == 0 for c, _ in plain), plain   # 100 % refused, no HTTP answer
    # ... after the TCP connect (curl 7 = connect refused, 28 = timeout): the TLS-only
    # inbound listener accepted the connection and closed it on the plaintext bytes
    assert not {e for _, e in plain} & {7, 28}, plain
    r = mesh.requests(h(mesh, "a"), "http://echo:8080/", N)
    assert r["codes"] == {"200": N} and r["errors"] == 0, r
    fresh = curl_codes(mesh, h(mesh, "b"), "http://echo:8080/", 10)  # via Envoy: mTLS with SDS files
    assert fresh == [200] * 10, fresh
    # the same for a real-Envoy server sidecar (b): plaintext refused, a -> b over mTLS
    b_ip = mesh.tb.ip(h(mesh, "b"))
    assert curl_codes(mesh, h(mesh, "x"), f"http://{b_ip}:9002/", 10) == [0] * 10
    assert curl_codes(mesh, h(mesh, "a"), "http://b:9002/", 10) == [200] * 10
    # the refusal is STRICT's doing: PERMISSIVE lets the same plaintext requests through
    mesh.apply_text(STRICT.replace("STRICT", "PERMISSIVE"), "permissive.yaml")
    mesh.wait_ready(10)
    assert curl_codes(mesh, h(mesh, "x"), f"http://{echo_ip}:8080/", 10) == [200] * 10
    mesh.apply_text(STRICT, "strict.yaml")
    mesh.wait_ready(10)
    assert curl_codes(mesh, h(mesh, "x"), f"http://{echo_ip}:8080/", 10) == [0] * 10


def test_authorization_policy_allows_a_and_denies_b_with_403(mesh, tmp_path):
    policy = tmp_path / "allow-a.yaml"
    policy.write_text(ALLOW_A)
    r = subprocess.run([sys.executable, "-m", "testbed", "apply", "-f", str(policy), "--run", str(os.getpid())],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
    assert r.returncode == 0 and "applied 1 file(s)" in r.stdout, (r.stdout, r.stderr)
    mesh.wait_ready(10)
    assert sorted(mesh.status()["rules"]) == ["AuthorizationPolicy/echo-allow-a", "PeerAuthentication/default"]
    ok = mesh.requests(h(mesh, "a"), "http://echo:8080/", N)
    assert ok["codes"] == {"200": N}, ok
    denied = mesh.requests(h(mesh, "b"), "http://echo:8080/", N)
    assert denied["codes"] == {"403": N}, denied
    status, body = mesh.curl(h(mesh, "b"), "http://echo:8080/")
    assert status == 403 and "RBAC" in body
    stats = mesh.sidecar_admin("echo-v1-0", "/stats")
    line = [ln for ln in stats.splitlines() if "rbac" in ln and "denied" in ln]
    assert line and int(line[0].rsplit(":", 1)[1]) >= N + 1, line


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_capture_on_the_server_host_is_tls_and_decrypts_with_the_keylog(mesh, tmp_path):
    # a's sidecar keeps pooled connections to echo from earlier tests; TLS 1.3 decrypts only
    # with the handshake in the capture, so restart it (fresh pool, fresh certificate)
    mesh.crash("a-v1-0")
    mesh.restart("a-v1-0")
    wait_sidecar_ready(mesh, "a-v1-0", 20)
    mesh.wait_ready(20)
    server = h(mesh, "h1")
    pcap = tmp_path / "h1.pcap"
    intf = mesh.tb.host(server).defaultIntf().name
    dump = mesh.tb.popen(server, ["tcpdump", "-i", intf, "--immediate-mode", "-U", "-n", "-Z", "root",
                                  "-w", str(pcap), "tcp port 8080"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while b"listening on" not in dump.stderr.readline():
            assert time.monotonic() < deadline and dump.poll() is None, "tcpdump did not start"
        codes = curl_codes(mesh, h(mesh, "a"), "http://echo:8080/captured-path", 5)
        assert codes == [200] * 5, codes
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(5)
    os.chmod(pcap, 0o644)

    def tshark(*args: str) -> list[str]:
        r = subprocess.run(["tshark", "-n", "-r", str(pcap), *args], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if ln.strip()]

    assert len(tshark("-d", "tcp.port==8080,tls", "-Y", "tls")) >= 5
    assert len(tshark("-d", "tcp.port==8080,tls", "-Y", "tls.handshake.type == 1")) >= 1  # ClientHello
    assert tshark("-Y", "http") == []     # 8080 is dissected as HTTP by default: no plaintext
    assert tshark("-d", "tcp.port==8080,tls", "-Y", "http") == []
    keylog = mesh.keylogs()["echo-v1-0"]
    assert keylog.stat().st_size > 0
    requests = tshark("-d", "tcp.port==8080,tls", "-o", f"tls.keylog_file:{keylog}",
                      "-Y", "http.request", "-T", "fields", "-e", "http.request.uri")
    assert requests.count("/captured-path") == 5, requests
