"""Pilot, the xDS control plane: what each sidecar is sent, and the server that sends it.

- :mod:`testbed.mesh.pilot.resources`: Envoy v3 resources (LDS, RDS, CDS, EDS) built per
  sidecar from a ``MeshState``, and the sidecar bootstrap (pure);
- :mod:`testbed.mesh.pilot.security`: what Citadel adds to them -- mTLS transport sockets and
  RBAC filters (pure);
- :mod:`testbed.mesh.pilot.rbac`: AuthorizationPolicy -> Envoy's RBAC HTTP filter (pure);
- :mod:`testbed.mesh.pilot.server`: ``Pilot``, REST-JSON xDS with long-poll push, ACK/NACK
  tracking per ``SidecarWatch``, Galley-checked ``apply``;
- :mod:`testbed.mesh.pilot.process`: Pilot as a process (``python -m
  testbed.mesh.pilot.process CONFIG.json``, its config) and ``AdminClient`` for its admin
  socket;
- :mod:`testbed.mesh.pilot.daemon`: what runs in that process: ``MeshPilot`` watching the
  registry, and ``AdminApi``, the admin socket's server.

May import testbed.mesh (model, spec), rules, etcd, citadel, proxy and aiohttp; never
deploy, testbed.run or testbed.cli.

Exported here: ``rbac`` only (pure, no third-party imports). ``resources`` and ``security``
load cryptography (through citadel.envoy), ``server`` and ``daemon`` aiohttp, and ``process``
is an entry point: import them by module path, e.g. ``from testbed.mesh.pilot.server import Pilot``.
"""
from typing import TYPE_CHECKING

from proxy.lazy import lazy_exports

if TYPE_CHECKING:   # for mypy; at run time each name loads on first use
    from testbed.mesh.pilot.rbac import RBAC_TYPE as RBAC_TYPE
    from testbed.mesh.pilot.rbac import rbac_filters as rbac_filters

__all__, __getattr__, __dir__ = lazy_exports(__name__, {"testbed.mesh.pilot.rbac": ("rbac_filters", "RBAC_TYPE")})
