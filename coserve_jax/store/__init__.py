"""Tiers and model pools: Orbax disk, host cache (numpy or JAX pinned_host memory:
``host_tier.py``), device pools; byte accounting; loaders."""
