"""``nar-bench report``: tables and a plot of one sweep's MLflow runs (the newest FINISHED sweep of
the experiment unless ``--parent`` names one, or ``all``)."""

from __future__ import annotations

import argparse

from nar_bench.config import load_config
from nar_bench.tracking.provenance import SCRATCH_ROOT, guard_output, provenance
from nar_bench.tracking.report import fetch_runs, runs_provenance, write_report


def main(args: argparse.Namespace) -> None:
    cfg = args.cfg or load_config(args.config, args.overrides)
    out = guard_output(args.out or SCRATCH_ROOT / "report" / cfg.tracking.experiment, args.overwrite)
    selection = fetch_runs(cfg.tracking, args.parent)
    for note in selection.notes:
        print(f"note: {note}")
    info = provenance(args.command_line, experiment=cfg.tracking.experiment, **selection.info(),
                      **runs_provenance(selection.table))
    print("\n".join(str(path) for path in write_report(selection.table, selection.grid, out, info).values()))
