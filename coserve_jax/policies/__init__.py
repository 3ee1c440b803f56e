"""Scheduling, eviction, initialisation and prefetch policies.

Pure Python: a policy reads an immutable-by-contract view of the engine and returns a decision.
No JAX, no I/O, no clock — so the same objects drive the real engine and the simulator.
"""
