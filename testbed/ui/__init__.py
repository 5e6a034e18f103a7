"""The live view of a running mesh (``minimesh up --ui``) and the self-contained
``report.html`` of every experiment (docs/ui.md).

- :mod:`testbed.ui.model`: pure functions from raw signals (sidecar stats, Pilot's sync,
  etcd statuses, link shapes, history records) to the page's JSON state;
- :mod:`testbed.ui.netns`: HTTP to an address inside a testbed host's network namespace,
  from a thread of this process (``setns``), without forking a curl per request;
- :mod:`testbed.ui.collect`: the :class:`Collector` that samples a running testbed and mesh;
- :mod:`testbed.ui.server`: the aiohttp server (page, SSE stream, token-checked actions);
- :mod:`testbed.ui.report`: ``report.html`` from a run's output directory;
- ``static/``: the page (hand-written SVG, no JavaScript library; shipped as package data).

The package imports nothing from :mod:`testbed.cli`: actions reach the shell's command
dispatch through a callable that ``minimesh up`` hands in.
"""
from __future__ import annotations

__all__: list[str] = []
