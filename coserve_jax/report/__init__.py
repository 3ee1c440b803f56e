"""Reports: run directories → paper-ready Markdown/CSV tables and matplotlib PNG plots.

Usage: ``python -m coserve_jax.report RUN_OR_MULTIRUN_DIR [...] --out DIR [--kind ...]``.
Modules: `paper_values` (the paper's figures as data), `runs` (loading), `aggregate` (metrics
per (hardware, task) × arm), `tables` (table builders), `table_render` (Markdown/CSV),
`plots` (PNG), `cli` (the command line); the planner's and the profile job's own tables and
plots: `plan_tables`, `profile_tables`.
"""
