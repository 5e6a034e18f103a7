"""etcd cluster spec, exact command lines, member IDs, the launcher with fake spawn/probe,
and the log scanner (no etcd, no root)."""
from __future__ import annotations

import signal

import pytest

from testbed.mesh.etcd.cluster import EtcdCluster, EtcdMember, EtcdRunner
from testbed.mesh.etcd.wire import MemberStatus, scan_log

M = (EtcdMember("e1", "10.0.0.1"), EtcdMember("e2", "10.0.0.2"), EtcdMember("e3", "10.0.0.3", host="h3"))


def test_argv_is_the_exact_etcd_command_line():
    c = EtcdCluster(M, "/var/lib/mm", heartbeat_ms=50, election_ms=500, log_root="/tmp/logs")
    assert c.argv(M[0]) == [
        "etcd", "--name", "e1", "--data-dir", "/var/lib/mm/e1.etcd",
        "--listen-client-urls", "http://10.0.0.1:2379,http://127.0.0.1:2379",
        "--advertise-client-urls", "http://10.0.0.1:2379",
        "--listen-peer-urls", "http://10.0.0.1:2380",
        "--initial-advertise-peer-urls", "http://10.0.0.1:2380",
        "--initial-cluster", "e1=http://10.0.0.1:2380,e2=http://10.0.0.2:2380,e3=http://10.0.0.3:2380",
        "--initial-cluster-state", "new", "--initial-cluster-token", "minimesh-etcd",
        "--pre-vote", "--heartbeat-interval", "50", "--election-timeout", "500",
        "--experimental-watch-progress-notify-interval", "1000ms",
        "--logger", "zap", "--log-outputs", "/tmp/logs/e1.log"]
    assert c.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379")
    assert (M[0].run_on, M[2].run_on) == ("e1", "h3")


def test_loopback_members_do_not_listen_twice():
    c = EtcdCluster.local(2, "/d", ports=[3001, 3002, 3003, 3004])
    argv = c.argv(c.members[1])
    assert argv[argv.index("--listen-client-urls") + 1] == "http://127.0.0.1:3003"
    assert c.initial_cluster == "e1=http://127.0.0.1:3002,e2=http://127.0.0.1:3004"
    assert EtcdCluster(M, "/d").heartbeat_ms == 100 and EtcdCluster(M, "/d").election_ms == 1000


def test_member_id_is_what_etcd_computes():
    # measured: etcd 3.4.23 with peer URL http://127.0.0.1:23801 and token "t" logged 77fbfd6041c9f8ba
    c = EtcdCluster((EtcdMember("a", "127.0.0.1", 23791, 23801),), "/d", token="t")
    assert c.member_id(c.members[0]) == 0x77FBFD6041C9F8BA
    assert c.member_by_id("77fbfd6041c9f8ba") is c.members[0]
    assert c.member_by_id(1) is None


@pytest.mark.parametrize("kw,msg", [
    (dict(members=()), "members is empty"),
    (dict(members=(M[0], EtcdMember("e1", "10.0.0.9"))), "names repeated: e1"),
    (dict(members=(M[0], EtcdMember("e9", "10.0.0.1"))), "e9 and e1 both use 10.0.0.1 port 2379"),
    (dict(members=(EtcdMember("a", "127.0.0.1", 1, 2), EtcdMember("b", "127.0.0.1", 2, 3))),
     "both use 127.0.0.1 port 2"),
    (dict(members=(EtcdMember("a", "10.0.0.1", host="h"), EtcdMember("b", "10.0.0.2", host="h"))),
     "b and a both use 127.0.0.1 of host h port 2379"),
    (dict(members=M, heartbeat_ms=100, election_ms=400), "election_ms 400 must be between 5 x heartbeat_ms (500)"),
    (dict(members=M, heartbeat_ms=0), "heartbeat_ms 0"),
])
def test_cluster_errors_name_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        EtcdCluster(data_root="/d", **kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(name="bad name", ip="10.0.0.1"), "use letters"),
    (dict(name="e1", ip="h1"), "not an IPv4 address"),
    (dict(name="e1", ip="10.0.0.1", client_port=70000), "client_port 70000"),
    (dict(name="e1", ip="10.0.0.1", client_port=5, peer_port=5), "both 5"),
])
def test_member_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        EtcdMember(**kw)


class FakeProc:
    def __init__(self):
        self.signals, self.returncode, self.pid = [], None, 4242
        self.stdout = self.stderr = None

    def poll(self):
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.send_signal(signal.SIGKILL)


