"""The registry on a real 3-member etcd cluster (Debian etcd 3.4) on 127.0.0.1.

No namespaces: members are plain subprocesses on distinct free loopback ports, so these
tests need no root. Heartbeat/election are 50/500 ms to keep elections short.
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import time

import pytest

from testbed.mesh.etcd.client import EtcdClient, EtcdError
from testbed.mesh.etcd.cluster import EtcdCluster, EtcdRunner
from testbed.mesh.etcd.registry import Discovery, Registrar, endpoint_json, endpoint_key, list_registry
from testbed.mesh.etcd.wire import WatchError, scan_log
from testbed.mesh.model import Endpoint

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed")
HB_MS, ELECTION_MS = 50, 500


@pytest.fixture
def etcd3():
    root = tempfile.mkdtemp(prefix="mmt-etcd-")
    run = EtcdRunner(EtcdCluster.local(3, root, heartbeat_ms=HB_MS, election_ms=ELECTION_MS))
    try:
        run.start()
        run.wait_healthy(20)
        yield run
    finally:
        run.stop()
        shutil.rmtree(root, ignore_errors=True)


def ep(instance: str, version: str = "v1", service: str = "echo", port: int = 8080) -> Endpoint:
    return Endpoint(service, version, instance, host=f"h-{instance}", ip="10.0.0.9", port=port,
                    labels={"zone": "a"})


async def wait_for(pred, timeout_s: float, step_s: float = 0.02) -> float:
    """Poll ``pred`` (async) until true; returns the elapsed seconds, fails after timeout."""
    t0 = time.monotonic()
    while not await pred():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(step_s)
    return time.monotonic() - t0


def test_put_get_cas_delete(etcd3):
    async def go():
        async with EtcdClient(etcd3.cluster.endpoints) as c:
            r1 = await c.put("/t/a", "1")
            kv = await c.get("/t/a")
            assert kv is not None and kv.value == b"1" and kv.mod_revision == r1
            assert (await c.get("/t/a", serializable=True)).value == b"1"
            assert await c.get("/t/missing") is None
            assert await c.cas("/t/a", "1", "2") is True
            assert await c.cas("/t/a", "1", "3") is False           # value is now 2
            assert (await c.get("/t/a")).value == b"2"
            assert await c.cas("/t/b", None, "new") is True          # create-if-absent
            assert await c.cas("/t/b", None, "again") is False
            rev = (await c.get("/t/b")).mod_revision
            assert await c.cas_revision("/t/b", rev, "by-rev") is True
            assert await c.cas_revision("/t/b", rev, "stale-rev") is False
            assert (await c.get("/t/b")).value == b"by-rev"
            rr = await c.range("/t/", prefix=True)
            assert [k.key for k in rr.kvs] == [b"/t/a", b"/t/b"] and rr.count == 2
            assert await c.delete("/t/", prefix=True) == 2
            assert (await c.range("/t/", prefix=True)).count == 0
            members = await c.members()
            assert sorted(m["name"] for m in members) == ["e1", "e2", "e3"]
    asyncio.run(go())


def test_lease_expiry_removes_registration_within_ttl(etcd3):
    ttl = 2

    async def go():
        async with EtcdClient(etcd3.cluster.endpoints) as c:
            reg = Registrar(c)
            await reg.register(ep("i1"), ttl_s=ttl)
            await asyncio.sleep(ttl * 1.5)                           # keep-alives hold it
            assert await c.get(reg.key) is not None
            await reg.stop_keepalive()                               # the instance hangs

            async def gone():
                return await c.get(reg.key) is None
            elapsed = await wait_for(gone, ttl + 3)
            # last keep-alive was <= ttl/3 before the stop: remaining TTL in [2/3 ttl, ttl];
            # etcd checks expiry every 500 ms, so allow 1 s on top.
            assert ttl * 2 / 3 - 0.1 <= elapsed <= ttl + 1.0, elapsed
            return elapsed
    print(f"lease expiry after keep-alive stop: {asyncio.run(go()):.2f}s (ttl {ttl}s)")


def test_deregister_removes_at_once(etcd3):
    async def go():
        async with EtcdClient(etcd3.cluster.endpoints) as c:
            reg = Registrar(c)
            await reg.register(ep("i1"), ttl_s=30)
            assert (await c.get(endpoint_key(ep("i1")))) is not None
            await reg.deregister()
            assert await c.get(endpoint_key(ep("i1"))) is None       # the very next read
    asyncio.run(go())


def test_watch_delivers_events_in_order(etcd3):
    async def go():
        async with EtcdClient(etcd3.cluster.endpoints) as c:
            start = (await c.range("/w/", prefix=True)).revision + 1
            first = await c.put("/w/a", "1")
            await c.put("/w/b", "2")
            assert await c.delete("/w/a") == 1
            last = await c.put("/w/a", "3")
            async with c.watch("/w/", start_revision=start, prev_kv=True) as w:
                async with asyncio.timeout(2):
                    got = [await anext(w) for _ in range(4)]
            assert [(e.type, e.key, e.kv.value) for e in got] == [
                ("PUT", b"/w/a", b"1"), ("PUT", b"/w/b", b"2"), ("DELETE", b"/w/a", b""), ("PUT", b"/w/a", b"3")]
            mods = [e.kv.mod_revision for e in got]
            assert mods == sorted(mods) and (mods[0], mods[3]) == (first, last)
            assert got[2].prev_kv is not None and got[2].prev_kv.value == b"1"
            # live events arrive too
            async with c.watch("/w/", start_revision=mods[-1] + 1) as w:
                await c.put("/w/c", "4")
                async with asyncio.timeout(2):
                    live = await anext(w)
            assert (live.type, live.key) == ("PUT", b"/w/c")
    asyncio.run(go())


def test_discovery_follows_changes_within_500ms(etcd3):
    async def go():
        async with EtcdClient(etcd3.cluster.endpoints) as c:
            changes: list[tuple[float, dict]] = []
            disc = Discovery(c, on_change=lambda snap: changes.append((time.monotonic(), snap)))
            await disc.start(timeout_s=5)
            assert disc.healthy and disc.snapshot == {}
            lags = []
            regs = [Registrar(c), Registrar(c)]
            for reg, e in zip(regs, (ep("i1"), ep("i2", "v2")), strict=True):
                await reg.register(e, ttl_s=10)

                async def seen(e=e):
                    return e in disc.snapshot.get("echo", [])
                lags.append(await wait_for(seen, 0.5, 0.005))
            assert disc.snapshot == {"echo": [ep("i1"), ep("i2", "v2")]}
            await regs[0].deregister()

            async def left():
                return disc.snapshot == {"echo": [ep("i2", "v2")]}
            lags.append(await wait_for(left, 0.5, 0.005))
            assert changes[-1][1] == {"echo": [ep("i2", "v2")]}
            listing = await asyncio.to_thread(list_registry, etcd3.cluster.endpoints)
            assert listing.services == {"echo": [ep("i2", "v2")]} and listing.invalid == ()
            await c.put("/minimesh/services/echo/v9/bad", "not json")
            assert (await asyncio.to_thread(list_registry, etcd3.cluster.endpoints)).invalid == (
                "/minimesh/services/echo/v9/bad",)
            await regs[1].deregister()
            await disc.stop()
            return lags
    lags = asyncio.run(go())
    print("discovery lags (s):", [round(x, 4) for x in lags])


def test_leader_kill_elects_new_leader_and_client_fails_over(etcd3):
    async def go():
        old = etcd3.leader()
        assert old is not None
        others = [m.client_url for m in etcd3.cluster.members if m.name != old.name]
        async with EtcdClient([old.client_url, *others], timeout_s=1.0) as c:
            await c.put("/f/k", "before")
            disc = Discovery(c)
            await disc.start(timeout_s=5)
            await c.put(endpoint_key(ep("early")), endpoint_json(ep("early")))

            async def watching():                              # its watch stream is live
                return ep("early") in disc.snapshot.get("echo", [])
            await wait_for(watching, 2)
            etcd3.crash(old.name)
            t0 = time.monotonic()
            new = await asyncio.to_thread(etcd3.wait_leader, 5, (old.name,))
            elected_s = time.monotonic() - t0
            assert new.name != old.name
            await c.put("/f/k", "after")                       # fails over past the dead member
            assert c.endpoints[c.current] != old.client_url
            assert (await c.get("/f/k")).value == b"after"
            reg = Registrar(c)
            await reg.register(ep("late"), ttl_s=10)          # discovery re-synced elsewhere

            async def seen():
                return ep("late") in disc.snapshot.get("echo", [])
            await wait_for(seen, 5)
            assert disc.healthy and disc.resyncs >= 1
            await reg.deregister()
            await disc.stop()
            etcd3.restart(old.name)
            await asyncio.to_thread(etcd3.wait_healthy, 10)
            return elected_s
    print(f"new leader after killing the leader: {asyncio.run(go()):.2f}s")
    logs = [e for m in etcd3.cluster.members for e in scan_log(open(etcd3.cluster.log_file(m)))]
    assert len({e.term for e in logs if e.kind == "leader"}) >= 2   # the elections are in the logs


def test_member_without_quorum_fails_watch_and_writes(etcd3):
    lone = etcd3.cluster.members[0]

    async def go():
        async with EtcdClient([lone.client_url], timeout_s=1.0) as c:
            await c.put("/q/k", "v")
            disc = Discovery(c, max_backoff_s=0.5)
            await disc.start(timeout_s=5)
            async with c.watch("/q/", start_revision=0) as w:
                for m in etcd3.cluster.members[1:]:
                    etcd3.crash(m.name)
                t0 = time.monotonic()
                with pytest.raises(WatchError) as we:
                    async for _ in w:
                        pass
                failed_s = time.monotonic() - t0
            print("watch error:", we.value)
            assert failed_s <= 10 * ELECTION_MS / 1000, failed_s
            with pytest.raises(EtcdError) as ei:                   # hasleader: fast, definite
                await c.put("/q/k", "w")
            assert not ei.value.indeterminate and "no leader" in str(ei.value)
            assert (await c.get("/q/k", serializable=True)).value == b"v"   # stale read allowed

            async def unhealthy():
                return not disc.healthy
            await wait_for(unhealthy, 10 * ELECTION_MS / 1000)
            assert disc.last_error and disc.snapshot == {}          # last snapshot kept (empty)
            await disc.stop()
            return failed_s
    print(f"hasleader watch on a member without quorum failed after {asyncio.run(go()):.2f}s")


def test_paused_member_silent_watch_is_detected_and_discovery_moves_on(etcd3):
    m = etcd3.cluster.members[0]
    others = [o.client_url for o in etcd3.cluster.members[1:]]
    idle = 2.5   # progress notifications every 1 s; a gap can reach 2 intervals

    async def go():
        async with EtcdClient([m.client_url, *others], timeout_s=1.0) as c, \
                EtcdClient(others, timeout_s=1.0) as c2:
            disc = Discovery(c, idle_timeout_s=idle)
            await disc.start(timeout_s=5)
            await c2.put(endpoint_key(ep("early")), endpoint_json(ep("early")))

            async def watching():
                return ep("early") in disc.snapshot.get("echo", [])
            await wait_for(watching, 2)
            await asyncio.sleep(2 * idle)     # progress notifications keep a quiet watch healthy
            assert disc.healthy and disc.resyncs == 0
            etcd3.pause(m.name)                # SIGSTOP: the stream goes silent, nothing closes it
            try:
                async def unhealthy():
                    return not disc.healthy
                detect_s = await wait_for(unhealthy, idle + 1.5)
                assert "silent" in disc.last_error
                await Registrar(c2).register(ep("late"), ttl_s=10)

                async def seen():
                    return disc.healthy and ep("late") in disc.snapshot.get("echo", [])
                await wait_for(seen, 5)
            finally:
                etcd3.resume(m.name)
            await disc.stop()
            return detect_s
    print(f"paused member: silent watch detected after {asyncio.run(go()):.2f}s (idle {idle}s)")
    etcd3.wait_healthy(10)
