"""The Lightning Trainer every verb uses: precision, run folder, callbacks, and input checks that
fail before anything is created."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

from nar_bench.checkpoints import check_torch_file
from nar_bench.errors import NarBenchError
from nar_bench.lit.progress import StepProgressBar
from nar_bench.lit.resumable import StepSeeds
from nar_bench.paradigms.model_config import check_model
from nar_bench.tokenizers.checks import check_tokenizer_inputs
from nar_bench.tracking.provenance import check_writable


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    """Whether Lightning runs ``trainer_cfg`` on a GPU."""
    return torch.cuda.is_available() and trainer_cfg.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(trainer_cfg: DictConfig) -> str:
    if trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    return "bf16-mixed" if uses_gpu(trainer_cfg) else "32-true"


def run_directory(cfg: DictConfig, run_name: str, logger: MLFlowLogger) -> Path:
    """``<output_dir>/<run name>-<run id prefix>``. Only rank 0 owns the MLflow run; under DDP the
    checkpoint folder is broadcast from rank 0."""
    run_id = logger.run_id or "rank-nonzero"
    return Path(cfg.output_dir) / f"{run_name.replace('/', '_')}-{run_id[:8]}"


def make_trainer(cfg: DictConfig, logger, run_dir: Path) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t),
        val_check_interval=min(t.val_check_interval, t.max_steps),
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        logger=logger,
        # last.ckpt at every validation interval (not only at the end): what a killed run resumes from
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                   every_n_train_steps=min(t.val_check_interval, t.max_steps)),
                   LearningRateMonitor("step"), StepProgressBar(), StepSeeds(cfg.seed)],
        default_root_dir=run_dir,
        enable_model_summary=False,
    )


def check_inputs(cfg: DictConfig) -> None:
    """Fails before anything is created (no half-written runs) on missing input files or an
    ``output_dir`` that cannot be written."""
    for key, path in (("model.checkpoint", cfg.model.checkpoint), ("tokenizer.checkpoint", cfg.tokenizer.checkpoint)):
        if path and not Path(path).is_file():
            raise NarBenchError(f"{key}: file '{path}' not found; download it or point {key} at the right path")
    check_writable(cfg.output_dir, "output_dir")


def check_generator_inputs(cfg: DictConfig) -> None:
    """What a generator run needs, checked before any model, run or folder is created: the model
    section (paradigm, size, options), readable weights files, the tokenizer (a learned one has a
    checkpoint or ``tokenizer.untrained=true``; data.grid_size is the grid it makes), the geometry, and
    a step budget (``trainer.max_steps=0`` only samples a ``model.checkpoint``)."""
    check_model(cfg.model)
    if cfg.trainer.max_steps == 0 and not cfg.model.checkpoint and not cfg.trainer.resume:
        raise NarBenchError("trainer.max_steps=0 trains nothing and model.checkpoint is not set, so the run would "
                            "sample random weights: set trainer.max_steps > 0, or model.checkpoint=<weights> to "
                            "sample them without training")
    for key, path in (("model.checkpoint", cfg.model.checkpoint), ("tokenizer.checkpoint", cfg.tokenizer.checkpoint)):
        if path and Path(path).is_file():
            check_torch_file(path, key)
    check_tokenizer_inputs(cfg)


def check_sweep_inputs(points: list[tuple[str, DictConfig]]) -> None:
    """:func:`check_generator_inputs` and ``check_eval_inputs`` of every sweep point, before the
    first one trains (a bad last point must not fail after hours of training)."""
    from nar_bench.evaluation.scoring import check_eval_inputs  # evaluation builds on lit: imported when used

    for name, point_cfg in points:
        try:
            check_generator_inputs(point_cfg)
            check_eval_inputs(point_cfg)
        except NarBenchError as err:
            raise NarBenchError(f"sweep point '{name}': {err}") from None
