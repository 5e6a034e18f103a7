"""The open-loop workload's pure parts, and the workload process against a local echo
server: schedule, latency from the scheduled time, records written as they complete."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from testbed.history import History, read_history
from testbed.run.workload import OffsetClock, describe_response, run_http, send_times, workload_argv

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_send_times_are_fixed_by_rate_not_by_completions():
    assert send_times(10, 1.0) == pytest.approx([i / 10 for i in range(10)])
    assert send_times(4, 1.0, start_s=2.0) == pytest.approx([2.0, 2.25, 2.5, 2.75])
    assert len(send_times(50, 20.0)) == 1000
    assert send_times(5, 0) == []


@pytest.mark.parametrize("rate,duration", [(0, 1), (-1, 1), (1, -1)])
def test_send_times_rejects_nonsense(rate, duration):
    with pytest.raises(ValueError):
        send_times(rate, duration)


def test_describe_response_reads_echo_identity_and_envoy_headers():
    info = describe_response(200, {"X-Echo-Instance": "r2", "x-echo-version": "v2",
                                   "x-envoy-attempt-count": "3"}, b"")
    assert (info.instance, info.version, info.retries, info.flags) == ("r2", "v2", 2, "")
    body = json.dumps({"instance": "r1", "version": "v1"}).encode()
    assert describe_response(200, {}, body).instance == "r1"


@pytest.mark.parametrize("body,flag", [(b"upstream request timeout", "UT"), (b"no healthy upstream", "UH"),
                                       (b"upstream connect error or disconnect/reset before headers. "
                                        b"reset reason: connection failure", "UF"),
                                       (b"something else", "")])
def test_describe_response_infers_envoy_flags_from_local_replies(body, flag):
    assert describe_response(504 if flag == "UT" else 503, {}, body).flags == flag
    assert describe_response(504, {"x-envoy-response-flags": "UT,URX"}, body).flags == "UT,URX"


def test_workload_argv_round_trip():
    argv = workload_argv("py", "http", "/h.jsonl", 12.5, 20, 3, start_s=1, url="http://x/",
                         header={"User-Agent": "Android"}, endpoints=["a", "b"])
    assert argv[:4] == ["py", "-m", "testbed.run.workload", "http"]
    assert argv[argv.index("--header") + 1] == "User-Agent: Android"
    assert argv[argv.index("--endpoints") + 1] == "a,b"
    assert argv[argv.index("--t0") + 1] == "12.5"


class SlowServer:
    """HTTP/1.1 server answering every request after ``delay_s`` (one thread per connection)."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    time.sleep(self.delay_s)
                    body = b'{"instance": "slow-1", "version": "v9"}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        self.sock.close()


def test_open_loop_keeps_the_rate_when_the_server_is_slow(tmp_path):
    """A 300 ms server at 20 req/s: a closed loop would send ~3/s; the open loop sends every
    50 ms and its latencies (from the scheduled time) are >= 300 ms."""
    srv = SlowServer(0.3)
    clock = OffsetClock(time.monotonic())
    try:
        with History(tmp_path / "h.jsonl", clock=clock) as hist:
            asyncio.run(run_http(hist, clock, f"http://127.0.0.1:{srv.port}/", 20, 1.0, 0.1, {}, 5, "c", "svc"))
    finally:
        srv.close()
    reqs = sorted(read_history(tmp_path / "h.jsonl").requests, key=lambda r: r.t_start)
    assert len(reqs) == 20
    assert [r.t_start for r in reqs] == pytest.approx([0.1 + i / 20 for i in range(20)])
    assert all(r.ok and r.instance == "slow-1" and r.version == "v9" for r in reqs)
    assert all(0.29 <= r.latency_s <= 1.5 for r in reqs), [r.latency_s for r in reqs]
    assert {r.id for r in reqs} == set(range(20))


def test_workload_process_records_as_it_goes_and_a_kill_keeps_them(tmp_path):
    srv = SlowServer(0.0)
    hist = tmp_path / "history.jsonl"
    argv = workload_argv(sys.executable, "http", str(hist), time.monotonic(), 50, 30, start_s=0.0,
                         url=f"http://127.0.0.1:{srv.port}/", client="c1", timeout=2)
    p = subprocess.Popen(argv, cwd=REPO)
    try:
        time.sleep(2.5)
        p.kill()
        p.wait(5)
    finally:
        srv.close()
    reqs = read_history(hist).requests
    assert 40 <= len(reqs) <= 140, len(reqs)       # ~50/s for the ~2 s after start-up
    assert all(r.client == "c1" and r.ok for r in reqs)


def test_connection_refused_is_an_error_record(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    clock = OffsetClock(time.monotonic())
    with History(tmp_path / "h.jsonl", clock=clock) as h:
        asyncio.run(run_http(h, clock, f"http://127.0.0.1:{port}/", 10, 0.3, 0.0, {}, 2, "c", ""))
    reqs = read_history(tmp_path / "h.jsonl").requests
    assert len(reqs) == 3 and all(r.status is None and "Connect" in (r.error or "") and not r.ok for r in reqs)
