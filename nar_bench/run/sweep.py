"""``nar-bench sweep``: every point of a config's sweep under one MLflow parent run, each point =
train + evaluate in its own MLflow child run.

Points whose configs differ only in ``eval.*`` (e.g. a CFG-scale grid) share one training: CFG is a
sampling-time setting, so retraining per scale would only add training noise and cost. The first
such point trains in its child run; the others evaluate the same in-memory model in their own child
runs, tagged with the id of the run that trained it.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nar_bench.config import check_sweep_inputs, expand_sweep
from nar_bench.errors import NarBenchError
from nar_bench.run.evaluate import evaluate
from nar_bench.run.train import FittedRun, finish_run, fit
from nar_bench.tracking.mlflow import make_logger, parent_run
from nar_bench.tracking.report import POINT_TAG, SEED_TAG, TRAINED_IN_TAG, VARIANT_TAG

# (point name, point config, parent run id) -> one result row; the function opens the child run
RunPoint = Callable[[str, DictConfig, str], dict]

SUMMARY_COLUMNS = ("paradigm", "size", "params_M", "steps_per_image", "train_steps", "train_loss", "val_loss",
                   "device")


def training_key(cfg: DictConfig) -> str:
    """Everything that determines the trained weights: the config without eval / tracking / output."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in ("eval", "tracking", "sweep", "output_dir"):
        settings.pop(key, None)
    return json.dumps(settings, sort_keys=True)


def point_columns(name: str, cfg: DictConfig, grid_keys: list[str]) -> dict:
    """variant, seed and one column per grid key (short name, as in the point name)."""
    columns = {"variant": name.split("/")[0], "seed": cfg.seed}
    columns.update({key.split(".")[-1]: OmegaConf.select(cfg, key) for key in grid_keys})
    return columns


class TrainAndEvaluate:
    """run_point for :func:`run_sweep`; one result row per point (rank 0; {} elsewhere)."""

    def __init__(self, sweep_cfg: DictConfig):
        self.grid_keys = list(sweep_cfg.sweep.grid)
        self.trained: dict[str, tuple[FittedRun, dict]] = {}

    def __call__(self, name: str, cfg: DictConfig, parent_run_id: str) -> dict:
        key, rank_zero = training_key(cfg), rank_zero_only.rank == 0
        if key in self.trained:
            run, summary = self.trained[key]
            logger = make_logger(cfg.tracking, name, parent_run_id, tags={TRAINED_IN_TAG: run.logger.run_id})
            logger.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True),
                                    "num_classes": run.module.num_classes})
        else:
            run = fit(cfg, name, parent_run_id)
            logger = run.logger
            summary = finish_run(cfg, run.module, run.trainer, logger, run.run_dir, name) if rank_zero else {}
            self.trained[key] = (run, summary)
        columns = point_columns(name, cfg, self.grid_keys)
        if rank_zero:
            tags = {VARIANT_TAG: columns["variant"], SEED_TAG: str(cfg.seed)}
            tags.update({POINT_TAG + k.split(".")[-1]: str(OmegaConf.select(cfg, k)) for k in self.grid_keys})
            for tag, value in tags.items():
                logger.experiment.set_tag(logger.run_id, tag, value)
        try:
            metrics = evaluate(run.module, cfg, logger=logger, out_dir=run.run_dir / "eval" / name.replace("/", "_"))
        except BaseException:
            logger.finalize("failed")
            raise
        logger.finalize("success")  # closes the eval-only runs; the training run is already closed by fit
        if not rank_zero:
            return {}
        return {**columns, **{k: summary.get(k) for k in SUMMARY_COLUMNS}, **metrics,
                "mlflow_run_id": logger.run_id, "trained_in_run": run.logger.run_id}


def run_sweep(cfg: DictConfig, run_point: RunPoint, name: str) -> pd.DataFrame:
    """Expands ``cfg.sweep``, runs each point, returns the result table (one row per point).
    A failed sweep returns nothing and its parent run is marked FAILED in MLflow."""
    points = expand_sweep(cfg)
    check_sweep_inputs(points)  # every point's inputs, before the first one trains
    rows = []
    params = {"points": len(points), "sweep": OmegaConf.to_yaml(cfg.sweep)[:5000]}
    with parent_run(cfg.tracking, name, params) as parent_id:
        for point_name, point_cfg in points:
            rows.append({"point": point_name, **run_point(point_name, point_cfg, parent_id)})
    return pd.DataFrame(rows)


def select_variants(cfg: DictConfig, only: str | None) -> DictConfig:
    """``cfg`` with just the sweep variants named in the comma-separated ``only``."""
    if not only:
        return cfg
    names = [name.strip() for name in only.split(",")]
    known = [variant.get("name") for variant in cfg.sweep.variants]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise NarBenchError(f"--only: no sweep variant named {', '.join(unknown)}; "
                            f"variants: {', '.join(map(str, known))}")
    cfg = copy.deepcopy(cfg)
    cfg.sweep.variants = [variant for variant in cfg.sweep.variants if variant.get("name") in names]
    return cfg


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.tracking.provenance import provenance
    from nar_bench.tracking.report import write_report

    cfg = select_variants(load_config(args.config, args.overrides), args.only)
    name = cfg.tracking.run_name or Path(args.config).stem
    table = run_sweep(cfg, TrainAndEvaluate(cfg), name)
    if rank_zero_only.rank != 0:
        return
    grid = [key.split(".")[-1] for key in cfg.sweep.grid]
    info = provenance(args.command_line, experiment=cfg.tracking.experiment, extractor=cfg.eval.extractor)
    paths = write_report(table, grid, args.out or Path("results") / Path(args.config).stem, info)
    print("\n".join(str(path) for path in paths.values()))
