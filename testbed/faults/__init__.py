"""Fault injection as values (Jepsen's nemesis, Toxiproxy's toxics): this package is the
public API — ``from testbed.faults import LinkChange, Partition, at, run_schedule, ...``.

- :mod:`testbed.faults.base`: the target protocol :class:`NemesisTarget`, the :class:`Op` a
  fault returns, the :class:`Fault` base class and the registry of kinds by name;
- :mod:`testbed.faults.kinds`: the network and process kinds (``link``, ``link-down``,
  ``partition``, ``cut``, ``crash``, ``restart``, ``pause``);
- :mod:`testbed.faults.grudge`: who drops whose traffic in a partition (random halves,
  majorities ring, the mesh-aware cuts, ...);
- :mod:`testbed.faults.schedule`: schedules (``at``, ``every``, ``flip_flop``), the
  :class:`Nemesis` that applies, reverts, records and heals, and :func:`run_schedule`;
- :mod:`testbed.faults.source`: schedules from YAML, with ``file:line`` errors;
- :mod:`testbed.faults.targets`: :class:`TestbedTarget` (a running network plus named
  processes) and :class:`FakeTarget` (in memory, for tests).

Other layers register more kinds (the identity faults of :mod:`testbed.mesh.citadel.faults`,
known once that module is imported). Reference: docs/faults.md.

May import testbed.net (the running-network protocol), testbed.topology (the YAML reader),
and the leaves (testbed.shape, testbed.history); never testbed.mesh, testbed.run or
testbed.cli. Modules here import each other by module path, not through this package.
"""
from testbed.faults.base import FAULTS, Fault, FaultError, NemesisTarget, Op, fault_from_dict, register
from testbed.faults.grudge import (GRUDGE_BUILDERS, MESH_CUTS, ROLES, Grudge, GrudgeError, bisect, bridge,
                                   complete, control_plane_cut, cut_between, data_plane_split, isolate_one,
                                   majorities_ring, random_halves, registry_split)
from testbed.faults.kinds import (Blocks, Crash, Cut, LinkChange, LinkDown, Partition, Pause, Restart,
                                  parse_signal, shape_params)
from testbed.faults.schedule import (FaultGen, HealError, Nemesis, Schedule, Step, at, every, flip_flop,
                                     run_schedule, run_schedule_async)
from testbed.faults.source import LoadedSchedule, ScheduleError, load_schedule, parse_schedule
from testbed.faults.targets import FakeTarget, TargetError, TestbedTarget

__all__ = [
    # faults
    "Fault", "FaultError", "Op", "NemesisTarget", "FAULTS", "register", "fault_from_dict",
    "LinkChange", "LinkDown", "Blocks", "Partition", "Cut", "Crash", "Restart", "Pause", "shape_params",
    "parse_signal",
    # grudges
    "Grudge", "GrudgeError", "complete", "isolate_one", "random_halves", "bisect", "majorities_ring", "bridge",
    "cut_between", "control_plane_cut", "registry_split", "data_plane_split", "GRUDGE_BUILDERS", "MESH_CUTS",
    "ROLES",
    # schedules and the nemesis
    "Step", "Schedule", "FaultGen", "at", "every", "flip_flop", "Nemesis", "HealError", "run_schedule",
    "run_schedule_async", "ScheduleError", "LoadedSchedule", "load_schedule", "parse_schedule",
    # targets
    "TestbedTarget", "FakeTarget", "TargetError",
]
