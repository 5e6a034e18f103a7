"""Topologies as data: a topology YAML file (or a stock topology such as ``linear,3``) read,
validated completely and returned as frozen specs. Nothing is created here.

- :mod:`testbed.topology.spec`: the specs (:class:`Topology`, hosts, switches, links) and
  :class:`TopologyError` (``file:line: message``);
- :mod:`testbed.topology.reader`: YAML composed with line numbers, and the :class:`Context`
  a section parser reads fields through;
- :mod:`testbed.topology.load`: :func:`load_topology` / :func:`parse_topology` /
  :func:`resolve_topology`, and :func:`register_section` for the sections other layers add
  (the mesh registers ``mesh:``);
- :mod:`testbed.topology.stock`: Mininet's ``mn --topo`` topologies (``single``, ``linear``,
  ``tree``, ...) as specs.

May import the leaves (:mod:`testbed.shape`) and PyYAML only.
"""
from testbed.topology.load import load_topology, parse_topology, register_section, resolve_topology
from testbed.topology.reader import Context
from testbed.topology.spec import HostSpec, LinkSpec, SwitchSpec, Topology, TopologyError
from testbed.topology.stock import stock_topology

__all__ = ["Topology", "HostSpec", "SwitchSpec", "LinkSpec", "TopologyError", "Context", "load_topology",
           "parse_topology", "resolve_topology", "register_section", "stock_topology"]
