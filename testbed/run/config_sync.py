"""Waiting for a config to reach the sidecars of a deployed mesh: the one way experiments do it.

    mesh.apply_text(rules, "rules.yaml")
    wait_for_config(mesh, "rules.yaml")        # every running sidecar has ACKed it, or ConfigNotReached

The version is Pilot's config generation (``/status``: ``generation``) when the wait starts,
so call it after the change; a sidecar has it once Pilot reports the sidecar's node as
``synced`` (it has ACKed Pilot's current resources) at that generation or a later one.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from testbed.mesh.deploy.mesh import Mesh

__all__ = ["ConfigNotReached", "wait_for_config"]


class ConfigNotReached(RuntimeError):
    """Config ``version`` (Pilot's generation; None: Pilot never answered) did not reach
    ``missing`` (sidecar names) within ``timeout_s``."""

    def __init__(self, what: str, version: int | None, missing: list[str], timeout_s: float, last_error: str = ""):
        self.what, self.version, self.missing, self.timeout_s = what, version, missing, timeout_s
        v = "Pilot's config (Pilot did not answer)" if version is None else f"Pilot's config version {version}"
        super().__init__(f"{what}: {v} not ACKed by sidecar{'s' if len(missing) != 1 else ''} "
                         f"{', '.join(missing)} within {timeout_s:g} s"
                         + (f"; last error: {last_error}" if last_error else ""))


def wait_for_config(mesh: Mesh, what: str = "the config", timeout_s: float = 30.0,
                    sidecars: Iterable[str] | None = None, poll_s: float = 0.1) -> int:
    """Until every sidecar in ``sidecars`` (names as :meth:`Mesh.sidecar_nodes`; default: every
    running one) has ACKed Pilot's config as of now; returns that version (Pilot's
    generation). Raises :class:`ConfigNotReached` after ``timeout_s``, naming ``what``, the
    version and the sidecars that do not have it."""
    nodes = mesh.sidecar_nodes()
    if sidecars is not None:
        wanted = list(sidecars)
        unknown = [s for s in wanted if s not in nodes]
        if unknown:
            raise ValueError(f"no running sidecar {', '.join(unknown)}; sidecars: {', '.join(sorted(nodes))}")
        nodes = {s: nodes[s] for s in wanted}
    deadline = time.monotonic() + timeout_s
    version: int | None = None
    missing, last_error = sorted(nodes), ""
    while True:
        try:
            status = mesh.status()
            if version is None:
                version = int(status["generation"])
            missing = _missing(status, version, nodes)
            last_error = ""
        except Exception as e:  # Pilot restarting or busy: asked again until the deadline
            last_error = f"{type(e).__name__}: {e}"
        if version is not None and not missing and not last_error:
            return version
        if time.monotonic() >= deadline:
            raise ConfigNotReached(what, version, missing, timeout_s, last_error)
        time.sleep(poll_s)


def _missing(status: Mapping[str, Any], version: int, nodes: Mapping[str, str]) -> list[str]:
    if int(status["generation"]) < version:
        return sorted(nodes)
    known = status.get("nodes") or {}
    return sorted(name for name, nid in nodes.items() if not (known.get(nid) or {}).get("synced"))
