"""What Citadel in every mesh costs a sidecar: memory, and CPU per 1000 requests.

    sudo ./minimesh bench citadel [--duration 5]
    (or: python benchmarks/citadel.py; needs h2load, nginx and taskset)

Three two-hop chains (client sidecar -> server sidecar -> nginx, minimesh-proxy, both
sidecars pinned to one core, as benchmarks/mtls.py):

* ``plaintext``: no Citadel (``mesh.security.citadel: false``): the sidecar never imports
  ``cryptography``;
* ``identity``: each sidecar holds a Citadel identity (node metadata ``CITADEL``, a real
  Citadel on loopback, CSR + rotator), traffic still plaintext: what every sidecar of a
  default mesh pays before any security rule (auto mTLS off);
* ``mtls``: the same identities, and the sidecars talk mTLS (the server listener requires a
  client certificate, the client cluster checks the server's SPIFFE ID): a mesh after its first
  PeerAuthentication, or with ``auto_mtls: true``.

Per chain: each sidecar's RSS after start and after the load, whether ``cryptography`` is
mapped into it (``/proc/PID/maps``), and both sidecars' CPU-seconds per 1000 requests at a
paced 1000 rps (10 connections x 100 rps) for ``--duration`` s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mtls import bench_config  # noqa: E402  (sys.path set above)
from benchmarks.proxy import Load, cpu_s, h2load, nginx, rss_mb, NGINX_ORIGIN  # noqa: E402  (sys.path set above)
from tests.support.ports import free_ports  # noqa: E402  (sys.path set above)
from tests.support.procs import start_proxy  # noqa: E402  (sys.path set above)
from testbed.mesh.citadel.envoy import downstream_tls_context, upstream_tls_context  # noqa: E402  (sys.path set above)
from testbed.mesh.pilot.security import citadel_metadata  # noqa: E402  (sys.path set above)
from proxy.tls.identity import SpiffeId  # noqa: E402  (sys.path set above)

CHAINS = ("plaintext", "identity", "mtls")
LOAD = Load("1000rps", 10, 100)


def crypto_mapped(pid: int) -> bool:
    """Whether ``cryptography``'s native module is mapped into the process."""
    try:
        return "cryptography" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@contextmanager
def citadel(work: Path) -> Iterator[str]:
    port, = free_ports(1)
    log = open(work / "citadel.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "testbed.mesh.citadel.server", "--host", "127.0.0.1",
                          "--port", str(port), "--state-dir", str(work / "citadel")],
                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/trust_bundle", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise RuntimeError(f"citadel did not start: {(work / 'citadel.log').read_text()[-500:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        p.wait(5)
        log.close()


def sidecar_config(listen: int, upstream: int, admin: int, chain: str, name: str, url: str) -> str:
    """bench.yaml; with an identity from Citadel (``identity``, ``mtls``), and mTLS (``mtls``)
    in the shapes Pilot sends (SDS secrets ``default``/``ROOTCA``, served by the rotator)."""
    sds = "/nonexistent"     # minimesh-proxy serves the SDS names from its Citadel rotator
    down = downstream_tls_context(sds) if chain == "mtls" and name == "server" else None
    up = upstream_tls_context(sds, [SpiffeId.make("server").uri]) \
        if chain == "mtls" and name == "client" else None
    cfg = json.loads(bench_config(listen, upstream, admin, down, up))
    if chain != "plaintext":
        cfg["node"] = {"id": f"sidecar~127.0.0.1~{name}-0~{name}", "cluster": name,
                       "metadata": citadel_metadata(url, name)}
    return json.dumps(cfg)


def handshakes(admin: int) -> int:
    """The server sidecar's ``ssl.handshake`` counters (proof that the chain really is mTLS)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5).read().decode()
    return sum(int(v) for k, _, v in (ln.partition(": ") for ln in text.splitlines())
               if k.endswith("ssl.handshake") and v.strip().isdigit())


def run_chain(chain: str, origin: int, url: str, pin: list[str], pin_load: list[str], duration: float,
              work: Path) -> dict:
    with ExitStack() as st:
        port, server_port, a1, a2 = free_ports(4)
        server = st.enter_context(start_proxy("minimesh", sidecar_config(
            server_port, origin, a1, chain, "server", url), a1, prefix=pin))
        client = st.enter_context(start_proxy("minimesh", sidecar_config(
            port, server_port, a2, chain, "client", url), a2, prefix=pin))
        pids = [client.pid, server.pid]
        rss0 = [rss_mb([p]) for p in pids]
        target = f"http://127.0.0.1:{port}/"
        h2load(target, Load("warm", 16), 1.0, pin_load, work / "warm.tsv")
        c0 = cpu_s(pids)
        r = h2load(target, LOAD, duration, pin_load, work / "log.tsv")
        cpu_k = (cpu_s(pids) - c0) / (r.done / 1000) if r.done else float("nan")
        return {"chain": chain, "rss_start_mb": rss0, "rss_after_mb": [rss_mb([p]) for p in pids],
                "crypto": [crypto_mapped(p) for p in pids], "rps": r.rps, "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms, "cpu_s_per_1k": cpu_k, "errors": r.errors,
                "server_handshakes": handshakes(a1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--only", default=",".join(CHAINS))
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    for tool in ("h2load", "nginx", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: run it as `sudo ./minimesh bench citadel`, which installs it", file=sys.stderr)
            return 2
    cores = os.cpu_count() or 1
    pin_proxy = ["taskset", "-c", str(cores - 1)] if cores > 1 else []
    pin_load = ["taskset", "-c", f"0-{cores - 2}"] if cores > 1 else []
    work = Path(tempfile.mkdtemp(prefix="mmt-citadel-bench-"))
    rows = []
    print(f"# loopback, {cores} cores; two minimesh-proxy sidecars pinned {pin_proxy[2:] or 'no'}; "
          f"{LOAD.name} paced for {a.duration:g} s")
    hdr = (f"{'chain':<11}{'RSS start MB (c/s)':>20}{'RSS after MB (c/s)':>20}{'crypto':>8}{'rps':>7}"
           f"{'p50 ms':>8}{'p99 ms':>8}{'cpu-s/1k':>9}{'errors':>7}{'TLS hs':>7}")
    print(hdr + "\n" + "-" * len(hdr))
    try:
        with ExitStack() as outer:
            origin, = free_ports(1)
            outer.enter_context(nginx(NGINX_ORIGIN.format(port=origin), pin_load))
            url = outer.enter_context(citadel(work))
            for chain in [c for c in a.only.split(",") if c in CHAINS]:
                row = run_chain(chain, origin, url, pin_proxy, pin_load, a.duration, work)
                rows.append(row)
                print(f"{chain:<11}{row['rss_start_mb'][0]:10.1f}/{row['rss_start_mb'][1]:<9.1f}"
                      f"{row['rss_after_mb'][0]:10.1f}/{row['rss_after_mb'][1]:<9.1f}"
                      f"{'/'.join('y' if c else 'n' for c in row['crypto']):>8}{row['rps']:7.0f}"
                      f"{row['p50_ms']:8.2f}{row['p99_ms']:8.2f}{row['cpu_s_per_1k']:9.3f}{row['errors']:7d}"
                      f"{row['server_handshakes']:7d}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows and all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
