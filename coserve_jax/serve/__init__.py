"""Scale-out serving: Ray Serve replicas of the engine behind a CoE-aware router (``app.py``,
``router.py``; ``python -m coserve_jax.serve``) and its cluster simulation (``scaling.py``).

Importing this package imports neither Ray nor JAX."""
