"""Rotation under load: ~200 rps over a small connection pool while both sides' certificates
rotate every ~2 s (TTL 4 s, renew at 50 %) through a real Citadel and CertificateRotators,
and the root CA itself is rotated mid-run. No request may be lost; a connection opened with
a now-expired certificate keeps working (TLS checks certificates at the handshake only:
in-flight connections keep the old ones)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.integration.test_mtls import REVIEWS, MiniHTTP, http_get
from testbed.mesh.citadel.server import Citadel
from cryptography import x509

from testbed.mesh.citadel.ca import CertificateAuthority, signed_by
from proxy.tls.context import MeshTLS
from proxy.tls.rotator import CertificateRotator
from proxy.tls.sockets import open_mtls_stream, start_inbound

RATE_RPS, WORKERS, DURATION_S = 200, 4, 7.0
CONN_MAX_AGE_S = 0.5  # pool recycles connections, so new handshakes meet new certificates


async def scenario() -> dict:
    citadel = Citadel(CertificateAuthority(default_ttl_s=4, max_ttl_s=60))
    await citadel.start()
    srv_tls, cli_tls = MeshTLS(), MeshTLS()
    rot_s = CertificateRotator(citadel.url, "reviews", srv_tls.update, bundle_refresh_s=1)
    rot_c = CertificateRotator(citadel.url, "productpage", cli_tls.update, bundle_refresh_s=1)
    await rot_s.start()
    await rot_c.start()
    counts: Counter = Counter()
    srv = await start_inbound(lambda peer: MiniHTTP(peer, srv_tls, (), counts), "127.0.0.1", 0,
                              srv_tls)
    port = srv.sockets[0].getsockname()[1]
    results: Counter = Counter()
    server_serials: set[bytes] = set()
    latencies: list[float] = []
    t0 = time.monotonic()

    async def worker(i: int) -> None:
        conn, born, n = None, 0.0, 0
        while (due := t0 + (n * WORKERS + i) / RATE_RPS) < t0 + DURATION_S:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            try:
                if conn is None or time.monotonic() - born > CONN_MAX_AGE_S:
                    if conn is not None:
                        conn[1].close()
                    r, w, _ = await open_mtls_stream("127.0.0.1", port, cli_tls, REVIEWS)
                    conn, born = (r, w), time.monotonic()
                    results["connections"] += 1
                start = time.monotonic()
                status, body = await asyncio.wait_for(http_get(*conn), 2)
                latencies.append(time.monotonic() - start)
                results[status] += 1
                server_serials.add(body.rsplit(b" ", 1)[1])
            except Exception as e:  # every failure is counted, not raised
                results[f"error:{type(e).__name__}:{e}"] += 1
                conn = None
        if conn is not None:
            conn[1].close()

    async def long_lived() -> None:
        """One connection for the whole run: outlives the certificates it was opened with."""
        r, w, _ = await open_mtls_stream("127.0.0.1", port, cli_tls, REVIEWS)
        first_not_after = cli_tls.material.not_after
        while time.monotonic() < t0 + DURATION_S:
            try:
                status, _ = await asyncio.wait_for(http_get(r, w), 2)
                results[f"long:{status}"] += 1
            except Exception as e:  # counted, as above
                results[f"long:error:{type(e).__name__}"] += 1
                break
            await asyncio.sleep(0.5)
        results["long_outlived_cert"] = int(time.time() > first_not_after)
        w.close()

    async def rotate_root() -> None:
        await asyncio.sleep(2.5)
        # activation after the rotators' bundle refresh (1 s) has spread the new root
        citadel.rotate_root(activate_after_s=1.5)

    try:
        await asyncio.gather(long_lived(), rotate_root(), *(worker(i) for i in range(WORKERS)))
    finally:
        srv.close()
        await srv.wait_closed()
        await rot_s.stop()
        await rot_c.stop()
        await citadel.stop()
    elapsed = time.monotonic() - t0
    latencies.sort()
    new_root = max(citadel.ca.trust_bundle(), key=lambda r: r.generation)
    final_on_new_root = all(
        signed_by(x509.load_pem_x509_certificate(m.cert_chain_pem), new_root.cert)
        for m in (srv_tls.material, cli_tls.material))
    return {"results": results, "server_serials": server_serials, "elapsed": elapsed,
            "client_serials": {k for k in counts if k.startswith("serial:")},
            "renewals": (rot_s.stats["renewals"], rot_c.stats["renewals"]),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "srv_stats": srv_tls.stats, "root_generation": new_root.generation,
            "final_on_new_root": final_on_new_root}


def test_rotation_under_200rps_loses_no_request():
    out = asyncio.run(asyncio.wait_for(scenario(), 60))
    res = out["results"]
    errors = {k: v for k, v in res.items() if str(k).startswith(("error", "long:error"))}
    ok = res[200]
    print(f"\nrotation under load: {ok} OK in {out['elapsed']:.1f}s "
          f"({ok / out['elapsed']:.0f} rps), {res['connections']} connections, "
          f"renewals server/client {out['renewals']}, server certs seen "
          f"{len(out['server_serials'])}, client certs seen {len(out['client_serials'])}, "
          f"p50 {out['p50_ms']:.1f} ms p99 {out['p99_ms']:.1f} ms, errors {errors}")
    assert errors == {} and set(res) <= {200, "connections", "long:200", "long_outlived_cert"}
    expected = RATE_RPS * DURATION_S
    assert ok >= 0.9 * expected, f"only {ok} of ~{expected:.0f} requests ran (CPU starved?)"
    assert min(out["renewals"]) >= 3  # t=0 and at least two rotations (~every 2 s)
    assert len(out["server_serials"]) >= 3 and len(out["client_serials"]) >= 3
    assert res["long:200"] >= 8 and res["long_outlived_cert"] == 1
    assert out["srv_stats"]["ssl.connection_error"] == 0
    assert out["root_generation"] == 2 and out["final_on_new_root"]
