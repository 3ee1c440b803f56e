"""The cost model (``model.py``: a Profile's figures as batch, load and memory costs) that the
engine, the policies and the simulator read, and the paper's machines as profiles
(``paper_profiles.py``). Produced by ``profiler/`` (measured here) or from the paper's figures."""
