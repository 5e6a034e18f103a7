"""The emulator's event loop and control protocol, with socketpairs standing in for TAPs
(SOCK_SEQPACKET keeps frame boundaries like a TAP fd). No root needed."""
import json
import socket
import threading
import time

import pytest

from testbed.links.emulator import Emulator
from testbed.links.frames import VNET_HDR_LEN
from testbed.links.tap import Tap
from testbed.shape import LinkShape


class Harness:
    def __init__(self, shapes):
        self.outer, taps = [], []
        for name in ("a", "b"):
            outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            inner.setblocking(False)
            outer.settimeout(2)
            self.outer.append(outer)
            taps.append(Tap(name, inner.detach(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))
        self.ctl, theirs = socket.socketpair()
        self.ctl.settimeout(2)
        self.emu = Emulator(taps, theirs, list(shapes), seed=1)
        self.thread = threading.Thread(target=self.emu.run, daemon=True)
        self.thread.start()
        self._buf = b""

    def request(self, **req):
        self.ctl.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self._buf:
            self._buf += self.ctl.recv(65536)
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.ctl.close()  # EOF: the emulator returns
        self.thread.join(2)
        assert not self.thread.is_alive()


def frame(i):
    return bytes(VNET_HDR_LEN) + i.to_bytes(4, "big") + bytes(60)


@pytest.fixture
def harness():
    made = []

    def make(*shapes):
        h = Harness(shapes)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_passthrough_both_directions(harness):
    h = harness(LinkShape(), LinkShape())
    for i in range(100):
        h.outer[0].send(frame(i))
    assert [h.outer[1].recv(2048) for _ in range(100)] == [frame(i) for i in range(100)]
    h.outer[1].send(frame(7))
    assert h.outer[0].recv(2048) == frame(7)
    stats = h.request(op="stats")["stats"]
    assert stats[0]["received"] == stats[0]["sent"] == 100
    assert stats[1]["sent"] == 1


def test_delay_and_live_change(harness):
    h = harness(LinkShape(delay_ms=30), LinkShape())
    t = time.monotonic()
    h.outer[0].send(frame(1))
    assert h.outer[1].recv(2048) == frame(1)
    took = time.monotonic() - t
    assert 0.029 <= took <= 0.045
    assert h.request(op="set", shapes=[LinkShape(delay_ms=5).to_dict(), None]) == {"ok": True}
    t = time.monotonic()
    h.outer[0].send(frame(2))
    assert h.outer[1].recv(2048) == frame(2)
    assert 0.004 <= time.monotonic() - t <= 0.020
    assert h.emu.models[1].shape == LinkShape()  # None kept the other direction


def test_loss_counts_and_errors_are_replies(harness):
    h = harness(LinkShape(loss_pct=100), LinkShape())
    for i in range(10):
        h.outer[0].send(frame(i))
    time.sleep(0.05)
    assert h.request(op="stats")["stats"][0]["lost"] == 10
    bad = h.request(op="set", shapes=[{"delay_ms": -1}, None])
    assert bad["ok"] is False and "delay_ms" in bad["error"]
    assert h.request(op="nope")["ok"] is False


def test_stop_request_ends_the_loop():
    h = Harness([LinkShape(), LinkShape()])
    assert h.request(op="stop")["ok"]
    h.thread.join(2)
    assert not h.thread.is_alive()
