"""Runs every point of a config's sweep under one MLflow parent run (a child run per point)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nar_bench.config import expand_sweep
from nar_bench.tracking.mlflow import parent_run

# (point name, point config, parent run id) -> one result row; the function opens the child run
RunPoint = Callable[[str, DictConfig, str], dict]


def run_sweep(cfg: DictConfig, run_point: RunPoint, name: str) -> pd.DataFrame:
    """Expands ``cfg.sweep``, runs each point, returns the result table (one row per point).
    A failed sweep returns nothing and its parent run is marked FAILED in MLflow."""
    points = expand_sweep(cfg)
    rows = []
    params = {"points": len(points), "sweep": OmegaConf.to_yaml(cfg.sweep)[:5000]}
    with parent_run(cfg.tracking, name, params) as parent_id:
        for point_name, point_cfg in points:
            rows.append({"point": point_name, **run_point(point_name, point_cfg, parent_id)})
    return pd.DataFrame(rows)

