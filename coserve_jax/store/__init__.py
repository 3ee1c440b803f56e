"""Tiers and model pools: Orbax disk, host cache, device pools; byte accounting; loaders."""
