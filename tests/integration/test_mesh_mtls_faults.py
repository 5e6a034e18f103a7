"""Identity faults seen through the sidecars (STRICT mTLS, Pilot + Citadel + minimesh-proxy).

Certificates live 3 s (renewed at 50 %); the client sidecar's cluster closes a connection
after 5 requests (recycle builder), so new handshakes keep happening. A steady 50 rps runs
through the client sidecar `sleep` while a fault is applied:

* **revoke** `sleep`'s certificates: once the server sidecar's bundle refresh (1 s) has the
  serial, its handshakes are refused (`reason=revoked`, `ssl.rejected.revoked`) and the client
  sees 503s in its access log; the next renewal (a new serial) heals it.
* **block renewals** (the CA refuses `sleep`): its certificate expires; the server refuses it
  (`reason=expired`), the client's rotator counts failures; unblocking heals it.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.test_mesh_mtls import MtlsMesh, _is, peer_auth, run
from testbed.mesh.pilot import resources as xds

PER_CONN = 5


def builder(state, node, type_url, names, source):
    res = xds.build(state, node, type_url, names, source)
    if type_url == xds.CLUSTER:
        for c in res:
            if c["name"].startswith("outbound|"):
                c["max_requests_per_connection"] = PER_CONN
    return res


async def steady(m: MtlsMesh, seconds: float, rps: int = 50) -> list[tuple[float, int]]:
    """(t, status) of paced requests through `sleep` for `seconds`."""
    out: list[tuple[float, int]] = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        delay = t0 + i / rps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        out.append((time.monotonic() - t0, await m.via("sleep")))
        i += 1
    return out


async def _revoke(tmp: Path) -> dict:
    async with MtlsMesh(tmp, cert_ttl_s=3, clients=("sleep",), rules=peer_auth("STRICT"),
                        builder=builder) as m:
        await m.until(lambda: _is(m.via("sleep"), 200), what="mTLS up")
        assert {s for _, s in await steady(m, 1.0)} == {200}
        # revoke just after a renewal, so the revoked certificate is the one in use for ~1.5 s
        r0 = (await m.stats("sleep"))["citadel.renewals"]
        await m.until(lambda: _stat_above(m, "sleep", "citadel.renewals", r0), what="a renewal")
        m.citadel.revoke_service("sleep")
        during = await steady(m, 4.0)
        st = await m.stats("echo")
        return {"during": during, "rejected": st.get(
            f"listener.127.0.0.41_{m.svc_port}.ssl.rejected.revoked", 0), "echo_log": m.log("echo"),
            "after": [s for _, s in await steady(m, 1.0)], "access": m.access("sleep")}


async def _stat_above(m: MtlsMesh, name: str, key: str, value: float) -> bool:
    return (await m.stats(name)).get(key, 0) > value


def test_revoked_client_is_refused_until_it_renews(tmp_path: Path) -> None:
    out = run(_revoke(tmp_path))
    statuses = [s for _, s in out["during"]]
    failed = [t for t, s in out["during"] if s != 200]
    print(f"\nrevoke: {len(failed)}/{len(statuses)} failed, between t={failed[:1]}..{failed[-1:]} s; "
          f"rejected.revoked={out['rejected']}")
    assert out["rejected"] >= 1 and "reason=revoked" in out["echo_log"]
    assert failed, "no request saw the revocation"
    assert set(statuses) <= {200, 503}
    assert out["after"] == [200] * len(out["after"])           # healed by the renewal
    bad = [e for e in out["access"] if int(e["code"]) == 503]
    assert bad and all(e["flags"] != "-" for e in bad)         # the client's access log says why


async def _expire(tmp: Path) -> dict:
    async with MtlsMesh(tmp, cert_ttl_s=3, clients=("sleep",), rules=peer_auth("STRICT"),
                        builder=builder) as m:
        await m.until(lambda: _is(m.via("sleep"), 200), what="mTLS up")
        m.citadel.block("sleep")
        during = await steady(m, 5.0)
        st_echo, st_sleep = await m.stats("echo"), await m.stats("sleep")
        m.citadel.block("sleep", blocked=False)
        await m.until(lambda: _is(m.via("sleep"), 200), timeout_s=15, what="renewal after unblock")
        return {"during": [s for _, s in during], "expired": st_echo.get(
            f"listener.127.0.0.41_{m.svc_port}.ssl.rejected.expired", 0),
            "failures": st_sleep.get("citadel.failures", 0),
            "after": [s for _, s in await steady(m, 1.0)], "echo_log": m.log("echo")}


def test_blocked_renewals_expire_the_certificate_and_unblock_heals(tmp_path: Path) -> None:
    out = run(_expire(tmp_path))
    print(f"\nexpire: {out['during'].count(503)}/{len(out['during'])} failed, "
          f"rejected.expired={out['expired']}, rotator failures={out['failures']}")
    assert out["during"][:5] == [200] * 5                       # still valid at first
    assert out["during"][-10:] == [503] * 10                    # expired by the end
    assert out["expired"] >= 1 and "reason=expired" in out["echo_log"]
    assert out["failures"] >= 1
    assert out["after"] == [200] * len(out["after"])
