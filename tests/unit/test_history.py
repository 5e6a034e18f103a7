"""history.jsonl: typed records round-trip, lines are flushed as written (a killed run keeps
them), concurrent writers never interleave, the reader reports file:line."""
from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from testbed.history import (EtcdOp, Event, FakeClock, FaultRecord, History, HistoryError, Request, fault_windows,
                             jsonable, read_history)

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_of_every_record_type(tmp_path):
    clock = FakeClock(1.5)
    p = tmp_path / "history.jsonl"
    with History(p, clock=clock) as h:
        h.request(t_start=1.0, t_end=1.25, status=200, instance="b-v2-0", version="v2", retries=1, flags="URX",
                  client="h1", service="svcb", id=7)
        h.request(t_start=1.1, t_end=3.1, status=None, error="timeout")
        h.fault(t_start=2.0, t_end=2.01, fault_id=0, phase="apply", fault={"kind": "cut", "src": "a", "dst": "b"},
                actions=("block a->b",), description="cut a->b")
        h.event("pilot", "config_push", version=3, nodes=["h1", "h2"])
        h.event("etcd", "leader_change", t=4.0, leader="e2")
        h.etcd(3, "invoke", "cas", "/k", [1, 2])
        h.etcd(3, "info", "cas", "/k", [1, 2], t=2.0, error="timed out")
    data = read_history(p)
    assert not data.truncated and len(data.records) == 7
    r0, r1 = data.requests
    assert r0 == Request(1.0, 1.25, 200, "b-v2-0", "v2", 1, "URX", None, "h1", "svcb", 7)
    assert r0.ok and r0.latency_s == pytest.approx(0.25)
    assert not r1.ok and r1.error == "timeout"
    assert data.faults == [FaultRecord(2.0, 2.01, 0, "apply", {"kind": "cut", "src": "a", "dst": "b"},
                                       ("block a->b",), True, None, "cut a->b")]
    assert data.events == [Event(1.5, "pilot", "config_push", {"version": 3, "nodes": ["h1", "h2"]}),
                           Event(4.0, "etcd", "leader_change", {"leader": "e2"})]
    assert data.etcd[0] == EtcdOp(1.5, 3, "invoke", "cas", "/k", [1, 2])
    assert data.etcd[1].error == "timed out"


def test_status_classification():
    assert Request(0, 1, 302).ok and not Request(0, 1, 503).ok and not Request(0, 1, 404).ok
    assert not Request(0, 1, 200, error="reset after headers").ok


def test_each_line_is_on_disk_before_close(tmp_path):
    p = tmp_path / "h.jsonl"
    h = History(p)
    h.request(t_start=0, t_end=1, status=200)
    assert len(read_history(p).requests) == 1       # flushed, not buffered
    h.close()


