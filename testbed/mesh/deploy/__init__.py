"""The mesh deployed on a running testbed, and the small processes it runs on mesh hosts.

- :mod:`testbed.mesh.deploy.mesh`: ``Mesh`` -- brings a topology's ``mesh:`` section up
  (etcd, Citadel, Pilot, apps, sidecars, registration agents), applies rules, sends requests
  through sidecars, serves as a fault target, and publishes itself for ``minimesh
  apply``/``registry`` (``running_meshes``); ``MeshError``, ``ApplyError``;
- :mod:`testbed.mesh.deploy.net`: service names, VIP route and traffic capture on hosts;
- :mod:`testbed.mesh.deploy.security`: Citadel in a deployed mesh, and the SDS agent next
  to each real-Envoy sidecar (``python -m testbed.mesh.deploy.security``);
- :mod:`testbed.mesh.deploy.agent`: an instance's registration agent (``python -m``);
- :mod:`testbed.mesh.deploy.load_client`: N requests over one connection (``python -m``).

May import every layer of the mesh (testbed.mesh, rules, etcd, citadel, pilot), testbed.faults,
testbed.net, the leaf modules and proxy; never testbed.run or testbed.cli.

Nothing is re-exported here: ``Mesh`` loads the whole control plane (cryptography, YAML),
and this package also holds the ``python -m`` entry points started on every mesh host,
which must stay light. Import by module path: ``from testbed.mesh.deploy.mesh import Mesh``.
"""

__all__: list[str] = []
