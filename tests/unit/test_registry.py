"""Registry without etcd: key layout, JSON, gateway request bodies, watch parsing, the
client's failover rules, and Registrar/Discovery against scripted fake clients."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest

from testbed.mesh.etcd import wire as W
from testbed.mesh.etcd.client import EtcdClient, EtcdError, RangeResult, Watch, _Retry
from testbed.mesh.etcd.registry import DEFAULT_PREFIX, endpoint_json, endpoint_key, parse_endpoint, parse_key
from testbed.mesh.etcd.wire import WatchError
from testbed.mesh.model import Endpoint


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


EP = Endpoint("reviews", "v2", "reviews-v2-0", host="h3", ip="10.0.0.3", port=15001,
              labels={"zone": "b"})


# --- key layout and JSON -------------------------------------------------------------------

def test_key_layout_round_trip():
    key = endpoint_key(EP)
    assert key == "/minimesh/services/reviews/v2/reviews-v2-0"
    assert parse_key(key) == ("reviews", "v2", "reviews-v2-0")
    assert parse_key(key.encode()) == ("reviews", "v2", "reviews-v2-0")
    assert endpoint_key(EP, "/x/") == "/x/reviews/v2/reviews-v2-0"


@pytest.mark.parametrize("key", ["/minimesh/services/reviews/v2", "/minimesh/services/a/b/c/d",
                                 "/minimesh/services/a//c", "/other/a/b/c"])
def test_parse_key_rejects_other_shapes(key):
    assert parse_key(key) is None


@pytest.mark.parametrize("field,value", [("service", ""), ("version", "v/1"), ("instance", "")])
def test_bad_segments_are_refused_with_the_field_name(field, value):
    kw = dict(service="s", version="v1", instance="i", host="h", ip="10.0.0.1", port=1)
    kw[field] = value
    with pytest.raises(ValueError, match=f"endpoint {field}"):
        endpoint_key(Endpoint(**kw))


def test_endpoint_json_round_trip_and_consistency_with_key():
    value = endpoint_json(EP)
    assert json.loads(value) == {"service": "reviews", "version": "v2", "instance": "reviews-v2-0",
                                 "host": "h3", "ip": "10.0.0.3", "port": 15001, "labels": {"zone": "b"}}
    kv = W.KV(endpoint_key(EP).encode(), value.encode())
    assert parse_endpoint(kv) == EP
    # JSON that contradicts its key, bad JSON, missing fields: not a registration
    assert parse_endpoint(W.KV(b"/minimesh/services/reviews/v1/reviews-v2-0", value.encode())) is None
    assert parse_endpoint(W.KV(endpoint_key(EP).encode(), b"{not json")) is None
    assert parse_endpoint(W.KV(endpoint_key(EP).encode(), b'{"service": "reviews"}')) is None


# --- gateway request bodies ------------------------------------------------------------------

def test_prefix_end_matches_etcd():
    assert W.prefix_end(b"/a/") == b"/a0"
    assert W.prefix_end(b"a\xff") == b"b"
    assert W.prefix_end(b"\xff\xff") == b"\0"


def test_range_put_delete_bodies():
    assert W.range_request("/k") == {"key": b64("/k")}
    assert W.range_request(DEFAULT_PREFIX, prefix=True, serializable=True, revision=7, limit=2) == {
        "key": b64(DEFAULT_PREFIX), "range_end": b64("/minimesh/services0"),
        "serializable": True, "revision": 7, "limit": 2}
    assert W.put_request("/k", "v", lease=7587864) == {"key": b64("/k"), "value": b64("v"), "lease": "7587864"}
    assert W.put_request(b"\x00k", b"\xffv") == {"key": "AGs=", "value": "/3Y="}
    assert W.delete_request("/d/", prefix=True) == {"key": b64("/d/"), "range_end": b64("/d0")}


def test_txn_compare_by_value_revision_and_absence():
    assert W.compare("/k", "VALUE", "old") == {"key": b64("/k"), "target": "VALUE", "result": "EQUAL",
                                                "value": b64("old")}
    assert W.compare("/k", "MOD", 12) == {"key": b64("/k"), "target": "MOD", "result": "EQUAL",
                                          "mod_revision": "12"}
    assert W.compare("/k", "CREATE", 0)["create_revision"] == "0"
    body = W.txn_request([W.compare("/k", "VERSION", 3, "GREATER")],
                         [{"request_put": W.put_request("/k", "v")}],
                         [{"request_range": W.range_request("/k")}])
    assert body["compare"][0]["version"] == "3" and body["compare"][0]["result"] == "GREATER"
    assert list(body) == ["compare", "success", "failure"]
    with pytest.raises(ValueError, match="allowed VALUE, MOD, CREATE, VERSION"):
        W.compare("/k", "LEASE", 1)
    with pytest.raises(ValueError, match="allowed EQUAL"):
        W.compare("/k", "MOD", 1, "SAME")


def test_watch_request_asks_for_progress_and_start_revision():
    assert W.watch_request("/p/", start_revision=5, prev_kv=True) == {"create_request": {
        "key": b64("/p/"), "range_end": b64("/p0"), "progress_notify": True,
        "start_revision": 5, "prev_kv": True}}


# --- responses -------------------------------------------------------------------------------

HDR = {"cluster_id": "1", "member_id": "8645782499530242234", "revision": "9", "raft_term": "2"}


def test_parse_watch_events_with_defaults_omitted():
    msg = {"result": {"header": HDR, "events": [
        {"kv": {"key": b64("/a"), "create_revision": "2", "mod_revision": "2", "version": "1",
                "value": b64("1"), "lease": "77"}},
        {"type": "DELETE", "kv": {"key": b64("/a"), "mod_revision": "3"},
         "prev_kv": {"key": b64("/a"), "value": b64("1"), "mod_revision": "2"}}]}}
    rev, events, created = W.parse_watch_message(msg)
    assert (rev, created) == (9, False)
    assert [(e.type, e.key, e.kv.value, e.kv.mod_revision) for e in events] == [
        ("PUT", b"/a", b"1", 2), ("DELETE", b"/a", b"", 3)]
    assert events[0].kv.lease == 77 and events[1].prev_kv.value == b"1"
    assert W.parse_watch_message({"result": {"header": HDR, "created": True}}) == (9, [], True)
    assert W.parse_watch_message({"result": {"header": HDR}}) == (9, [], False)   # progress


@pytest.mark.parametrize("msg,exc,text", [
    ({"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}, WatchError, "no leader"),
    ({"result": {"header": HDR, "canceled": True}}, WatchError, "cancelled"),
    ({"result": {"header": HDR, "canceled": True, "compact_revision": "5"}}, W.WatchCompacted, "5"),
    ({"unexpected": 1}, WatchError, "unexpected"),
])
def test_watch_failures_raise(msg, exc, text):
    with pytest.raises(exc, match=text):
        W.parse_watch_message(msg)


def test_member_status_parse():
    st = W.MemberStatus.from_json({"header": HDR, "version": "3.4.23", "leader": "8645782499530242234",
                                   "raftIndex": "4", "raftTerm": "2"})
    assert (st.member_id, st.leader_id, st.raft_term, st.raft_index, st.revision) == (
        0x77FBFD6041C9F8BA, 0x77FBFD6041C9F8BA, 2, 4, 9)
    assert W.MemberStatus.from_json({"header": HDR}).leader_id == 0


# --- client failover (transport replaced by a script) ------------------------------------------

def scripted_client(monkeypatch, script, **kw):
    """script: url-prefix -> list of outcomes (dict answer or exception), consumed in order."""
    c = EtcdClient(list(script), **kw)
    calls = []

    async def post(url, body, leader):
        base = url.split("/v3/")[0]
        calls.append((base, leader))
        out = script[base].pop(0)
        if isinstance(out, Exception):
            raise out
        return out
    monkeypatch.setattr(c, "_post_once", post)
    return c, calls


OK_PUT = {"header": {"revision": "10"}}


def test_unreachable_member_is_skipped_and_remembered(monkeypatch):
    c, calls = scripted_client(monkeypatch, {"http://a": [_Retry("refused", False)],
                                              "http://b": [OK_PUT, OK_PUT]})
    assert asyncio.run(c.put("/k", "v")) == 10
    assert asyncio.run(c.put("/k", "v")) == 10
    assert [u for u, _ in calls] == ["http://a", "http://b", "http://b"]


def test_ambiguous_write_is_not_retried_and_marked_indeterminate(monkeypatch):
    c, calls = scripted_client(monkeypatch, {"http://a": [_Retry("request timed out", True)],
                                              "http://b": [OK_PUT]})
    with pytest.raises(EtcdError) as ei:
        asyncio.run(c.put("/k", "v"))
    assert ei.value.indeterminate and [u for u, _ in calls] == ["http://a"]
    assert c.endpoints[c.current] == "http://b"          # the next call starts elsewhere


def test_ambiguous_read_moves_on_and_serializable_reads_need_no_leader(monkeypatch):
    rng = {"header": {"revision": "4", "member_id": "2"}, "kvs": [{"key": b64("/k"), "value": b64("v")}],
           "count": "1"}
    c, calls = scripted_client(monkeypatch, {"http://a": [_Retry("timeout", True)],
                                              "http://b": [rng, rng]})
    r = asyncio.run(c.range("/k"))
    assert r == RangeResult((W.KV(b"/k", b"v"),), 4, 1, 2)
    assert asyncio.run(c.get("/k", serializable=True)).value == b"v"
    assert calls == [("http://a", True), ("http://b", True), ("http://b", False)]


def test_all_members_failing_names_each(monkeypatch):
    c, _ = scripted_client(monkeypatch, {"http://a": [_Retry("refused", False)],
                                          "http://b": [_Retry("etcdserver: no leader", False)]})
    with pytest.raises(EtcdError, match="http://a: refused; http://b: etcdserver: no leader") as ei:
        asyncio.run(c.get("/k"))
    assert not ei.value.indeterminate


def test_client_needs_endpoints():
    with pytest.raises(ValueError, match="endpoints is empty"):
        EtcdClient([])


# --- the watch stream's framing (response replaced by scripted chunks) ---------------------------

class Chunks:
    def __init__(self, chunks, stall_s=0.0):
        self.chunks, self.stall_s = list(chunks), stall_s

    async def readany(self):
        if not self.chunks:
            await asyncio.sleep(self.stall_s)
            return b""
        return self.chunks.pop(0)


class FakeResp:
    def __init__(self, content):
        self.content, self.closed = content, False

    def close(self):
        self.closed = True


def line(events=(), rev=5):
    return (json.dumps({"result": {"header": {"revision": str(rev)}, "events": list(events)}}) + "\n").encode()


def put_ev(key, value, rev):
    return {"kv": {"key": b64(key), "value": b64(value), "mod_revision": str(rev)}}


def test_watch_reassembles_lines_across_chunks_and_raises_at_stream_end():
    first = line([put_ev("/a", "1", 3), put_ev("/b", "2", 4)], rev=4)
    chunks = [first[:10], first[10:] + b"\n" + line(rev=6) + line([put_ev("/a", "3", 7)], rev=7)]

    async def go():
        w = Watch(EtcdClient(["http://a"]), {})
        w._resp, w.endpoint = FakeResp(Chunks(chunks)), "http://a"
        got = [await anext(w) for _ in range(3)]
        with pytest.raises(WatchError, match="http://a ended"):
            await anext(w)
        return got, w
    got, w = asyncio.run(go())
    assert [(e.key, e.kv.value, e.revision) for e in got] == [(b"/a", b"1", 4), (b"/b", b"2", 4), (b"/a", b"3", 7)]
    assert w.revision == 7          # progress (empty) responses advance it too


def test_silent_watch_raises_after_idle_timeout():

    async def go():
        c = EtcdClient(["http://a", "http://b"])
        w = Watch(c, {}, idle_timeout_s=0.1)
        w._resp, w.endpoint = FakeResp(Chunks([], stall_s=5)), "http://a"
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(WatchError, match="silent for 0.1s"):
            await anext(w)
        return asyncio.get_running_loop().time() - t0, c
    elapsed, c = asyncio.run(go())
    assert 0.09 <= elapsed < 1.0
    assert c.endpoints[c.current] == "http://b"      # the next call avoids the silent member
