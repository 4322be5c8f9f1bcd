"""Engine-neutral governance: what happens to a statement, decided without I/O."""
