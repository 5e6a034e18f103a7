"""A stand-in for the part of a Mininet node that ``Link`` and ``Intf`` use, so link classes
can be built in unit tests without a network namespace."""
from __future__ import annotations


class FakeNode:
    """The part of a Mininet node that Link and Intf use."""

    def __init__(self, name):
        self.name, self.intfs, self.ports, self.nameToIntf, self.port = name, {}, {}, {}, 0

    def newPort(self):  # Mininet's name
        self.port += 1
        return self.port - 1

    def addIntf(self, intf, port=None, moveIntfFn=None):  # Mininet's name
        self.intfs[port] = intf
        self.ports[intf] = port
        self.nameToIntf[intf.name] = intf

    def delIntf(self, intf):  # Mininet's name
        port = self.ports.pop(intf)
        del self.intfs[port]
        del self.nameToIntf[intf.name]
