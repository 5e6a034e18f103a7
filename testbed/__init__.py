"""minimesh's testbed: topologies, emulated links, the running network, faults, the service
mesh, experiment runs and the ``minimesh`` command line (docs/architecture.md has the map
of its packages and the direction of their imports)."""
