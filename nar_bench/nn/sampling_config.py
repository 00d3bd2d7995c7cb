"""The sampling settings (``eval.sampling``) as a torch-free dataclass: the config schema holds it,
and the config is read and checked before torch is imported. What the values do is in
``nar_bench.nn.sampling``."""

from __future__ import annotations

from dataclasses import dataclass

from nar_bench.errors import NarBenchError

CFG_SCHEDULES = ("steps", "official")


@dataclass
class SamplingConfig:
    cfg_scale: float = 2.0  # > 1 guides (official loops); <= 1 = no guidance, no batch doubling
    # Guidance for the first cfg_interval decoding steps (steps 0 .. N-1), then none; -1 = every step.
    # With cfg_schedule=official the value means what the paradigm's official script means by it.
    cfg_interval: int = -1
    cfg_schedule: str = "steps"  # steps | official: how cfg_interval is counted (module docstring)
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self) -> None:
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise NarBenchError(f"eval.sampling.cfg_schedule='{self.cfg_schedule}' is not valid; choose one of: "
                                f"{', '.join(CFG_SCHEDULES)}")
        if self.cfg_interval < -1:
            raise NarBenchError(f"eval.sampling.cfg_interval={self.cfg_interval}: use -1 (guide every step) or N >= 0")

    @property
    def uses_cfg(self) -> bool:
        """Whether the batch is doubled with null-class rows: only for a scale above 1 (official loops)."""
        return self.cfg_scale > 1.0
