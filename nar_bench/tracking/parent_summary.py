"""A sweep's result on its MLflow parent run, so that the MLflow UI alone answers "which variant won":
the summary as an MLflow table, the report files (summary.md, runs.csv, metrics.png, ...), each
group's mean metrics as parent metrics (``<metric>/<variant>[/<grid point>]``, one chart per
metric in the UI) and the best group per metric as a tag ``nar_bench.best.<metric>``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from nar_bench.metrics.registry import METRICS
from nar_bench.tracking.names import BEST_TAG, TABLE_ARTIFACT


def group_label(row: pd.Series, group: list[str]) -> str:
    """``variant[/key_value...]`` with only the characters MLflow allows in metric names; a key the
    variant does not set (a variant that crosses no grid: NaN / None) is left out."""
    parts = [str(row[group[0]]), *(f"{key}_{row[key]}" for key in group[1:] if not pd.isna(row[key]))]
    return re.sub(r"[^\w.\- /]", "_", "/".join(parts))


def summary_metrics(summary: pd.DataFrame, group: list[str]) -> dict[str, float]:
    """{``<metric>/<group label>``: mean} for every ``<metric>_mean`` column of the summary."""
    metrics = {}
    for column in (c for c in summary.columns if c.endswith("_mean")):
        for _, row in summary.iterrows():
            if pd.notna(row[column]):
                metrics[f"{column[:-len('_mean')]}/{group_label(row, group)}"] = float(row[column])
    return metrics


def best_groups(summary: pd.DataFrame, group: list[str]) -> dict[str, str]:
    """{metric: label of the group with the best mean} for metrics with a registered direction."""
    best = {}
    for metric, spec in METRICS.items():
        column = f"{metric}_mean"
        if column not in summary or summary[column].isna().all():
            continue
        index = summary[column].idxmin() if spec.direction == "lower" else summary[column].idxmax()
        best[metric] = group_label(summary.loc[index], group)
    return best


def log_table(c: MlflowClient, run_id: str, table: pd.DataFrame) -> None:
    """``MlflowClient.log_table``, except that a resumed sweep replaces the table instead of appending
    its rows to the first one (same JSON layout: pandas' ``orient="split"``)."""
    if TABLE_ARTIFACT not in {a.path for a in c.list_artifacts(run_id)}:
        c.log_table(run_id, data=table, artifact_file=TABLE_ARTIFACT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TABLE_ARTIFACT
        table.to_json(path, orient="split", index=False, date_format="iso")
        c.log_artifact(run_id, str(path))


def log_sweep_summary(c: MlflowClient, run_id: str, summary: pd.DataFrame, group: list[str],
                      files: list[Path]) -> dict[str, float]:
    """Logs the summary table, ``files``, the per-group metrics and the best-group tags to the parent
    run ``run_id``; returns the metrics."""
    log_table(c, run_id, summary)
    for path in files:
        c.log_artifact(run_id, str(path))
    metrics = summary_metrics(summary, group)
    step = 0
    history = c.get_run(run_id).data.metrics
    if history:  # a resumed sweep: the union's values come after the first attempt's
        step = max(m.step for m in c.get_metric_history(run_id, next(iter(history)))) + 1
    now = int(pd.Timestamp.now().timestamp() * 1000)
    c.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])
    for metric, label in best_groups(summary, group).items():
        c.set_tag(run_id, BEST_TAG + metric, label)
    return metrics
