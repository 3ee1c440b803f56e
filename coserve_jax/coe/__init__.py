"""The CoE graph: component types, experts, routing rules and usage probabilities."""
