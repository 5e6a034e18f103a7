"""Where minimesh's own files are: the checkout (or installed tree) and its topologies."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
EXPERIMENTS = REPO / "experiments"


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for minimesh's own child processes (``python -m testbed...``): ``base``
    (default: ours) with the repository first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env
