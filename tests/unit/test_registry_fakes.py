"""Registrar and Discovery against in-memory fake clients: lease loss, re-registration,
clean deregistration, watch errors, re-sync with backoff, staleness flags."""
from __future__ import annotations

import asyncio

import pytest

from testbed.mesh.etcd.client import EtcdError, Lease, RangeResult
from testbed.mesh.etcd.registry import Discovery, Registrar, endpoint_json, endpoint_key
from testbed.mesh.etcd.wire import KV, WatchError, WatchEvent
from testbed.mesh.model import Endpoint


def ep(i: str, v: str = "v1") -> Endpoint:
    return Endpoint("echo", v, i, host="h1", ip="10.0.0.1", port=8080)


def kv(e: Endpoint, rev: int) -> KV:
    return KV(endpoint_key(e).encode(), endpoint_json(e).encode(), rev, rev, 1)


class FakeLeases:
    """A key-value store with leases, as far as Registrar uses it."""

    def __init__(self):
        self.kv: dict[str, tuple[str, int]] = {}
        self.leases: set[int] = set()
        self.next = 100
        self.keepalive_errors = 0

    async def lease_grant(self, ttl_s):
        self.next += 1
        self.leases.add(self.next)
        return Lease(self.next, ttl_s)

    async def put(self, key, value, *, lease=0):
        self.kv[key] = (value, lease)
        return 1

    async def lease_keepalive(self, lease_id):
        if self.keepalive_errors:
            self.keepalive_errors -= 1
            raise EtcdError("no etcd member answered")
        return 5 if lease_id in self.leases else 0

    async def lease_revoke(self, lease_id):
        self.leases.discard(lease_id)
        self.kv = {k: v for k, v in self.kv.items() if v[1] != lease_id}

    def expire(self, lease_id):
        self.leases.discard(lease_id)
        self.kv = {k: v for k, v in self.kv.items() if v[1] != lease_id}


def test_registrar_keeps_alive_reregisters_after_lease_loss_and_revokes_on_stop():
    async def go():
        fake, events = FakeLeases(), []
        reg = Registrar(fake, on_event=lambda kind, d: events.append(kind))
        lease = await reg.register(ep("i1"), ttl_s=1)            # keep-alive every 1/3 s
        assert fake.kv[reg.key] == (endpoint_json(ep("i1")), lease)
        fake.expire(lease)                                       # e.g. expired during a partition
        await asyncio.sleep(0.5)
        assert reg.lease_id not in (None, lease) and reg.reregistrations == 1
        assert fake.kv[reg.key][1] == reg.lease_id
        fake.keepalive_errors = 1
        await asyncio.sleep(0.4)
        assert "keepalive_error" in events
        await asyncio.sleep(0.4)
        assert reg.last_error is None                            # recovered on the next tick
        await reg.deregister()
        assert reg.key not in fake.kv and not fake.leases
        return events
    events = asyncio.run(go())
    assert events[:3] == ["registered", "lease_lost", "reregistered"] and events[-1] == "deregistered"


def test_registrar_refuses_bad_input_before_touching_etcd():
    async def go():
        reg = Registrar(FakeLeases())
        with pytest.raises(ValueError, match="ttl_s 0"):
            await reg.register(ep("i1"), ttl_s=0)
        with pytest.raises(ValueError, match="endpoint instance"):
            await reg.register(ep("a/b"), ttl_s=5)
    asyncio.run(go())


class FakeWatch:
    def __init__(self, items):
        self.items = list(items)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0.01)
        if not self.items:
            await asyncio.sleep(3600)
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class ScriptedRegistry:
    """range() answers from `lists` in order; watch() from `watches` in order."""

    def __init__(self, lists, watches):
        self.lists, self.watches, self.watch_starts = list(lists), list(watches), []

    async def range(self, key, *, prefix=False, serializable=False):
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def watch(self, key, *, start_revision=0, idle_timeout_s=None):
        self.watch_starts.append(start_revision)
        return FakeWatch(self.watches.pop(0))


def test_discovery_lists_watches_resyncs_and_reports_staleness():
    a, b = ep("a"), ep("b", "v2")
    client = ScriptedRegistry(
        lists=[RangeResult((kv(a, 5),), 7, 1, 1),
               EtcdError("no etcd member answered"),             # first re-list fails too
               RangeResult((kv(b, 9),), 12, 1, 1)],
        watches=[[WatchEvent("PUT", kv(b, 8), None, 8), WatchError("watch stream ended")],
                 []])
    seen = []

    async def go():
        d = Discovery(client, on_change=lambda snap: seen.append(snap), backoff_s=0.2)
        await d.start(timeout_s=1)
        await asyncio.sleep(0.1)      # watch error at ~0.02 s, next list at ~0.22 s
        stale = (d.healthy, d.last_error, d.snapshot)
        await asyncio.sleep(0.9)      # failed list, 0.4 s backoff, good list at ~0.62 s
        await d.stop()
        return d, stale
    d, stale = asyncio.run(go())
    # between the watch error and a good re-list: unhealthy, error visible, last snapshot kept
    assert stale == (False, "WatchError: watch stream ended", {"echo": [a, b]})
    assert seen == [{"echo": [a]}, {"echo": [a, b]}, {"echo": [b]}]
    assert client.watch_starts == [8, 13]                          # listed revision + 1
    assert d.resyncs == 2 and d.revision == 12 and not d.healthy   # stopped


def test_discovery_ignores_invalid_values_and_survives_a_broken_callback():
    a = ep("a")
    bad = KV(b"/minimesh/services/echo/v1/x", b"{oops", 3, 3, 1)
    client = ScriptedRegistry(lists=[RangeResult((kv(a, 2), bad), 3, 2, 1)],
                              watches=[[WatchEvent("DELETE", KV(endpoint_key(a).encode(), b"", 2, 4), None, 4)]])

    def boom(snap):
        raise RuntimeError("callback bug")

    async def go():
        d = Discovery(client, on_change=boom)
        await d.start(timeout_s=1)
        await asyncio.sleep(0.1)
        await d.stop()
        return d
    d = asyncio.run(go())
    assert d.invalid == {b"/minimesh/services/echo/v1/x"} and d.snapshot == {}
    assert d.last_error == "on_change raised RuntimeError: callback bug"
