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


SETUP = "sudo ./minimesh demo"       # README.md's first command; `sudo ./minimesh test` sets up a superset


def setup_hint() -> str:
    """What to run, in README.md's words, to get the interpreter this script needs."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO) if sys.argv and sys.argv[0] else "experiments/X.py"
    return (f"Set this checkout up once, as README.md says: `cd {REPO} && {SETUP}` (or `sudo ./minimesh test`); "
            f"then `sudo python3 {script}` works. (MINIMESH_PYTHON=/path/to/python picks another interpreter.)")


def ensure() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    lacking = missing()
    if not lacking:
        return
    if os.environ.get("MINIMESH_BOOTSTRAPPED"):
        raise SystemExit(f"{sys.executable} lacks {', '.join(lacking)}: the virtualenv is incomplete. "
                         + setup_hint())
    for python in candidates():
        # a venv's python is a symlink to the system one: compare the paths, not their targets
        if os.access(python, os.X_OK) and os.path.abspath(python) != os.path.abspath(sys.executable):
            os.environ["MINIMESH_BOOTSTRAPPED"] = "1"
            os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    if any(os.path.abspath(c) == os.path.abspath(sys.executable) for c in candidates()):
        raise SystemExit(f"{sys.executable} (this checkout's virtualenv) lacks {', '.join(lacking)}: the setup is "
                         "incomplete or was changed. " + setup_hint())
    raise SystemExit(f"{sys.executable} lacks {', '.join(lacking)}, and no project interpreter was found "
                     f"(tried {', '.join(candidates())}). " + setup_hint())


ensure()
import testbed.ui.experiment  # noqa: E402,F401  (after ensure(): registers the runner's --ui live view)
