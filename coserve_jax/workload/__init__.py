"""Workloads: component-image requests arriving over time; trace save and replay."""
