"""Result tables and plots: from a sweep's rows or from MLflow runs, to ``results/<name>/``.

One table layout for both sources: a row per run with ``point``, ``variant``, ``seed``, one column
per sweep grid key (e.g. ``cfg_scale``) and the metrics (``fid``, ``is``, ``class_accuracy``, ...).
``summarize`` averages over seeds; ``plot_summary`` draws bars per variant (with error bars over
seeds) or, for a sweep over one numeric grid key, one line per variant against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import nar_bench.metrics  # noqa: E402, F401  (registers the metrics' directions)
from nar_bench.errors import NarBenchError  # noqa: E402
from nar_bench.registry import METRIC_DIRECTIONS  # noqa: E402
from nar_bench.tracking.mlflow import COMMIT_TAG, DEVICE_TAG, PARENT_TAG, tracking_uri  # noqa: E402

METRICS = ("fid", "is", "precision", "recall", "kid", "class_accuracy")  # table order, when present
PLOT_METRICS = ("fid", "is", "class_accuracy")
# tags nar_bench.run.sweep puts on every sweep child run; POINT_TAG + short grid key, e.g. cfg_scale
VARIANT_TAG, SEED_TAG, POINT_TAG = "nar_bench.variant", "nar_bench.seed", "nar_bench.point."
TRAINED_IN_TAG = "nar_bench.trained_in_run"  # on runs that evaluate a model trained in another run


# --- MLflow -> table ----------------------------------------------------------------------------
def search_runs(tracking: DictConfig) -> pd.DataFrame:
    """Every run of experiment ``tracking.experiment`` as mlflow.search_runs returns them."""
    uri = tracking_uri(tracking)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():  # don't create an empty store
        raise NarBenchError(f"no MLflow store at '{uri[len(prefix):]}'; run a sweep first (e.g. make ablation-heads) "
                            "or point tracking.tracking_uri at the store")
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(tracking.experiment) is None:
        raise NarBenchError(f"no MLflow experiment '{tracking.experiment}' in {tracking.tracking_uri}; run a sweep "
                            "first or set tracking.experiment / tracking.tracking_uri")
    return mlflow.search_runs(experiment_names=[tracking.experiment], order_by=["attributes.start_time ASC"])


def fetch_runs(tracking: DictConfig, parent_run_id: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(result table, its grid columns) for the runs of the experiment; only the children of
    ``parent_run_id`` if given ("latest": the newest parent run). Parent runs are left out."""
    runs = search_runs(tracking)
    parent_col = f"tags.{PARENT_TAG}"
    parents = runs[parent_col].dropna().unique() if parent_col in runs else []
    if parent_run_id == "latest":
        if not len(parents):
            raise NarBenchError(f"experiment '{tracking.experiment}' has no sweep (parent) runs")
        parent_run_id = runs[runs.run_id.isin(parents)].run_id.iloc[-1]
    if parent_run_id is not None:
        runs = runs[runs.get(parent_col) == parent_run_id] if parent_col in runs else runs.iloc[:0]
        if runs.empty:
            raise NarBenchError(f"run '{parent_run_id}' has no child runs in experiment '{tracking.experiment}'")
    return tidy_runs(runs[~runs.run_id.isin(parents)])


def _numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values)
    except (TypeError, ValueError):
        return values


def tidy_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """mlflow.search_runs columns -> (result table, grid columns): metric ``eval/fid`` -> ``fid``,
    tag ``nar_bench.point.cfg_scale`` -> grid column ``cfg_scale``, ..."""
    def tag(name: str) -> pd.Series:
        col = f"tags.{name}"
        return runs[col] if col in runs else pd.Series(None, index=runs.index, dtype=object)

    name = tag("mlflow.runName")
    table = pd.DataFrame({"point": name, "variant": tag(VARIANT_TAG).fillna(name),
                          "seed": pd.to_numeric(tag(SEED_TAG), errors="coerce")})
    grid = sorted(col[len(f"tags.{POINT_TAG}"):] for col in runs.columns if col.startswith(f"tags.{POINT_TAG}"))
    for col in grid:
        table[col] = _numeric(tag(POINT_TAG + col))
    if "params.cfg/model/paradigm" in runs:
        table["paradigm"] = runs["params.cfg/model/paradigm"]
    evaluated = [col[len("metrics.eval/"):] for col in runs.columns if col.startswith("metrics.eval/")]
    for metric in sorted(evaluated, key=lambda m: (METRICS.index(m) if m in METRICS else len(METRICS), m)):
        table[metric] = runs[f"metrics.eval/{metric}"]
    for metric in ("train/loss", "val/loss"):
        if f"metrics.{metric}" in runs:
            table[metric.replace("/", "_")] = runs[f"metrics.{metric}"]
    table["device"], table["commit"] = tag(DEVICE_TAG), tag(COMMIT_TAG)
    table["status"] = runs["status"]
    table["mlflow_run_id"] = runs["run_id"]
    table["trained_in_run"] = tag(TRAINED_IN_TAG).fillna(runs["run_id"])
    return table.reset_index(drop=True), grid


