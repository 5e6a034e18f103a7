"""``experiments/X.py --ui``: the live view of an experiment run, read-only (the experiment
drives its own faults). Importing this module registers it with the runner
(:func:`testbed.run.experiment.register_live_view`); ``experiments/_bootstrap.py`` imports
it, so every lab script has ``--ui``. The view follows the run's mesh once ``start_mesh``
has started it, and every Nemesis of the run for crashed, paused and partitioned marks.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any, Callable

from testbed.run.experiment import Context, register_live_view
from testbed.ui.collect import Collector
from testbed.ui.server import UIServer, parse_listen

__all__ = ["live_view"]


class _RunFaults:
    """The outstanding faults of every Nemesis of the run, as one (what Collector reads)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def nemesis(self) -> Any:
        merged = {(i, fid): op for i, n in enumerate(list(self.ctx.nemeses)) for fid, op in list(n.outstanding.items())}
        return SimpleNamespace(outstanding=merged)


def live_view(ctx: Context, listen: str) -> Callable[[], None]:
    address, port = parse_listen(listen)
    collector = Collector(ctx.tb, None, _RunFaults(ctx), ctx.history, ctx.clock)
    ctx.mesh_hooks.append(collector.attach_mesh)
    server = UIServer(collector, None, address, port).start()
    print(f"*** ui: live view of {ctx.name} at {server.url} (read-only: the experiment drives its faults)",
          file=sys.stderr, flush=True)
    return server.stop


register_live_view(live_view)
