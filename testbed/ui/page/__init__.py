"""What the live page and ``report.html`` share, below :mod:`testbed.run` so the experiment
runner can write reports: :mod:`.model` (raw signals -> the page's state), :mod:`.report`
(a finished run's ``report.html``) and ``static/`` (the page, its script and style sheet:
hand-written SVG, no JavaScript library; package data)."""
from __future__ import annotations

__all__: list[str] = []
