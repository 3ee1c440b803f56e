"""The engine loop (one, shared) and its backends: real (JAX, wall clock) and sim (virtual time)."""
