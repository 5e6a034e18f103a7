"""Running experiments: the runner, workloads, run results, captures and the checkers.

- :mod:`testbed.run.experiment`: :class:`Experiment` (the command line and one run: network,
  capture, history, ``run(ctx)``, teardown, ``analyze``, results) and the :class:`Context`
  that ``run``/``analyze`` get; :func:`start_mesh`;
- :mod:`testbed.run.config_sync`: :func:`wait_for_config`, the one way to wait until a
  config has reached the sidecars (:class:`ConfigNotReached` on a timeout);
- :mod:`testbed.run.sidecar_stats`: a sidecar's admin ``/stats`` fetched through a host and
  parsed (:func:`fetch_stats`);
- :mod:`testbed.run.workload`: open-loop HTTP / etcd / registry workloads, run as
  ``python -m testbed.run.workload`` inside a host (not imported here: it starts fast);
- :mod:`testbed.run.results`: ``results.json``, the timeline and split plots, :func:`pyplot`,
  the live progress panel;
- :mod:`testbed.run.capture`: tcpdump per host interface, fault comments, name blocks;
- :mod:`testbed.run.outlier_events`: the sidecars' outlier ejection logs into the history;
- :mod:`testbed.run.checkers`: verdicts from histories (pure functions).

May import every layer below it (testbed.mesh, testbed.faults, testbed.net, testbed.topology,
testbed.links, testbed.apps and the leaves); never testbed.cli or the experiments' lablib.
Modules here import each other by module path, not through this package.

The names below are loaded on first use, so that ``python -m testbed.run.workload`` (started
in a host at a planned time) imports only what the workload needs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.run.capture import Capture
    from testbed.run.config_sync import ConfigNotReached, wait_for_config
    from testbed.run.experiment import Claim, Context, Experiment, start_mesh
    from testbed.run.results import (LiveProgress, overall_valid, plot_split, plot_timeline, pyplot, read_results,
                                     write_results)
    from testbed.run.sidecar_stats import (StatsError, cluster_stats, fetch_stats, parse_prometheus, parse_stats,
                                           total)

__all__ = ["Experiment", "Context", "Claim", "start_mesh", "wait_for_config", "ConfigNotReached",
           "fetch_stats", "parse_stats", "parse_prometheus", "cluster_stats", "total", "StatsError",
           "write_results", "read_results", "overall_valid", "plot_timeline", "plot_split", "pyplot",
           "LiveProgress", "Capture"]

_WHERE = {"Experiment": "experiment", "Context": "experiment", "Claim": "experiment", "start_mesh": "experiment",
          "wait_for_config": "config_sync", "ConfigNotReached": "config_sync",
          "fetch_stats": "sidecar_stats", "parse_stats": "sidecar_stats", "parse_prometheus": "sidecar_stats",
          "cluster_stats": "sidecar_stats", "total": "sidecar_stats", "StatsError": "sidecar_stats",
          "write_results": "results", "read_results": "results", "overall_valid": "results",
          "plot_timeline": "results", "plot_split": "results", "pyplot": "results", "LiveProgress": "results",
          "Capture": "capture"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"testbed.run.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
