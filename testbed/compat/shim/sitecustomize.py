"""Loaded by every Python started under ``minimesh mn`` / ``minimesh mininet`` (this
directory is first on PYTHONPATH): install minimesh's substitutions into Mininet, then run
the sitecustomize this one shadows (Debian's), as if this one were not here."""
import importlib
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))


def _chain() -> None:
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    try:
        del sys.modules["sitecustomize"]
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


def _install() -> None:
    if os.environ.get("MINIMESH_MININET") is None:
        return                       # not started by minimesh (PYTHONPATH inherited by chance)
    from testbed.compat.substitute import install
    install()


_install()
_chain()
