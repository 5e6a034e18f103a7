"""mTLS benchmark: the two-hop sidecar chain with and without mutual TLS, side by side,
plus the cost of one mTLS handshake with and without TLS 1.3 session resumption.

    sudo ./minimesh bench mtls [--duration 5] [--only 2hop,2hop-mtls] [--handshakes 300]

Chain: h2load -> client sidecar -> server sidecar -> nginx origin (3-byte body). Both sidecars
run tests/configs/bench.yaml (as in benchmarks/proxy.py); the mTLS variants add, as real Envoy
config, a file-based DownstreamTlsContext (require_client_certificate) on the server sidecar's
listener and an UpstreamTlsContext with the server's SPIFFE ID (match_typed_subject_alt_names)
on the client sidecar's cluster. Certificates come from a CertificateAuthority (Citadel's CA).
Targets: 2hop, 2hop-mtls (minimesh-proxy), envoy-2hop, envoy-2hop-mtls (real Envoy, the same
configs). Loads: paced 1000 rps (10 connections x 100 rps) and closed-loop concurrency 16.
CPU is both sidecars' CPU-seconds per 1000 requests; "added" compares with the plaintext chain
of the same proxy. Sidecar-to-sidecar connections are pooled (keep-alive), as in a mesh, so the
steady-state cost is record encryption; the handshake table shows the per-connection cost:
a new connection (TCP + handshake + one request) straight to the server sidecar, full
handshake vs. resumed (client offers the TLS 1.3 ticket from the previous connection), and the
server sidecar's CPU per connection.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.proxy import Load, Result, cpu_s, h2load, nginx, NGINX_ORIGIN  # noqa: E402  (sys.path set above)
from tests.support.configs import render  # noqa: E402  (sys.path set above)
from tests.support.ports import free_ports  # noqa: E402  (sys.path set above)
from tests.support.procs import start_proxy  # noqa: E402  (sys.path set above)
from testbed.mesh.citadel.ca import CertificateAuthority  # noqa: E402  (sys.path set above)
from proxy.tls.identity import SpiffeId  # noqa: E402  (sys.path set above)

TARGETS = ("2hop", "2hop-mtls", "envoy-2hop", "envoy-2hop-mtls")
LOADS = (Load("1000rps", 10, 100), Load("c16", 16))
TLS_T = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
SERVER_ID = SpiffeId.make("server").uri


def identity(ca: CertificateAuthority, service: str, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    i = ca.issue(SpiffeId.make(service), ttl_s=86400)
    (d / "cert.pem").write_bytes(i.cert_chain_pem)
    (d / "key.pem").write_bytes(i.private_key_pem)
    (d / "ca.pem").write_bytes(ca.trust_bundle_pem())
    return d


def tls_socket(d: Path, kind: str, sans: tuple[str, ...] = ()) -> dict:
    v: dict = {"trusted_ca": {"filename": str(d / "ca.pem")}}
    if sans:
        v["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": s}} for s in sans]
    cfg = {"@type": TLS_T + kind, "common_tls_context": {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["http/1.1"],
        "tls_certificates": [{"certificate_chain": {"filename": str(d / "cert.pem")},
                              "private_key": {"filename": str(d / "key.pem")}}],
        "validation_context": v}}
    if kind == "DownstreamTlsContext":
        cfg["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": cfg}


def bench_config(listen: int, upstream: int, admin: int, downstream_tls: dict | None = None,
                 upstream_tls: dict | None = None) -> str:
    cfg = yaml.safe_load(render("bench.yaml", {"LISTEN_PORT": listen, "ADMIN_PORT": admin,
                                               "UPSTREAM_PORT": upstream}))
    if downstream_tls:
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = downstream_tls
    if upstream_tls:
        cfg["static_resources"]["clusters"][0]["transport_socket"] = upstream_tls
    return json.dumps(cfg)


def start_chain(st: ExitStack, target: str, origin: int, pin: list[str], certs: dict[str, Path]):
    """(pids, client port, server port) of a two-hop chain."""
    kind = "envoy" if target.startswith("envoy") else "minimesh"
    mtls = target.endswith("mtls")
    port, server_port, a1, a2 = free_ports(4)
    server = st.enter_context(start_proxy(kind, bench_config(
        server_port, origin, a1, tls_socket(certs["server"], "DownstreamTlsContext") if mtls else None), a1,
        prefix=pin))
    client = st.enter_context(start_proxy(kind, bench_config(
        port, server_port, a2, None,
        tls_socket(certs["client"], "UpstreamTlsContext", (SERVER_ID,)) if mtls else None), a2, prefix=pin))
    return [client.pid, server.pid], port, server_port, server.pid


def new_connections(port: int, n: int, ctx: ssl.SSLContext | None, resume: bool) -> tuple[float, int]:
    """Mean ms per new connection (connect, handshake, GET, read, close); resumed count."""
    session, times, reused = None, [], 0
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    for _ in range(n):
        t0 = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname=None, session=session if resume else None) if ctx else raw
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        if ctx:
            reused += s.session_reused
            session = s.session
        s.close()
        times.append(time.perf_counter() - t0)
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"new connection answered {data[:40]!r}")
    return 1000 * statistics.median(times), reused


def client_ctx(d: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(d / "ca.pem")
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--only", default=",".join(TARGETS), help="comma list of " + ", ".join(TARGETS))
    ap.add_argument("--handshakes", type=int, default=300, help="new connections per handshake row")
    ap.add_argument("--no-pin", action="store_true")
    a = ap.parse_args(argv)
    targets = [t for t in a.only.split(",") if t]
    if set(targets) - set(TARGETS):
        ap.error(f"--only: allowed: {', '.join(TARGETS)}")
    for tool in ("h2load", "nginx", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: run the benchmark as `sudo ./minimesh bench mtls`, which installs it",
                  file=sys.stderr)
            return 2
    cores = os.cpu_count() or 1
    pin_proxy = [] if a.no_pin or cores < 2 else ["taskset", "-c", str(cores - 1)]
    pin_load = [] if a.no_pin or cores < 2 else ["taskset", "-c", f"0-{cores - 2}"]
    work = Path(tempfile.mkdtemp(prefix="mmt-mtls-bench-"))
    ca = CertificateAuthority()
    certs = {"server": identity(ca, "server", work / "server"), "client": identity(ca, "client", work / "client")}
    print(f"# loopback, {cores} cores, sidecars pinned {pin_proxy[2:] or 'no'}; {a.duration:g}s per run; "
          "two hops: client sidecar -> server sidecar -> nginx")
    hdr = f"{'target':<17}{'load':<9}{'rps':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu-s/1k':>9}{'errors':>7}"
    print(hdr + "\n" + "-" * len(hdr))
    results: dict[tuple[str, str], tuple[Result, float]] = {}
    hs_rows = []
    failures = 0
    try:
        with ExitStack() as outer:
            origin, = free_ports(1)
            outer.enter_context(nginx(NGINX_ORIGIN.format(port=origin), pin_load))
            for target in targets:
                try:
                    with ExitStack() as st:
                        pids, port, server_port, server_pid = start_chain(st, target, origin, pin_proxy, certs)
                        url = f"http://127.0.0.1:{port}/"
                        h2load(url, Load("warm", 16), 1.0, pin_load, work / "warm.tsv")
                        for load in LOADS:
                            c0 = cpu_s(pids)
                            r = h2load(url, load, a.duration, pin_load, work / "log.tsv")
                            cpu_k = (cpu_s(pids) - c0) / (r.done / 1000) if r.done else float("nan")
                            results[(target, load.name)] = (r, cpu_k)
                            print(f"{target:<17}{load.name:<9}{r.rps:8.0f}{r.p50_ms:8.2f}{r.p99_ms:8.2f}"
                                  f"{cpu_k:9.3f}{r.errors:7d}", flush=True)
                        mtls = target.endswith("mtls")
                        modes = (("full", False), ("resumed", True)) if mtls else (("plain", False),)
                        for label, resume in modes:
                            c0 = cpu_s([server_pid])
                            ms, reused = new_connections(server_port, a.handshakes,
                                                         client_ctx(certs["client"]) if mtls else None, resume)
                            cpu_ms = 1000 * (cpu_s([server_pid]) - c0) / a.handshakes
                            hs_rows.append((target, label, ms, cpu_ms, reused))
                except Exception as e:  # report and go on with the other targets
                    failures += 1
                    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                    print(f"{target:<17}FAILED: {why}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for base, tls in (("2hop", "2hop-mtls"), ("envoy-2hop", "envoy-2hop-mtls")):
        for load in LOADS:
            b, t = results.get((base, load.name)), results.get((tls, load.name))
            if b and t:
                print(f"# {tls} vs {base} at {load.name}: p50 +{t[0].p50_ms - b[0].p50_ms:.2f} ms, "
                      f"p99 +{t[0].p99_ms - b[0].p99_ms:.2f} ms, cpu-s/1k +{t[1] - b[1]:.3f} "
                      f"({100 * (t[1] / b[1] - 1):+.0f} %)")
    if hs_rows:
        print(f"\n{'server sidecar':<17}{'connection':<11}{'ms/conn':>9}{'server cpu ms/conn':>20}{'resumed':>9}")
        for target, label, ms, cpu_ms, reused in hs_rows:
            print(f"{target:<17}{label:<11}{ms:9.2f}{cpu_ms:20.2f}{reused:>9}")
        print("# ms/conn: median wall time of connect + handshake + GET + close, sequential, one client")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
