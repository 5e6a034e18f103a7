"""minimesh testbed: topologies, link emulation, network lifecycle and CLI."""