# --- table -> summary, plot, files ---------------------------------------------------------------
def summarize(table: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Mean, std and count over seeds of every metric, per group (variant + grid point), in the
    order the groups first appear."""
    metrics = [m for m in METRICS if m in table and table[m].notna().any()]
    if not metrics:
        raise NarBenchError("no evaluation metrics in these runs (fid, is, ...); were they evaluated?")
    grouped = table.groupby(group, sort=False, dropna=False)[metrics]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def summary_markdown(summary: pd.DataFrame, group: list[str]) -> str:
    """``mean ± std`` cells (just the mean for one seed)."""
    cells = summary[group + ["seeds"]].copy()
    for metric in METRICS:
        if f"{metric}_mean" not in summary:
            continue
        mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
        cells[metric] = [f"{m:.4g}" if pd.isna(s) else f"{m:.4g} ± {s:.2g}" for m, s in zip(mean, std, strict=True)]
    return cells.to_markdown(index=False)


def plot_summary(summary: pd.DataFrame, group: list[str], path: str | Path) -> Path:
    """Bars per group, or lines per variant against the single numeric grid column if there is one;
    error bars = std over seeds where a group has more than one seed."""
    metrics = [m for m in PLOT_METRICS if f"{m}_mean" in summary]
    grid = [col for col in group if col != "variant"]
    line_x = grid[0] if len(grid) == 1 and pd.api.types.is_numeric_dtype(summary[grid[0]]) else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"].where(summary["seeds"] > 1)
        if line_x:
            for variant, rows in summary.groupby("variant", sort=False):
                ax.errorbar(rows[line_x], mean[rows.index], yerr=std[rows.index], marker="o", capsize=3, label=variant)
            ax.set_xlabel(line_x)
            ax.legend(fontsize="small")
        else:
            labels = summary[group].astype(str).agg(" ".join, axis=1)
            ax.bar(range(len(summary)), mean, yerr=std.fillna(0), capsize=4, color="tab:blue")
            ax.set_xticks(range(len(summary)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{metric} ({METRIC_DIRECTIONS[metric]} is better)")
        ax.grid(axis="y", alpha=0.3)
    if (summary["seeds"] > 1).any():
        fig.suptitle(f"error bars: std over {summary['seeds'].max()} seeds", fontsize="small", y=0.99)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def runs_provenance(table: pd.DataFrame) -> dict[str, str]:
    """Where the runs of a fetched table ran: {runs_device, runs_commit}, distinct values joined
    (a report is often written on another machine than the one that ran the runs)."""
    return {f"runs_{col}": ", ".join(table[col].dropna().unique()) or "not recorded" for col in ("device", "commit")}


def write_table(table: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """Writes ``path`` as CSV and a Markdown twin (same stem, .md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv, md = path.with_suffix(".csv"), path.with_suffix(".md")
    table.to_csv(csv, index=False)
    md.write_text(table.to_markdown(index=False) + "\n")
    return csv, md


def write_report(table: pd.DataFrame, grid: list[str], out_dir: str | Path, info: dict[str, str]) -> dict[str, Path]:
    """Writes runs.csv/.md (one row per run), summary.csv/.md (mean ± std over seeds per variant and
    ``grid`` columns, with the provenance ``info`` on top), metrics.png and provenance.json.
    Runs MLflow lists as unfinished (killed, crashed, still running) stay in runs.csv with their
    status but are left out of the summary and plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = ["variant", *grid]
    finished = table if "status" not in table else table[table["status"] == "FINISHED"]
    summary = summarize(finished, group)
    paths = {"runs_csv": out / "runs.csv", "runs_md": out / "runs.md", "summary_csv": out / "summary.csv",
             "summary_md": out / "summary.md", "plot": out / "metrics.png", "provenance": out / "provenance.json"}
    write_table(table, paths["runs_csv"])
    summary.to_csv(paths["summary_csv"], index=False)
    header = "\n".join(f"- {key}: `{value}`" for key, value in info.items())
    paths["summary_md"].write_text(f"{header}\n\n{summary_markdown(summary, group)}\n")
    plot_summary(summary, group, paths["plot"])
    paths["provenance"].write_text(json.dumps(info, indent=2) + "\n")
    return paths