def test_runner_spawns_crashes_restarts_and_finds_the_leader(tmp_path):
    c = EtcdCluster(M, str(tmp_path))
    spawned, view = [], {}

    def spawn(m, argv):
        spawned.append((m.name, list(argv)))
        return FakeProc()

    def probe(m, timeout_s):
        return view.get(m.name)
    run = EtcdRunner(c, spawn, probe)
    run.start()
    assert [n for n, _ in spawned] == ["e1", "e2", "e3"] and spawned[1][1] == c.argv(M[1])
    ids = {m.name: c.member_id(m) for m in M}
    view.update(e1=MemberStatus(ids["e1"], ids["e2"], 3, 10, 5), e2=MemberStatus(ids["e2"], ids["e2"], 3, 10, 5),
                e3=MemberStatus(ids["e3"], ids["e2"], 3, 10, 5))
    assert run.wait_healthy(1).name == "e2" and run.leader().name == "e2"
    # a deposed leader still answering with an older term does not win
    view["e1"] = MemberStatus(ids["e1"], ids["e1"], 2, 9, 5)
    assert run.leader().name == "e2"
    h = run.handles["e2"]
    run.crash("e2")
    assert h.signals == [signal.SIGKILL] and not run.running("e2") and run.status("e2") is None
    with pytest.raises(RuntimeError, match="already running"):
        run.restart("e1")
    run.restart("e2")
    assert run.running("e2") and len(spawned) == 4
    run.pause("e3")
    run.resume("e3")
    run.pause("e3")
    h3 = run.handles["e3"]
    run.crash("e3", signal.SIGTERM)          # a paused member is woken to receive it
    assert h3.signals == [signal.SIGSTOP, signal.SIGCONT, signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT]
    run.restart("e3")
    view.clear()
    with pytest.raises(TimeoutError, match="e1: no answer; e2: no answer; e3: no answer"):
        run.wait_healthy(0.1)
    run.stop()
    assert run.handles == {}


def test_runner_reports_a_member_that_exited(tmp_path):
    c = EtcdCluster(M, str(tmp_path))

    def spawn(m, argv):
        (tmp_path / f"{m.name}.log.stderr").write_text("etcdmain: listen tcp 10.0.0.1:2380: bind: address in use\n")
        p = FakeProc()
        p.returncode = 1
        return p
    run = EtcdRunner(c, spawn, lambda m, t: None)
    run.start()
    with pytest.raises(RuntimeError, match="e1 exited with 1: etcdmain: listen tcp .*address in use"):
        run.wait_healthy(1)


LOG = r"""{"level":"info","ts":"2026-11-27T07:13:43.072Z","caller":"raft/raft.go:706","msg":"77fbfd6041c9f8ba became follower at term 1"}
{"level":"info","ts":"2026-11-27T07:13:43.5Z","caller":"raft/raft.go:923","msg":"77fbfd6041c9f8ba became pre-candidate at term 1"}
{"level":"info","ts":"2026-11-27T07:13:43.6Z","caller":"raft/raft.go:713","msg":"77fbfd6041c9f8ba became candidate at term 2"}
{"level":"info","ts":"2026-11-27T07:13:43.7Z","caller":"raft/node.go:325","msg":"raft.node: 77fbfd6041c9f8ba elected leader 77fbfd6041c9f8ba at term 2"}
not json at all
{"level":"warn","ts":"2026-11-27T07:14:00.1Z","caller":"etcdserver/raft.go:390","msg":"leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk","to":"a1","heartbeat-interval":"50ms","expected-duration":"100ms","exceeded-duration":"412ms"}
{"level":"warn","ts":"2026-11-27T07:14:00.2Z","caller":"etcdserver/util.go:163","msg":"apply request took too long","took":"350ms","expected-duration":"100ms"}
{"level":"info","ts":"2026-11-27T07:14:01Z","caller":"raft/node.go:332","msg":"raft.node: 77fbfd6041c9f8ba lost leader 77fbfd6041c9f8ba at term 3"}
{"level":"info","ts":"2026-11-27T07:14:02Z","caller":"raft/node.go:327","msg":"raft.node: 77fbfd6041c9f8ba changed leader from 77fbfd6041c9f8ba to 1a2b at term 4"}
"""  # noqa: E501  (etcd's log lines, verbatim)


def test_scan_log_finds_elections_heartbeat_warnings_and_slow_requests():
    ev = scan_log(LOG.splitlines())
    assert [(e.kind, e.term, e.leader, e.detail) for e in ev] == [
        ("campaign", 1, "", "pre-candidate"), ("campaign", 2, "", "candidate"),
        ("leader", 2, "77fbfd6041c9f8ba", ""), ("heartbeat_late", 0, "", "412ms"),
        ("slow_request", 0, "", "350ms"), ("lost_leader", 3, "77fbfd6041c9f8ba", ""),
        ("leader", 4, "1a2b", "")]
    assert ev[3].ts == "2026-11-27T07:14:00.1Z"
