"""``nar-bench report``: tables and a plot of the MLflow runs of an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from nar_bench.config import load_config
from nar_bench.tracking.provenance import provenance
from nar_bench.tracking.report import fetch_runs, runs_provenance, write_report


def main(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    table, grid = fetch_runs(cfg.tracking, args.parent)
    info = provenance(args.command_line, experiment=cfg.tracking.experiment, parent_run=str(args.parent),
                      **runs_provenance(table))
    out = args.out or Path("results") / "report" / cfg.tracking.experiment
    print("\n".join(str(path) for path in write_report(table, grid, out, info).values()))
