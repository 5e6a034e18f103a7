"""Make ``sudo python3 experiments/X.py`` work: put the repository on sys.path and, when the
interpreter lacks what minimesh needs (Debian's /usr/bin/python3 has no pyroute2/aiohttp),
re-exec the script under the project's interpreter: $MINIMESH_PYTHON if set, else
<repo>/.venv/bin/python (``sudo ./minimesh test`` or ``sudo ./minimesh demo`` creates that
venv). Import it first: ``import _bootstrap  # noqa: F401  (re-exec ...)``. Once the
interpreter is right, it imports the live view's plug-in (testbed.ui.experiment), which gives
every lab script ``--ui`` (docs/ui.md)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("pyroute2", "aiohttp", "mininet", "yaml", "matplotlib")


def missing() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def candidates() -> list[str]:
    env = os.environ.get("MINIMESH_PYTHON")
    return [env] if env else [str(REPO / ".venv" / "bin" / "python")]


def ensure() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    lacking = missing()
    if not lacking:
        return
    if os.environ.get("MINIMESH_BOOTSTRAPPED"):
        raise SystemExit(f"{sys.executable} lacks {', '.join(lacking)} even after re-exec; "
                         f"set MINIMESH_PYTHON to an interpreter that has them")
    for python in candidates():
        # a venv's python is a symlink to the system one: compare the paths, not their targets
        if os.access(python, os.X_OK) and os.path.abspath(python) != os.path.abspath(sys.executable):
            os.environ["MINIMESH_BOOTSTRAPPED"] = "1"
            os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    raise SystemExit(f"{sys.executable} lacks {', '.join(lacking)} and no project interpreter was found "
                     f"(tried {', '.join(candidates())}); run `sudo ./minimesh test` (or `sudo ./minimesh demo`) "
                     f"once to set up {REPO / '.venv'}, or set MINIMESH_PYTHON")


ensure()
import testbed.ui.experiment  # noqa: E402,F401  (after ensure(): registers the runner's --ui live view)
