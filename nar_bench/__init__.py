"""nar-bench: benchmarking and ablations for autoregressive visual generation (NAR, AR, PAR, VAR).

Importing the package imports no torch (``nar-bench --help`` stays instant): the torchvision
shim runs the first time anything imports torchvision (Lightning, torchmetrics, torch-fidelity).
"""

from nar_bench._torchvision_compat import run_shim_before_torchvision

run_shim_before_torchvision()

__version__ = "0.1.0"
