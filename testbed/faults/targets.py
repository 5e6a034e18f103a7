"""Nemesis targets: :class:`FakeTarget` (in memory, for unit tests and dry runs) and
:class:`TestbedTarget` (a running :class:`testbed.net.network.Testbed` plus named processes).

Both follow :class:`testbed.faults.base.NemesisTarget`; they agree on semantics: ``block`` and
``unblock`` are idempotent, ``unblock(src, dst, oneway=True)`` lifts only src -> dst,
``set_link`` keeps the parameters it is not given and raises ShapeError for a bad parameter
or direction (:func:`testbed.shape.link_directions`).
"""
from __future__ import annotations

import signal as _signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from testbed.shape import LinkShape, link_directions, parse_params

if TYPE_CHECKING:
    from testbed.net.running import RunningTestbed

__all__ = ["FakeTarget", "TestbedTarget", "TargetError"]


class TargetError(ValueError):
    """The target has no such host, link or process, or the operation is not possible."""


class FakeTarget:
    """The network as plain data. ``links``: (a, b) pairs; ``hosts``: names that can be
    blocked (default: every link end); ``processes``: names that can be signalled.
    ``calls`` lists every call in order; ``fail`` maps a method name to an exception to
    raise on its next call (one shot), to test partial failures."""

    def __init__(self, links: Iterable[tuple[str, str]] = (), hosts: Iterable[str] | None = None,
                 processes: Iterable[str] = ()):
        self.shape: dict[tuple[str, str], LinkShape] = {}
        for a, b in links:
            self.shape[(a, b)] = self.shape[(b, a)] = LinkShape()
        self.hosts = set(hosts) if hosts is not None else {n for ab in self.shape for n in ab}
        self.down: set[frozenset[str]] = set()
        self.blocked: set[tuple[str, str]] = set()
        self.process_state = {p: "running" for p in processes}
        self.restarts: dict[str, int] = {p: 0 for p in processes}
        self.calls: list[tuple[str, tuple]] = []
        self.fail: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))
            exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc

    def _link(self, a: str, b: str) -> None:
        if (a, b) not in self.shape:
            raise TargetError(f"no link between {a} and {b}")

    def _host(self, h: str) -> None:
        if h not in self.hosts:
            raise TargetError(f"no host {h!r}; hosts: {', '.join(sorted(self.hosts))}")

    def _proc(self, p: str) -> None:
        if p not in self.process_state:
            raise TargetError(f"no process {p!r}; processes: {', '.join(sorted(self.process_state))}")

    # --- NemesisTarget ----------------------------------------------------------------

    def shapes(self, a: str, b: str) -> tuple[LinkShape, LinkShape]:
        self._link(a, b)
        return self.shape[(a, b)], self.shape[(b, a)]

    def set_link(self, a: str, b: str, direction: str | None = None, **params: Any) -> tuple[LinkShape, LinkShape]:
        self._call("set_link", a, b, direction, params)
        self._link(a, b)
        ab, ba = link_directions(direction, a, b)
        new_ab = parse_params(params, self.shape[(a, b)]) if ab else self.shape[(a, b)]
        new_ba = parse_params(params, self.shape[(b, a)]) if ba else self.shape[(b, a)]
        self.shape[(a, b)], self.shape[(b, a)] = new_ab, new_ba
        return new_ab, new_ba

    def link_down(self, a: str, b: str) -> None:
        self._call("link_down", a, b)
        self._link(a, b)
        self.down.add(frozenset((a, b)))

    def link_up(self, a: str, b: str) -> None:
        self._call("link_up", a, b)
        self._link(a, b)
        self.down.discard(frozenset((a, b)))

    def block(self, src: str, dst: str, oneway: bool = False) -> None:
        self._call("block", src, dst, oneway)
        self._host(src)
        self._host(dst)
        self.blocked.add((src, dst))
        if not oneway:
            self.blocked.add((dst, src))

    def unblock(self, src: str, dst: str, oneway: bool = False) -> None:
        self._call("unblock", src, dst, oneway)
        self.blocked.discard((src, dst))
        if not oneway:
            self.blocked.discard((dst, src))

    def signal(self, process: str, sig: _signal.Signals) -> None:
        self._call("signal", process, sig)
        self._proc(process)
        if sig == _signal.SIGSTOP:
            self.process_state[process] = "stopped"
        elif sig == _signal.SIGCONT:
            if self.process_state[process] == "stopped":
                self.process_state[process] = "running"
        elif sig in (_signal.SIGKILL, _signal.SIGTERM, _signal.SIGINT):
            self.process_state[process] = "dead"

    def restart(self, process: str) -> None:
        self._call("restart", process)
        self._proc(process)
        self.process_state[process] = "running"
        self.restarts[process] += 1

    # --- observations --------------------------------------------------------------------

    def can_send(self, src: str, dst: str) -> bool:
        return (src, dst) not in self.blocked

    @property
    def pristine(self) -> bool:
        """True when nothing is impaired: no drops, no link down, identity shapes, every
        process running."""
        return (not self.blocked and not self.down and all(s == LinkShape() for s in self.shape.values())
                and all(s == "running" for s in self.process_state.values()))


class TestbedTarget:
    """A running Testbed as a nemesis target. ``processes``: name -> a Popen-like object
    (``send_signal``); ``restarters``: name -> callable that stops what is left of the
    process and starts it again, returning the new Popen-like object; ``citadel``:
    ``(action, body) -> dict``, Citadel's POST /v1/<action> for the identity faults
    (testbed.mesh.citadel.faults; ``Mesh.fault_target()`` wires all three)."""

    __test__ = False   # not a pytest class

    def __init__(self, testbed: RunningTestbed, processes: Mapping[str, Any] | None = None,
                 restarters: Mapping[str, Callable[[], Any]] | None = None,
                 citadel: Callable[[str, dict], dict] | None = None):
        self.tb = testbed
        self.processes = dict(processes or {})
        self.restarters = dict(restarters or {})
        self._citadel = citadel

    def citadel(self, action: str, body: dict) -> dict:
        if self._citadel is None:
            raise TargetError("this target has no Citadel: pass TestbedTarget(..., citadel=fn) "
                              "(Mesh.fault_target() does, with mesh.security on)")
        return self._citadel(action, body)

    def shapes(self, a: str, b: str) -> tuple[LinkShape, LinkShape]:
        return self.tb.control.shapes(a, b)

    def set_link(self, a: str, b: str, direction: str | None = None, **params: Any) -> Any:
        return self.tb.set_link(a, b, direction, **params)

    def link_down(self, a: str, b: str) -> None:
        self.tb.link_down(a, b)

    def link_up(self, a: str, b: str) -> None:
        self.tb.link_up(a, b)

    def block(self, src: str, dst: str, oneway: bool = False) -> None:
        self.tb.drop(src, dst, oneway)

    def unblock(self, src: str, dst: str, oneway: bool = False) -> None:
        # Control.restore(a, b) lifts both directions: put the reverse one back if it was set
        reverse = any((r.src, r.dst) == (dst, src) for r in self.tb.control.drops())
        self.tb.restore(src, dst)
        if oneway and reverse:
            self.tb.drop(dst, src, oneway=True)

    def _proc(self, name: str, table: Mapping[str, Any]) -> Any:
        if name not in table:
            raise TargetError(f"no process {name!r}; processes: {', '.join(sorted(table)) or 'none registered'}")
        return table[name]

    def signal(self, process: str, sig: _signal.Signals) -> None:
        self._proc(process, self.processes).send_signal(sig)

    def restart(self, process: str) -> None:
        self.processes[process] = self._proc(process, self.restarters)()
