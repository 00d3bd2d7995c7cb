"""nar-bench: benchmarking and ablations for autoregressive visual generation (NAR, AR, PAR, VAR)."""

from nar_bench._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
