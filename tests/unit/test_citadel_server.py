"""Citadel's HTTP API and the CertificateRotator, on loopback (no root)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from cryptography import x509

from testbed.mesh.citadel.server import Citadel
from testbed.mesh.citadel.ca import CertificateAuthority
from proxy.tls.identity import SpiffeId, make_csr, new_key, uri_sans
from proxy.tls.rotator import CertificateRotator, material_from_json

NODE = "sidecar~10.0.0.3~reviews-v1-0~reviews"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def post(url, body):
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.json()


def test_sds_without_csr_returns_key_and_bundle():
    async def main():
        events = []
        c = Citadel(event=events.append)
        await c.start()
        try:
            status, d = await post(c.url + "/v1/sds", {"node": NODE, "service": "reviews"})
            async with aiohttp.ClientSession() as s, s.get(c.url + "/v1/trust_bundle") as r:
                bundle = await r.json()
        finally:
            await c.stop()
        return status, d, bundle, events

    status, d, bundle, events = run(main())
    assert status == 200
    m = material_from_json(d)
    cert = x509.load_pem_x509_certificate(m.cert_chain_pem)
    assert uri_sans(cert) == [m.spiffe_id] == ["spiffe://cluster.local/ns/default/sa/reviews"]
    assert m.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY")
    assert abs(m.not_after - time.time() - 3600) < 3 and cert.serial_number == m.serial
    assert bundle["trust_bundle_pem"] == d["trust_bundle_pem"] and bundle["revoked_serials"] == []
    assert [e["op"] for e in events] == ["citadel_start", "issue", "citadel_stop"]


def test_sds_with_csr_never_sees_the_key():
    async def main():
        c = Citadel()
        await c.start()
        key = new_key()
        try:
            return key, await post(c.url + "/v1/sds", {
                "node": NODE, "service": "reviews", "ttl_s": 5,
                "csr_pem": make_csr(SpiffeId.make("reviews"), key).decode()})
        finally:
            await c.stop()

    key, (status, d) = run(main())
    assert status == 200 and d["private_key_pem"] == ""
    cert = x509.load_pem_x509_certificate(d["cert_chain_pem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert 5 <= d["not_after"] - time.time() <= 6.5


@pytest.mark.parametrize("body, status, text", [
    ({"node": NODE}, 400, "missing field 'service'"),
    ({"node": NODE, "service": "ratings"}, 400, "may not ask for service 'ratings'"),
    ({"service": "reviews", "ttl_s": 10**9}, 400, "ttl_s=1000000000"),
    ({"service": "Bad Name"}, 400, "not a workload SPIFFE ID"),
    ({"service": "reviews", "csr_pem": make_csr(SpiffeId.make("admin"), new_key()).decode()},
     400, "CSR asks for"),
])
def test_sds_bad_requests(body, status, text):
    async def main():
        c = Citadel()
        await c.start()
        try:
            return await post(c.url + "/v1/sds", body)
        finally:
            await c.stop()

    got_status, d = run(main())
    assert got_status == status and text in d["error"]


def test_revoke_block_and_rotate_endpoints():
    async def main():
        c = Citadel()
        await c.start()
        try:
            _, d = await post(c.url + "/v1/sds", {"service": "reviews"})
            _, rev = await post(c.url + "/v1/revoke", {"service": "reviews"})
            _, bundle = await post(c.url + "/v1/rotate_root", {"overlap_s": 60})
            await post(c.url + "/v1/block", {"service": "reviews"})
            blocked = await post(c.url + "/v1/sds", {"service": "reviews"})
            await post(c.url + "/v1/block", {"service": "reviews", "blocked": False})
            unblocked, _ = await post(c.url + "/v1/sds", {"service": "reviews"})
            return d, rev, bundle, blocked, unblocked, c.bundle_json()
        finally:
            await c.stop()

    d, rev, rot, blocked, unblocked, bundle = run(main())
    assert rev == {"revoked": [d["serial"]]} and bundle["revoked_serials"] == [d["serial"]]
    assert rot == {"generation": 2} and [r["generation"] for r in bundle["roots"]] == [1, 2]
    assert blocked[0] == 503 and "blocked" in blocked[1]["error"] and unblocked == 200


def test_rotator_renews_at_half_life_and_survives_ca_outage():
    """TTL 2 s, renew at 50 %: ~1 renewal/s. CA down for 1.5 s: the current material stays
    in use, failures are counted, and renewal resumes when the CA is back."""
    async def main():
        ca = CertificateAuthority(default_ttl_s=2, max_ttl_s=60)
        c = Citadel(ca)
        await c.start()
        got = []
        rot = CertificateRotator(c.url, "reviews", got.append, node_id=NODE,
                                 bundle_refresh_s=0.3, retry_min_s=0.1, retry_max_s=0.4)
        first = await rot.start()
        await asyncio.sleep(2.5)
        renewals_before_outage = rot.stats["renewals"]
        await c.stop()
        await asyncio.sleep(1.5)
        failures = rot.stats["failures"]
        held = rot.material
        await c.start()
        await asyncio.sleep(1.5)
        victim = got[-1].serial
        ca.revoke(victim)
        await asyncio.sleep(0.6)  # > bundle_refresh_s: pushed by a refresh or a renewal
        await rot.stop()
        await c.stop()
        return first, got, renewals_before_outage, failures, held, rot, victim

    first, got, before, failures, held, rot, victim = run(main())
    assert first.private_key_pem and got[0] == first
    assert 2 <= before <= 4, before  # t=0, then every 1-1.5 s (lifetime 2-3 s: whole seconds)
    assert failures >= 2 and held is not None
    assert rot.stats["renewals"] > before  # resumed after the outage
    assert len({m.serial for m in got}) == rot.stats["renewals"]
    assert victim in got[-1].revoked and rot.material == got[-1]  # revocation delivered


def test_rotator_start_fails_clearly_without_ca():
    async def main():
        rot = CertificateRotator("http://127.0.0.1:9", "reviews", lambda m: None,
                                 retry_min_s=0.05)
        await rot.start(timeout_s=0.3)

    with pytest.raises(RuntimeError, match="no certificate from Citadel at http://127.0.0.1:9"):
        run(main())


def test_command_line_serves_sds(tmp_path):
    """`python -m testbed.mesh.citadel.server` (what runs on the control-plane host)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-m", "testbed.mesh.citadel.server", "--port", "0",
                          "--ttl-s", "30"], cwd=repo, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("citadel: serving http://127.0.0.1:"), line
        url = line.split()[2]
        status, d = run(post(url + "/v1/sds", {"service": "reviews"}))
        assert status == 200 and 30 <= d["not_after"] - time.time() <= 32
    finally:
        p.terminate()
        p.wait(10)


