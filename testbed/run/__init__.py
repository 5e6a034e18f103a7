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

from typing import TYPE_CHECKING

from proxy.lazy import lazy_exports

if TYPE_CHECKING:   # the names for mypy ("X as X": re-exported); at run time each loads on first use
    from testbed.run.capture import Capture as Capture
    from testbed.run.config_sync import ConfigNotReached as ConfigNotReached
    from testbed.run.config_sync import wait_for_config as wait_for_config
    from testbed.run.experiment import Claim as Claim
    from testbed.run.experiment import Context as Context
    from testbed.run.experiment import Experiment as Experiment
    from testbed.run.experiment import start_mesh as start_mesh
    from testbed.run.results import LiveProgress as LiveProgress
    from testbed.run.results import overall_valid as overall_valid
    from testbed.run.results import plot_split as plot_split
    from testbed.run.results import plot_timeline as plot_timeline
    from testbed.run.results import pyplot as pyplot
    from testbed.run.results import read_results as read_results
    from testbed.run.results import write_results as write_results
    from testbed.run.sidecar_stats import StatsError as StatsError
    from testbed.run.sidecar_stats import cluster_stats as cluster_stats
    from testbed.run.sidecar_stats import fetch_stats as fetch_stats
    from testbed.run.sidecar_stats import parse_prometheus as parse_prometheus
    from testbed.run.sidecar_stats import parse_stats as parse_stats
    from testbed.run.sidecar_stats import total as total

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "testbed.run.experiment": ("Experiment", "Context", "Claim", "start_mesh"),
    "testbed.run.config_sync": ("wait_for_config", "ConfigNotReached"),
    "testbed.run.sidecar_stats": ("fetch_stats", "parse_stats", "parse_prometheus", "cluster_stats", "total",
                                  "StatsError"),
    "testbed.run.results": ("write_results", "read_results", "overall_valid", "plot_timeline", "plot_split",
                            "pyplot", "LiveProgress"),
    "testbed.run.capture": ("Capture",),
})
