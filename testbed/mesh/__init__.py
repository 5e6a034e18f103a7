"""minimesh service mesh: registry, control plane (Galley, Pilot) and rules."""
