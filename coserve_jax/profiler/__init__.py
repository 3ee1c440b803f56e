"""Offline profiler: microbenchmarks -> Profile (profile.json) -> CostModel; allocation search."""
