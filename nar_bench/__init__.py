"""nar-bench: benchmarking and ablations for autoregressive visual generation (NAR, AR, PAR, VAR)."""

__version__ = "0.1.0"
