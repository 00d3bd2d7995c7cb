"""Runs every point of a config's sweep under one MLflow parent run (a child run per point)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nar_bench.config import expand_sweep
from nar_bench.tracking.mlflow import parent_run

# (point name, point config, parent run id) -> one result row; the function opens the child run
RunPoint = Callable[[str, DictConfig, str], dict]


def run_sweep(cfg: DictConfig, run_point: RunPoint, name: str, table_path: str | Path | None = None) -> pd.DataFrame:
    """Expands ``cfg.sweep``, runs each point, returns (and optionally writes) the result table.

    The table is written once, after every point has run, so a failed sweep leaves no partial
    table behind; its parent run is marked FAILED in MLflow.
    """
    points = expand_sweep(cfg)
    rows = []
    params = {"points": len(points), "sweep": OmegaConf.to_yaml(cfg.sweep)[:5000]}
    with parent_run(cfg.tracking, name, params) as parent_id:
        for point_name, point_cfg in points:
            rows.append({"point": point_name, **run_point(point_name, point_cfg, parent_id)})
    table = pd.DataFrame(rows)
    if table_path is not None:
        write_table(table, table_path)
    return table


def write_table(table: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """Writes ``path`` as CSV and a Markdown twin (same stem, .md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv, md = path.with_suffix(".csv"), path.with_suffix(".md")
    table.to_csv(csv, index=False)
    md.write_text(table.to_markdown(index=False) + "\n")
    return csv, md
