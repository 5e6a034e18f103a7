"""Userspace link backend: each link is two TAP devices joined by an emulator process.

``UserspaceLink`` is a :class:`mininet.link.Link`: Mininet names, ports and configures its
two interfaces as usual (``h1-eth0``, ``s1-eth1``; MAC/IP via :class:`mininet.link.Intf`),
only the pair is not a veth: ``makeIntfPair`` starts ``python -m testbed.links.emulator``,
which creates a TAP in each node's network namespace and applies the per-direction
:class:`~testbed.shape.LinkShape` s (see :mod:`testbed.links.model`).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from mininet.link import Link

from testbed.journal import Journal, proc_start
from testbed.links.nodes import netns_path
from testbed.links.tcparams import prepare_link
from testbed.paths import child_env
from testbed.shape import LinkShape

READY_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 2.0


class EmulatorError(RuntimeError):
    pass


class EmulatorProcess:
    """Parent-side handle: spawn, request/reply over the control socket, stop."""

    def __init__(self, ends: list[dict[str, Any]], shapes: tuple[LinkShape, LinkShape],
                 seed: int | None = None, journal: Journal | None = None, what: str = ""):
        self._journal = journal
        self._eid = journal.record("process", pid=None, what=what) if journal else None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = {"ends": ends, "shapes": [s.to_dict() for s in shapes], "seed": seed,
               "ctl_fd": theirs.fileno(), "ppid": os.getpid()}
        env = child_env()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.links.emulator", json.dumps(cfg)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            if journal and self._eid is not None:
                journal.forget(self._eid)
            raise
        finally:
            theirs.close()
        if journal and self._eid is not None:
            journal.update(self._eid, pid=self.proc.pid, start=proc_start(self.proc.pid))
        self._sock = ours
        self._buf = b""
        try:
            reply = self._read_reply(READY_TIMEOUT_S)
        except EmulatorError:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise EmulatorError(f"link emulator for {what}: {reply.get('error')}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_reply(self, timeout: float) -> dict[str, Any]:
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                raise EmulatorError(f"link emulator pid {self.proc.pid} did not answer "
                                    f"within {timeout:g} s") from None
            if not data:
                raise EmulatorError(f"link emulator pid {self.proc.pid} exited "
                                    f"(status {self.proc.poll()})")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, **req: Any) -> dict[str, Any]:
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as e:
            raise EmulatorError(f"link emulator pid {self.proc.pid} is gone: {e}") from None
        reply = self._read_reply(REPLY_TIMEOUT_S)
        if not reply.get("ok"):
            raise EmulatorError(f"link emulator refused {req.get('op')}: {reply.get('error')}")
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self._sock.sendall(b'{"op": "stop"}\n')
            except OSError:
                pass
        self._sock.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._journal and self._eid is not None:
            self._journal.forget(self._eid)
            self._eid = None


class UserspaceLink(Link):
    """A Mininet link emulated in userspace. Takes TCLink's parameters (bw, delay, jitter,
    loss, max_queue_size, use_htb; link-level or params1/params2: :mod:`testbed.links.tcparams`),
    or these extra ones:

    shape1: LinkShape for node1 -> node2; shape2: node2 -> node1 (default: no impairment)
    journal: Journal that records the interfaces and the emulator process
    seed: RNG seed for the emulator (None: random)
    """

    def __init__(self, node1: Any, node2: Any, shape1: LinkShape | None = None,
                 shape2: LinkShape | None = None, journal: Journal | None = None,
                 seed: int | None = None, **params: Any):
        self._shapes = prepare_link(shape1, shape2, params)     # TCLink's parameters too
        self._journal = journal
        self._seed = seed
        self._emu: EmulatorProcess | None = None
        self._link_eids: list[int] = []
        self._up = True
        params["fast"] = True  # makeIntfPair needs the nodes
        try:
            super().__init__(node1, node2, **params)
        except BaseException:
            self._teardown()
            raise

    def makeIntfPair(self, intfname1: str, intfname2: str, addr1: str | None = None,
                     addr2: str | None = None, node1: Any = None, node2: Any = None,
                     deleteIntfs: bool = True) -> None:  # Mininet's name
        self.intf_names = (intfname1, intfname2)
        if node1 is None or node2 is None:
            raise ValueError("UserspaceLink needs both nodes (Mininet's fast=True path)")
        ends = [{"name": intfname1, "netns": netns_path(node1), "mac": addr1},
                {"name": intfname2, "netns": netns_path(node2), "mac": addr2}]
        if self._journal:
            # a TAP disappears with the emulator holding it; a host-side entry names the
            # namespace by its /proc path (not a named netns), for the record only
            self._link_eids = [self._journal.record("link", name=e["name"], netns=e["netns"],
                                                    tap=True) for e in ends]
        self._emu = EmulatorProcess(ends, self._shapes, self._seed, self._journal,
                                    what=f"link emulator {intfname1}<->{intfname2}")

    # --- ShapedLink ----------------------------------------------------------------

    def get_shapes(self) -> tuple[LinkShape, LinkShape]:
        return self._shapes

    def set_shapes(self, forward: LinkShape | None = None, backward: LinkShape | None = None) -> None:
        self._require_emulator().request(
            op="set", shapes=[s.to_dict() if s is not None else None for s in (forward, backward)])
        self._shapes = (forward or self._shapes[0], backward or self._shapes[1])

    def set_up(self, up: bool) -> None:
        self._require_emulator().request(op="up", up=bool(up))
        self._up = bool(up)

    def is_up(self) -> bool:
        return self._up

    def stats(self) -> dict[str, Any]:
        """Counters per direction (received, sent, lost, queue_drops, ...) and queue lengths."""
        return self._require_emulator().request(op="stats")

    @property
    def emulator_pid(self) -> int | None:
        return self._emu.pid if self._emu else None

    def _require_emulator(self) -> EmulatorProcess:
        if self._emu is None:
            raise EmulatorError(f"link {self} is stopped")
        return self._emu

    # --- teardown ------------------------------------------------------------------

    def _teardown(self) -> None:
        if self._emu is not None:
            self._emu.stop()  # the TAPs vanish with the process holding them
            self._emu = None
        if self._journal:
            for eid in self._link_eids:
                self._journal.forget(eid)
        self._link_eids = []

    def delete(self) -> None:
        self._teardown()
        for attr in ("intf1", "intf2"):
            intf = getattr(self, attr, None)
            if intf is not None and intf.node is not None:
                intf.node.delIntf(intf)
                intf.link = None
            setattr(self, attr, None)

    def stop(self) -> None:
        self.delete()

    def __str__(self) -> str:
        if getattr(self, "intf1", None) is None:
            return "UserspaceLink(stopped)"
        return super().__str__()
