"""The userspace link emulator: one process per link, shuttling frames between two TAPs.

Run as ``python -m testbed.links.emulator CONFIG_JSON`` by :mod:`testbed.links.userspace`
with the control socket passed as an inherited fd. CONFIG_JSON::

    {"ends": [{"name": "h1-eth0", "netns": "/proc/123/ns/net", "mac": "..." | null}, {"name": "s1-eth1", ...}],
     "shapes": [{...LinkShape...}, {...}], "seed": 1, "ctl_fd": 3, "ppid": 100}

Direction 0 carries frames read from end 0 (written to end 1): node1 -> node2.

Control protocol: one JSON object per line each way, a reply for every request:
``{"op": "set", "shapes": [dict|null, dict|null]}``, ``{"op": "up", "up": bool}``,
``{"op": "stats"}``, ``{"op": "stop"}`` -> ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
The first line the emulator writes is ``{"ok": true, "ready": true}`` once both TAPs
exist (or an error). It exits when the control socket closes or its parent dies.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import sys
import time
from typing import Any

from testbed.links import frames
from testbed.links.model import DirectionModel
from testbed.links.tap import (PR_SET_PDEATHSIG, PR_SET_TIMERSLACK, Tap, open_tap, prctl,
                               set_admin_up, set_mac, set_offload)
from testbed.shape import LinkShape

BATCH = 64          # frames read from one TAP before looking at the other
READ_SIZE = 65536 + 64
EARLY_INIT_S = 50e-6
NICE = -5
EARLY_MAX_S = 300e-6


class Emulator:
    def __init__(self, taps: list[Tap], ctl: socket.socket, shapes: list[LinkShape], seed: int | None):
        self.taps = taps
        self.ctl = ctl
        rng = random.Random(seed)
        self.models = [DirectionModel(s, random.Random(rng.random()), corrupt=frames.corrupt,
                                      wire_len=frames.wire_len) for s in shapes]
        self.up = True
        self.write_errors = [0, 0]
        self._ctl_buf = b""
        self._offload = True
        self._apply_offload()

    # --- control -------------------------------------------------------------------

    def _apply_offload(self) -> None:
        # netem corrupts frames with final checksums: while corruption is configured the
        # kernel must hand us finished frames, so offloads go off on both TAPs
        want = not any(m.shape.corrupt_pct for m in self.models)
        if want != self._offload:
            for tap in self.taps:
                set_offload(tap.fd, want)
            self._offload = want

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "set":
            shapes = [LinkShape(**d) if d is not None else None for d in req["shapes"]]
            for model, shape in zip(self.models, shapes, strict=True):   # one shape per direction
                if shape is not None:
                    model.set_shape(shape)
            self._apply_offload()
            return {"ok": True}
        if op == "up":
            self.up = bool(req["up"])
            for tap in self.taps:
                set_admin_up(tap, self.up)
            if not self.up:
                for m in self.models:
                    m.flush()
            return {"ok": True}
        if op == "stats":
            return {"ok": True, "stats": [m.stats.to_dict() for m in self.models],
                    "queued": [len(m) for m in self.models], "write_errors": self.write_errors}
        if op == "stop":
            return {"ok": True, "stop": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _read_ctl(self) -> bool:
        data = self.ctl.recv(65536)
        if not data:
            return False
        self._ctl_buf += data
        while b"\n" in self._ctl_buf:
            line, self._ctl_buf = self._ctl_buf.split(b"\n", 1)
            try:
                reply = self.handle(json.loads(line))
            except Exception as e:  # report to the caller, keep emulating
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.ctl.sendall(json.dumps(reply).encode() + b"\n")
            if reply.get("stop"):
                return False
        return True

    # --- data path -----------------------------------------------------------------

    def _pump(self, i: int, now: float) -> None:
        src, dst = self.taps[i].fd, self.taps[1 - i].fd
        model = self.models[i]
        read, write = os.read, os.write
        n = errors = 0
        if not self.up or (model.passthrough and not len(model)):
            # fast path (or link down): no decision per frame, count once per batch
            up = self.up
            for n in range(1, BATCH + 1):
                try:
                    buf = read(src, READ_SIZE)
                except BlockingIOError:
                    n -= 1
                    break
                if up:
                    try:
                        write(dst, buf)
                    except OSError:
                        errors += 1
            st = model.stats
            if up:
                st.received += n
                st.sent += n
            else:
                st.down_drops += n
        else:
            enqueue = model.enqueue
            for _ in range(BATCH):
                try:
                    buf = read(src, READ_SIZE)
                except BlockingIOError:
                    break
                for f in enqueue(buf, now):
                    try:
                        write(dst, f)
                    except OSError:
                        errors += 1
        self.write_errors[i] += errors

    def _release(self, now: float) -> None:
        write = os.write
        for i, model in enumerate(self.models):
            if len(model):
                dst = self.taps[1 - i].fd
                errors = 0
                for f in model.pop_due(now):
                    try:
                        write(dst, f)
                    except OSError:
                        errors += 1
                self.write_errors[i] += errors

    def run(self) -> None:
        fds = [self.taps[0].fd, self.taps[1].fd, self.ctl.fileno()]
        t0, t1, _c = fds
        clock = time.monotonic
        models = self.models
        # Waking from a timed sleep takes a while (~80 us on a VM): wake that much early
        # and send what is due by then, so the send-time error is centred on zero.
        early = EARLY_INIT_S
        while True:
            deadline = None
            for m in models:
                d = m.next_deadline()
                if d is not None and (deadline is None or d < deadline):
                    deadline = d
            if deadline is None:
                timeout = None
            else:
                wake_at = deadline - early
                timeout = max(0.0, wake_at - clock())
            ready, _, _ = select.select(fds, (), (), timeout)
            now = clock()
            if deadline is not None:
                if not ready and timeout:
                    late = now - wake_at
                    early = min(EARLY_MAX_S, max(0.0, early + (late - early) * 0.05))
                if deadline <= now + early:
                    self._release(now + early)
            for fd in ready:
                if fd == t0:
                    self._pump(0, now)
                elif fd == t1:
                    self._pump(1, now)
                elif not self._read_ctl():
                    return


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["ppid"]:
        return 1  # the parent died before we could ask to follow it
    prctl(PR_SET_TIMERSLACK, 1000)  # ns: wake up on time for short delays
    try:  # the link is part of the "hardware": application load must not distort it
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass
    ctl = socket.socket(fileno=cfg["ctl_fd"])
    try:
        taps = [open_tap(e["name"], e.get("netns")) for e in cfg["ends"]]
        for tap, end in zip(taps, cfg["ends"], strict=True):
            if end.get("mac"):
                set_mac(tap, end["mac"])
    except Exception as e:
        ctl.sendall(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
        return 1
    shapes = [LinkShape(**d) for d in cfg["shapes"]]
    emu = Emulator(taps, ctl, shapes, cfg.get("seed"))
    ctl.sendall(b'{"ok": true, "ready": true}\n')
    try:
        emu.run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the runner went away: so do we (and the TAPs with us)
    except OSError as e:  # e.g. someone deleted one of the TAPs: the link is gone
        names = "<->".join(t.name for t in taps)
        print(f"link emulator {names}: {e}; exiting", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