def test_state_dir_survives_a_process_restart(tmp_path):
    """`crash citadel` + restart: same roots, same revocations, old certificates still chain."""
    import subprocess
    import sys
    from pathlib import Path

    from testbed.mesh.citadel.ca import signed_by

    repo = Path(__file__).resolve().parents[2]

    def start():
        p = subprocess.Popen([sys.executable, "-m", "testbed.mesh.citadel.server", "--port", "0",
                              "--state-dir", str(tmp_path / "ca")], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return p, p.stdout.readline().split()[2]

    p, url = start()
    try:
        _, d = run(post(url + "/v1/sds", {"service": "reviews"}))
        run(post(url + "/v1/revoke", {"serial": d["serial"]}))
    finally:
        p.kill()
        p.wait(10)
    assert oct((tmp_path / "ca" / "ca.json").stat().st_mode & 0o777) == "0o600"
    p, url = start()
    try:
        _, d2 = run(post(url + "/v1/sds", {"service": "reviews"}))
    finally:
        p.terminate()
        p.wait(10)
    assert d2["trust_bundle_pem"] == d["trust_bundle_pem"]  # same root after the restart
    assert d2["revoked_serials"] == [d["serial"]]
    old = x509.load_pem_x509_certificate(d["cert_chain_pem"].encode())
    root = x509.load_pem_x509_certificate(d2["trust_bundle_pem"].encode())
    assert signed_by(old, root)


def test_store_refuses_other_trust_domain(tmp_path):
    from testbed.mesh.citadel import store as citadel_store
    citadel_store.load_or_create(tmp_path)
    with pytest.raises(ValueError, match="trust domain 'cluster.local', not 'example.org'"):
        citadel_store.load_or_create(tmp_path, trust_domain="example.org")
