"""coserve_jax: serving Collaboration-of-Experts models whose experts do not fit in fast memory."""

__version__ = "0.1.0"
