"""The minimesh service mesh: service registry, control plane and its deployment.

Here, at the bottom of the mesh, the values everything else in it shares:

- :mod:`testbed.mesh.model`: pure data -- services and versions, registry endpoints, the
  Istio traffic rules, Galley's messages, and the ``MeshState`` Pilot builds xDS from;
- :mod:`testbed.mesh.spec`: the topology's ``mesh:`` section (services, instances, registry,
  security) as values, and the ports and app command lines that follow from it. Importing
  it registers the section with the topology reader.

The packages, lowest layer first (a module may import its own layer and those below):

- :mod:`testbed.mesh.rules` and :mod:`testbed.mesh.etcd`: Istio YAML -> rule values and
  Galley's analysis; the registry on etcd (client, registry, cluster launcher);
- :mod:`testbed.mesh.citadel`: the certificate authority, its HTTP server and identity faults;
- :mod:`testbed.mesh.pilot`: the xDS server and the resources it builds per sidecar;
- :mod:`testbed.mesh.deploy`: the mesh brought up on a running testbed (``Mesh``).

``model`` and ``spec`` may import testbed.topology, testbed.faults, testbed.net, the leaf
modules (testbed.shape, testbed.journal, testbed.history, testbed.paths, testbed.aio) and
proxy; never a mesh subpackage, testbed.run or testbed.cli.

Exported here: the names of ``model`` (pure, standard library only), so that importing any
mesh module stays cheap. ``spec`` is not re-exported (it pulls in YAML and the topology
reader, and registers a section): import it by module path. Modules inside the mesh import
each other by module path too, never through a package ``__init__``.
"""
from testbed.mesh.model import (ERROR, INFO, WARNING, Destination, DestinationRule, Endpoint, HTTPFault, HTTPMatch,
                                HTTPRoute, MeshState, Message, OutlierDetection, Retries, RouteDestination,
                                ServiceSpec, StringMatch, Subset, TrafficPolicy, VersionSpec, VirtualService,
                                service_vips)

__all__ = ["ERROR", "WARNING", "INFO", "VersionSpec", "ServiceSpec", "Endpoint", "Message", "StringMatch",
           "HTTPMatch", "Destination", "RouteDestination", "HTTPFault", "Retries", "HTTPRoute", "VirtualService",
           "OutlierDetection", "TrafficPolicy", "Subset", "DestinationRule", "MeshState", "service_vips"]
