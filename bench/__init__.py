"""Benchmarks against the peers a user would otherwise pick; results/*.json name device and peer."""
