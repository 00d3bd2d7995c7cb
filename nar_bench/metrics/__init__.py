"""Metrics: efficiency (latency / throughput / peak memory protocol)."""