def test_a_killed_writer_keeps_what_it_wrote(tmp_path):
    p = tmp_path / "h.jsonl"
    code = ("import os, signal, sys\n"
            "from testbed.history import History\n"
            f"h = History({str(p)!r})\n"
            "for i in range(500):\n"
            "    h.request(t_start=i, t_end=i + 0.5, status=200, id=i)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    data = read_history(p)
    assert [r.id for r in data.requests] == list(range(500))


def test_threads_never_interleave_lines(tmp_path):
    p = tmp_path / "h.jsonl"
    n_threads, per = 8, 400
    with History(p) as h:
        def work(k):
            for i in range(per):
                h.event("t", "tick", t=float(i), thread=k, i=i, pad="x" * 200)
        ths = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    lines = p.read_text().splitlines()
    assert len(lines) == n_threads * per
    seen = {(json.loads(line)["details"]["thread"], json.loads(line)["details"]["i"]) for line in lines}
    assert len(seen) == n_threads * per


def test_asyncio_tasks_can_share_a_history(tmp_path):
    p = tmp_path / "h.jsonl"

    async def main(h):
        async def client(k):
            for i in range(50):
                h.request(t_start=i, t_end=i + 1, status=200, client=f"c{k}", id=i)
                await asyncio.sleep(0)
        await asyncio.gather(*(client(k) for k in range(5)))
    with History(p) as h:
        asyncio.run(main(h))
    assert len(read_history(p).requests) == 250


def test_truncated_last_line_is_tolerated_and_reported(tmp_path):
    p = tmp_path / "h.jsonl"
    good = json.dumps(jsonable(Request(0, 1, 200)))
    p.write_text(good + "\n" + good[:17])
    data = read_history(p)
    assert data.truncated and len(data.requests) == 1


@pytest.mark.parametrize("content,line,words", [
    ('{"type":"request","t_start":0,"t_end":1}\nnot json\n{"type":"event"}\n', 2, "not JSON"),
    ('{"type":"spaceship"}\n', 1, "expected an object with type one of request, fault, event, etcd"),
    ('{"type":"request","t_start":0,"t_end":1,"colour":"red"}\n', 1, "unknown field(s) colour"),
    ('{"type":"request","t_start":0}\n', 1, "t_end"),
    ('{"type":"etcd","t":0,"process":1,"op_type":"maybe","f":"read","key":"k"}\n', 1, "allowed invoke"),
])
def test_malformed_lines_name_file_and_line(tmp_path, content, line, words):
    p = tmp_path / "h.jsonl"
    p.write_text(content)
    with pytest.raises(HistoryError) as e:
        read_history(p)
    assert str(e.value).startswith(f"{p}:{line}:") and words in str(e.value)


def test_fault_windows_pair_apply_and_revert():
    recs = [FaultRecord(5, 5.1, 1, "apply", {"kind": "crash"}, description="crash x"),
            FaultRecord(1, 1.2, 0, "apply", {"kind": "cut"}),
            FaultRecord(3, 3.3, 0, "revert", {"kind": "cut"})]
    assert fault_windows(recs) == [(1, 3.3, "cut"), (5, None, "crash x")]


def test_jsonable():
    assert jsonable({"a": (1, math.inf), "b": frozenset({2, 1}), "c": math.nan}) == {"a": [1, None], "b": [1, 2],
                                                                                     "c": None}
    assert jsonable(Request(0, 1))["type"] == "request"


def test_history_needs_a_clock_for_implicit_times(tmp_path):
    with History(tmp_path / "h.jsonl") as h:
        with pytest.raises(ValueError, match="no clock"):
            h.event("pilot", "config_push")
    with pytest.raises(ValueError, match="path or a stream"):
        History()


def test_event_hook_accepts_pilot_and_registry_shapes(tmp_path):
    clock = FakeClock(2.0)
    with History(tmp_path / "h.jsonl", clock=clock) as h:
        h.event_hook("pilot")({"t": 1700000000.0, "event": "config", "version": 3})
        h.event_hook("registry")("lease_lost", {"key": "/minimesh/services/b/v1/b-1", "lease": 7})
    ev = read_history(tmp_path / "h.jsonl").events
    assert ev[0] == Event(2.0, "pilot", "config", {"version": 3, "wall_t": 1700000000.0})
    assert ev[1] == Event(2.0, "registry", "lease_lost", {"key": "/minimesh/services/b/v1/b-1", "lease": 7})


class Ambiguous(Exception):
    indeterminate = True


def test_etcd_call_records_invoke_and_completion(tmp_path):
    from testbed.run.checkers import check_linearizability
    clock = FakeClock()
    p = tmp_path / "h.jsonl"

    async def returns(v):
        clock.advance(0.1)
        return v

    async def raises(e):
        clock.advance(0.1)
        raise e

    async def main(h):
        await h.etcd_call(1, "write", "/k", "a", lambda: returns(7))
        assert await h.etcd_call(1, "read", "/k", None, lambda: returns("a"), serializable=True) == "a"
        await h.etcd_call(1, "cas", "/k", ["a", "b"], lambda: returns(True))
        await h.etcd_call(1, "cas", "/k", ["zz", "c"], lambda: returns(False))
        with pytest.raises(Ambiguous):
            await h.etcd_call(2, "write", "/k", "d", lambda: raises(Ambiguous("leader changed")))
        with pytest.raises(OSError):
            await h.etcd_call(3, "write", "/k", "e", lambda: raises(OSError("no leader")))
    with History(p, clock=clock) as h:
        asyncio.run(main(h))
    ops = read_history(p).etcd
    assert [(o.process, o.op_type, o.f) for o in ops] == [
        (1, "invoke", "write"), (1, "ok", "write"), (1, "invoke", "read"), (1, "ok", "read"),
        (1, "invoke", "cas"), (1, "ok", "cas"), (1, "invoke", "cas"), (1, "fail", "cas"),
        (2, "invoke", "write"), (2, "info", "write"), (3, "invoke", "write"), (3, "fail", "write")]
    assert ops[3].value == "a" and ops[3].serializable and "leader changed" in ops[9].error
    v = check_linearizability(ops)
    assert v.valid and v.info_ops == 1 and v.operations == 3     # the unobserved info write is pruned


def test_import_events_turns_wall_clock_into_run_time_and_skips_junk(tmp_path):
    log = tmp_path / "pilot-events.jsonl"
    log.write_text('{"t": 1005.5, "event": "push", "node": "n1", "version": "3"}\nnot json\n[1]\n'
                   '{"kind": "ack", "node": "n1"}\n')
    path = tmp_path / "h.jsonl"
    with History(path, clock=FakeClock(2.0)) as h:
        assert h.import_events("pilot", log, wall0=1000.0, config="default") == 2
        assert h.import_events("pilot", tmp_path / "missing.jsonl", wall0=0.0) == 0
    evs = read_history(path).events
    assert [(e.source, e.kind, e.t) for e in evs] == [("pilot", "push", 5.5), ("pilot", "ack", 2.0)]
    assert evs[0].details == {"node": "n1", "version": "3", "config": "default"}
