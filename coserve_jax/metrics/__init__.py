"""Counters, latencies, time breakdown and results.json."""
