"""Offline profiler: microbenchmarks of this machine -> a Profile (profile.json, read as a
``cost.CostModel``), the engine loop's own cost, which profile a run uses (``cache.py``: cached
by what it measured, checked live by ``trust.py``), and the allocation search (``search.py``,
``layout.py``) that jobs/plan.py runs."""
