"""The live view of a running mesh (``minimesh up --ui``) and the self-contained
``report.html`` of every experiment (docs/ui.md).

- :mod:`testbed.ui.page`: what the live page and ``report.html`` share, one layer below
  :mod:`testbed.run` (the experiment runner writes reports): ``model`` (pure functions from
  raw signals to the page's JSON state), ``report``, and ``static/`` (hand-written SVG, no
  JavaScript library; package data);
- :mod:`testbed.ui.netns`: HTTP to an address inside a testbed host's network namespace,
  from a thread of this process (``setns``), without forking a curl per request;
- :mod:`testbed.ui.collect`: the :class:`Collector` that samples a running testbed and mesh;
- :mod:`testbed.ui.server`: the aiohttp server (page, SSE stream, token-checked actions);

The package imports nothing from :mod:`testbed.cli`: actions reach the shell's command
dispatch through a callable that ``minimesh up`` hands in.
"""
from __future__ import annotations

__all__: list[str] = []
