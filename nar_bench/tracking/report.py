"""Result tables and plots: from a sweep's rows or from MLflow runs, to ``results/<name>/``.

One table layout for both sources: a row per run with ``point``, ``variant``, ``seed``, one column
per sweep grid key (e.g. ``cfg_scale``) and the metrics (``fid``, ``is``, ``class_accuracy``, ...).
``summarize`` averages over DISTINCT seeds: only FINISHED runs count, and several runs of one point
(variant, seed and grid values, or the same ``nar_bench.point_key`` tag) collapse to the latest one;
``summary_use`` says for every run why it is in or out. ``plot_summary`` draws bars per variant (error
bars = std over seeds where n > 1) or, for a sweep over one numeric grid key, one line per variant
against it; every plot states n per variant and carries its provenance and evaluation settings.
When the runs carry speed records (``metrics.registry.SPEEDS``: every evaluation records them),
``quality_vs_speed`` tables each group's mean quality next to its mean speed, and
``plot_quality_vs_speed`` draws the first quality metric against generate img/s, one labelled
marker per group, the Pareto front (no other group both faster and better) joined by a line.
When the points decoded in different step counts (``steps_per_image``, a sweep's rows),
``plot_quality_vs_steps`` draws the first quality metric against it, one line per variant (e.g. FID
against steps per decoding order).
The notebook (notebooks/compare_runs.ipynb) calls the same functions.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nar_bench.errors import NarBenchError  # noqa: E402
from nar_bench.metrics.registry import METRICS, SPEEDS, metric_names, plotted, speed_names  # noqa: E402
from nar_bench.tracking.mlflow import client, tracking_uri  # noqa: E402
from nar_bench.tracking.names import (  # noqa: E402
    COMMIT_TAG,
    DEVICE_TAG,
    EVAL_PREFIX,
    EXTRACTOR_PARAM,
    EXTRACTOR_TAG,
    LOSS_METRICS,
    PARADIGM_PARAM,
    PARADIGM_TAG,
    PARENT_TAG,
    POINT_KEY_TAG,
    POINT_TAG,
    SEED_TAG,
    SWEEP_POINTS_PARAM,
    TRAINED_IN_TAG,
    VARIANT_TAG,
)
from nar_bench.tracking.parent_summary import group_label  # noqa: E402
from nar_bench.tracking.provenance import provenance_line, write_provenance  # noqa: E402

USED = "used"  # summary_use value of the runs a summary averages
PLOT_COLUMNS, PANEL_IN, PLOT_DPI = 3, (4.0, 3.6), 100  # <= 1200 px wide: legible where MLflow shows it
EXTRACTORS = {  # eval.extractor -> what its FID / IS / KID / precision-recall are computed on
    "domain": "domain-feature metrics (synthetic-shapes classifier features, not Inception)",
    "inception": "Inception-V3 features",
}


# --- MLflow -> table ----------------------------------------------------------------------------
def search_runs(tracking: DictConfig) -> pd.DataFrame:
    """Every run of experiment ``tracking.experiment`` as mlflow.search_runs returns them."""
    uri = tracking_uri(tracking)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():  # don't create an empty store
        raise NarBenchError(f"no MLflow store at '{uri[len(prefix):]}'; run a sweep first (e.g. make ablation-heads) "
                            "or point tracking.tracking_uri at the store")
    client(tracking)  # opens the store: one line if a newer MLflow wrote it
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(tracking.experiment) is None:
        raise NarBenchError(f"no MLflow experiment '{tracking.experiment}' in {tracking.tracking_uri}; run a sweep "
                            "first or set tracking.experiment / tracking.tracking_uri")
    return mlflow.search_runs(experiment_names=[tracking.experiment], order_by=["attributes.start_time ASC"])


@dataclass
class RunSelection:
    """The runs a report is about: ``table`` (tidy_runs layout), its ``grid`` columns, the sweep
    (parent) run they belong to (None for ``--parent all``) and notes on how it was chosen."""

    table: pd.DataFrame
    grid: list[str]
    parent_run_id: str | None
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, str]:
        """Provenance entries of the selection (for provenance.json and plot footers)."""
        info = {"parent_run": self.parent_run_id or "all (every sweep of the experiment)"}
        return {**info, **({"selection_notes": "; ".join(self.notes)} if self.notes else {})}


def parent_ids(runs: pd.DataFrame) -> list[str]:
    """Ids of sweep parent runs: runs named as a parent by another run, or holding a sweep's
    ``points`` param (a parent killed before its first child)."""
    parent_col = f"tags.{PARENT_TAG}"
    named = set(runs[parent_col].dropna()) if parent_col in runs else set()
    points = f"params.{SWEEP_POINTS_PARAM}"
    if points in runs:
        no_parent = runs[parent_col].isna() if parent_col in runs else True
        named |= set(runs.run_id[runs[points].notna() & no_parent])
    return [run_id for run_id in runs.run_id if run_id in named]  # start-time order


def resolve_parent(runs: pd.DataFrame, parent: str | None, experiment: str) -> tuple[str | None, list[str]]:
    """(parent run id, notes) for ``parent``: "latest" (or None) = the newest FINISHED sweep, saying
    which newer unfinished ones it skipped; "all" = None (every run); else a run id (or a prefix of
    at least 8 characters, as run folders show)."""
    parents = runs[runs.run_id.isin(parent_ids(runs))].sort_values("start_time")
    if parent == "all":
        return None, []
    if parent in (None, "latest"):
        finished = parents[parents.status == "FINISHED"]
        if finished.empty:
            found = ", ".join(f"{r.run_id[:8]} ({r.status})" for r in parents.itertuples()) or "none"
            raise NarBenchError(f"experiment '{experiment}' has no FINISHED sweep (parent) run (found: {found}); "
                                "name one with --parent <run id>, or --parent all for every run")
        chosen = finished.iloc[-1]
        skipped = parents[parents.start_time > chosen.start_time]
        notes = [f"--parent latest skipped sweep run {r.run_id} ({r.status}, started {r.start_time:%Y-%m-%d %H:%M})"
                 for r in skipped.itertuples()]
        return chosen.run_id, notes + [f"report of sweep run {chosen.run_id} (newest FINISHED)"]
    matches = parents[parents.run_id.str.startswith(parent)] if len(parent) >= 8 else parents[parents.run_id == parent]
    if len(matches) != 1:
        known = ", ".join(f"{r.run_id} ({r.status})" for r in parents.itertuples()) or "none"
        raise NarBenchError(f"--parent {parent}: {'ambiguous' if len(matches) else 'no such'} sweep run in experiment "
                            f"'{experiment}'; sweep runs: {known}")
    chosen = matches.iloc[0]
    notes = [] if chosen.status == "FINISHED" else [f"sweep run {chosen.run_id} is {chosen.status}"]
    return chosen.run_id, notes


def fetch_runs(tracking: DictConfig, parent: str | None = "latest") -> RunSelection:
    """The runs of one sweep of experiment ``tracking.experiment``: the children of ``parent``
    (see :func:`resolve_parent`; "all" = every run of the experiment). Parent runs are left out."""
    runs = search_runs(tracking)
    parent_id, notes = resolve_parent(runs, parent, tracking.experiment)
    parent_col = f"tags.{PARENT_TAG}"
    if parent_id is not None:
        runs = runs[runs[parent_col] == parent_id] if parent_col in runs else runs.iloc[:0]
        if runs.empty:
            raise NarBenchError(f"sweep run '{parent_id}' has no child runs in experiment '{tracking.experiment}'")
    table, grid = tidy_runs(runs[~runs.run_id.isin(parent_ids(runs))])
    return RunSelection(table, grid, parent_id, notes)


def _numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values)
    except (TypeError, ValueError):
        return values


def recorded(runs: pd.DataFrame, tag: str, param: str) -> pd.Series | None:
    """A config setting of each run: its tag (runs that log config.yaml), else its flattened-config
    param (runs before the tag, or that log every setting); None when no run has either."""
    columns = [runs[col] for col in (f"tags.{tag}", f"params.{param}") if col in runs]
    if not columns:
        return None
    values = columns[0]
    for column in columns[1:]:
        values = values.fillna(column)
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
    paradigm = recorded(runs, PARADIGM_TAG, PARADIGM_PARAM)
    if paradigm is not None:
        table["paradigm"] = paradigm
    prefix = f"metrics.{EVAL_PREFIX}"
    evaluated = [col[len(prefix):] for col in runs.columns if col.startswith(prefix)]
    order = metric_names() + speed_names()  # quality metrics, then speed records, each in registry order
    for metric in sorted(evaluated, key=lambda m: (order.index(m) if m in order else len(order), m)):
        table[metric] = runs[prefix + metric]
    for metric in LOSS_METRICS:
        if f"metrics.{metric}" in runs:
            table[metric.replace("/", "_")] = runs[f"metrics.{metric}"]
    extractor = recorded(runs, EXTRACTOR_TAG, EXTRACTOR_PARAM)
    if extractor is not None:
        table["extractor"] = extractor
    table["device"], table["commit"] = tag(DEVICE_TAG), tag(COMMIT_TAG)
    table["status"], table["start_time"] = runs["status"], runs["start_time"]
    table["point_key"], table["parent_run"] = tag(POINT_KEY_TAG), tag(PARENT_TAG)
    table["mlflow_run_id"] = runs["run_id"]
    table["trained_in_run"] = tag(TRAINED_IN_TAG).fillna(runs["run_id"])
    return table.reset_index(drop=True), grid


# --- which runs a summary averages ---------------------------------------------------------------
def _latest_first(table: pd.DataFrame) -> pd.Index:
    """Row labels, newest run first (by start_time when known, else later rows are newer)."""
    order = pd.Series(range(len(table)), index=table.index)
    if "start_time" in table and table["start_time"].notna().all():
        return table.assign(_order=order).sort_values(["start_time", "_order"], ascending=False).index
    return order.sort_values(ascending=False).index


def summary_use(table: pd.DataFrame, grid: list[str]) -> pd.Series:
    """Per run: ``"used"`` or why the summary leaves it out. Only FINISHED runs count (a table
    without ``status``, e.g. a sweep's own rows, is all finished); runs of one point (same
    ``point_key``, or same variant + seed + grid values without one) collapse to the newest; and
    a group (variant + grid values) never counts one seed twice, so n = distinct seeds."""
    use = pd.Series(USED, index=table.index, dtype=object)
    if "status" in table:
        unfinished = table["status"].fillna("unknown") != "FINISHED"
        use[unfinished] = "left out: " + table.loc[unfinished, "status"].fillna("status unknown").astype(str)
    group = ["variant", *grid]
    seed = table["seed"] if "seed" in table else pd.Series(float("nan"), index=table.index)
    point = table[group].map(str).agg("|".join, axis=1) + "|seed=" + seed.astype(str)
    if "point_key" in table:
        point = table["point_key"].where(table["point_key"].notna(), point).astype(str)
    group_seed = table[group].map(str).agg("|".join, axis=1) + "|seed=" + seed.astype(str)
    kept_point: dict[str, str] = {}
    kept_seed: dict[str, str] = {}
    for label in _latest_first(table):
        if use[label] != USED:
            continue
        run_id = str(table.at[label, "mlflow_run_id"]) if "mlflow_run_id" in table else f"row {label}"
        if point[label] in kept_point:
            use[label] = f"duplicate of {kept_point[point[label]]}"
        elif group_seed[label] in kept_seed:
            use[label] = f"same variant and seed as {kept_seed[group_seed[label]]} with another config (point_key)"
        else:
            kept_point[point[label]] = kept_seed[group_seed[label]] = run_id
    return use


def used_runs(table: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """The runs a summary averages (see :func:`summary_use`), in table order."""
    return table[summary_use(table, grid) == USED]


# --- table -> summary, plot, files ---------------------------------------------------------------
def summarize(table: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Mean and std over DISTINCT seeds of every metric per group (variant + grid point), in the
    order the groups first appear; ``seeds`` = n (distinct seeds), ``seed_list`` names them. Only the
    runs :func:`summary_use` marks used are averaged (finished, one per point)."""
    runs = used_runs(table, [col for col in group if col != "variant"])
    metrics = [m for m in METRICS if m in runs and runs[m].notna().any()]  # registry order
    if not metrics:
        raise NarBenchError("no evaluation metrics in the FINISHED runs of this selection (fid, is, ...); "
                            "were they evaluated? (runs.csv lists every run and its status)")
    grouped = runs.groupby(group, sort=False, dropna=False)
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    seeds = runs["seed"] if "seed" in runs else pd.Series(float("nan"), index=runs.index)
    summary.insert(1, "seed_list", seeds.groupby([runs[g] for g in group], sort=False, dropna=False).agg(
        lambda s: ",".join("?" if pd.isna(v) else str(int(v)) for v in sorted(s, key=lambda v: (pd.isna(v), v)))))
    if "num_samples" in runs:
        summary["num_samples"] = grouped["num_samples"].first()
    return summary.reset_index()


def summary_markdown(summary: pd.DataFrame, group: list[str]) -> str:
    """``mean ± std (n=k)`` cells; one seed: ``mean (n=1)``, no ±."""
    cells = summary[group].copy()
    cells["n (seeds)"] = [f"{n} ({seeds})" for n, seeds in zip(summary["seeds"], summary["seed_list"], strict=True)]
    for metric in METRICS:
        if f"{metric}_mean" not in summary:
            continue
        mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
        cells[metric] = [f"{m:.4g} (n=1)" if n == 1 else "-" if pd.isna(m) else f"{m:.4g} ± {s:.2g}"
                         for m, s, n in zip(mean, std, summary["seeds"], strict=True)]
    return cells.to_markdown(index=False)


def evaluation_line(table: pd.DataFrame, info: dict[str, str] | None = None) -> str:
    """What the metrics are: feature extractor and samples per run, e.g. "domain-feature metrics
    (...), 256 samples per run" (so a domain-feature FID is never read as Inception FID-50K)."""
    info = info or {}
    extractors = table["extractor"].dropna().unique().tolist() if "extractor" in table else []
    extractors = extractors or ([info["extractor"]] if info.get("extractor") else [])
    what = ", ".join(EXTRACTORS.get(str(e), f"extractor {e}") for e in extractors) or "feature extractor not recorded"
    counts = sorted({int(n) for n in table["num_samples"].dropna()}) if "num_samples" in table else []
    samples = f"{'/'.join(map(str, counts))} generated samples per run" if counts else "sample count not recorded"
    return f"{what}, {samples}"


def plot_summary(summary: pd.DataFrame, group: list[str], path: str | Path, caption: str = "") -> Path:
    """Bars per group, or lines per variant against the single numeric grid column if there is one;
    error bars = std over seeds only where a group has n > 1 (n is in every label); y axes start
    at 0. ``caption`` (provenance, evaluation settings) goes in the footer."""
    metrics = [spec.name for spec in plotted() if f"{spec.name}_mean" in summary]
    grid = [col for col in group if col != "variant"]
    line_x = grid[0] if len(grid) == 1 and pd.api.types.is_numeric_dtype(summary[grid[0]]) else None
    # at most PLOT_COLUMNS panels a row: MLflow's artifact view and a README show the PNG about 1000 px wide
    cols = min(PLOT_COLUMNS, len(metrics))
    rows = -(-len(metrics) // cols)
    width, height = PANEL_IN[0] * cols, PANEL_IN[1] * rows
    footer = [line for part in caption.splitlines() for line in textwrap.wrap(part, int(width * 13))]
    footer_in = 0.17 * len(footer) + 0.1 if footer else 0.0  # inches of 8 pt text
    fig, axes = plt.subplots(rows, cols, figsize=(width, height + footer_in), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    several = summary["seeds"] > 1
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
        if line_x:
            for variant, rows in summary.groupby("variant", sort=False):
                counts = "/".join(str(n) for n in rows["seeds"].unique())
                line = ax.plot(rows[line_x], mean[rows.index], marker="o", label=f"{variant} (n={counts})")[0]
                err = rows.index[several[rows.index]]
                if len(err):
                    ax.errorbar(rows.loc[err, line_x], mean[err], yerr=std[err], fmt="none", capsize=3,
                                color=line.get_color())
            ax.set_xlabel(line_x)
            ax.legend(fontsize="small")
        else:
            labels = [f"{' '.join(map(str, row))}\n(n={n})" for row, n in
                      zip(summary[group].itertuples(index=False), summary["seeds"], strict=True)]
            ax.bar(range(len(summary)), mean, color="tab:blue")
            err = summary.index[several]
            if len(err):  # no zero-height caps for n = 1
                ax.errorbar(err, mean[err], yerr=std[err], fmt="none", capsize=4, color="black")
            ax.set_xticks(range(len(summary)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_ylim(bottom=0)
        if metric == "class_accuracy":
            ax.set_ylim(0, 1)
        ax.set_title(f"{METRICS[metric].label} ({METRICS[metric].direction} is better)")
        ax.grid(axis="y", alpha=0.3)
    bars = "error bars: std over the n seeds" if several.any() else "one seed per point (n=1): no error bars"
    fig.suptitle(f"mean over distinct seeds; {bars}", fontsize="medium")
    fig.tight_layout(rect=(0, footer_in / (height + footer_in), 1, 1))
    if footer:
        fig.text(0.01, 0.05 / (height + footer_in), "\n".join(footer), fontsize=8, va="bottom", linespacing=1.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI, metadata={"Description": caption} if caption else None)
    plt.close(fig)
    return path


def plot_caption(table: pd.DataFrame, info: dict[str, str]) -> str:
    """Footer of a result plot: command, commit and device of the report, where the runs ran, the
    evaluation settings and the seeds."""
    seeds = sorted({int(s) for s in table["seed"].dropna()}) if "seed" in table else []
    shown = {key: info[key] for key in ("command", "commit", "device", "runs_commit", "runs_device", "parent_run")
             if key in info}
    return (f"{provenance_line(shown)}\n{evaluation_line(table, info)}; "
            f"seeds: {', '.join(map(str, seeds)) or 'not recorded'}")


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


def left_out_line(use: pd.Series) -> str:
    """E.g. "left out of the summary: 1 duplicate, 1 FAILED, 1 RUNNING (runs.csv says which)"."""
    reasons = use[use != USED].str.replace(r"^(duplicate) of .*", r"\1", regex=True).str.replace(
        r"^left out: ", "", regex=True).str.replace(r"^same variant and seed .*", "same seed, other config",
                                                    regex=True)
    if reasons.empty:
        return "every run is in the summary"
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons.value_counts(sort=False).items())
    return f"left out of the summary: {counts} (runs.csv says which)"


# --- quality against speed ------------------------------------------------------------------------
SPEED_AXIS = "generate_img_s"


def pareto_front(frame: pd.DataFrame, metric: str, speed: str = SPEED_AXIS) -> pd.Series:
    """Per row, whether no other row is at least as fast and at least as good on ``metric`` (its
    registered direction) and strictly better in one of the two. Rows missing either are False."""
    spec = METRICS[metric]
    known = frame[metric].notna() & frame[speed].notna()
    rows = frame[known]

    def dominated(i) -> bool:
        q, v = rows.at[i, metric], rows.at[i, speed]
        return any(rows.at[j, speed] >= v and not spec.better(q, rows.at[j, metric])
                   and (rows.at[j, speed] > v or spec.better(rows.at[j, metric], q)) for j in rows.index if j != i)

    return pd.Series([bool(known[i]) and not dominated(i) for i in frame.index], index=frame.index)


def quality_vs_speed(table: pd.DataFrame, group: list[str]) -> pd.DataFrame | None:
    """Per group (variant + grid values): n, the mean of every metric and of every speed record over
    the runs :func:`summary_use` keeps, the engine's label and ``pareto`` (on the first quality
    metric against generate img/s, see :func:`pareto_front`); None when the runs carry no
    generate img/s (evaluations from before speed was recorded)."""
    runs = used_runs(table, [col for col in group if col != "variant"])
    if SPEED_AXIS not in runs or runs[SPEED_AXIS].isna().all():
        return None
    metrics = [m for m in METRICS if m in runs and runs[m].notna().any()]
    speeds = [s for s in SPEEDS if s in runs and runs[s].notna().any()]
    grouped = runs.groupby(group, sort=False, dropna=False)
    out = grouped[metrics + speeds].mean()
    out.insert(0, "seeds", grouped.size())
    out = out.reset_index()
    out.insert(0, "label", [group_label(row, group) for _, row in out.iterrows()])
    quality = next((m for m in metrics if METRICS[m].plot), None)
    out["pareto"] = pareto_front(out, quality) if quality else False
    return out


def captioned_figure(caption: str) -> tuple[plt.Figure, plt.Axes, list[str]]:
    """A 6.4 x 4.8 in plot with room below it for ``caption`` wrapped to 110 characters a line:
    (figure, axes, the caption's lines) for :func:`save_captioned`."""
    footer = [line for part in caption.splitlines() for line in textwrap.wrap(part, 110)]
    fig, ax = plt.subplots(figsize=(6.4, 4.8 + footer_height(footer)))
    return fig, ax, footer


def footer_height(footer: list[str]) -> float:
    return 0.12 * len(footer) + 0.1 if footer else 0.0


def save_captioned(fig: plt.Figure, footer: list[str], path: str | Path, caption: str) -> Path:
    """Lays out ``fig`` above its caption lines ``footer``, saves it as ``path`` (the caption also in
    the PNG's metadata) and closes it."""
    footer_in = footer_height(footer)
    fig.tight_layout(rect=(0, footer_in / (4.8 + footer_in), 1, 1))
    if footer:
        fig.text(0.01, 0.05 / (4.8 + footer_in), "\n".join(footer), fontsize=6, va="bottom", linespacing=1.3)
    path = Path(path)
    fig.savefig(path, dpi=120, metadata={"Description": caption} if caption else None)
    plt.close(fig)
    return path


def plot_quality_vs_speed(speed: pd.DataFrame, path: str | Path, caption: str = "") -> Path | None:
    """The first plotted quality metric of ``speed`` (:func:`quality_vs_speed`) against generate
    img/s: one labelled marker per group, the Pareto front as a line; None without a metric."""
    metric = next((spec.name for spec in plotted() if spec.name in speed and speed[spec.name].notna().any()), None)
    if metric is None:
        return None
    fig, ax, footer = captioned_figure(caption)
    front = speed[speed["pareto"]].sort_values(SPEED_AXIS)
    ax.plot(front[SPEED_AXIS], front[metric], color="tab:orange", lw=1, zorder=1, label="Pareto front")
    ax.scatter(speed[SPEED_AXIS], speed[metric], color="tab:blue", zorder=2)
    ax.scatter(front[SPEED_AXIS], front[metric], color="tab:orange", zorder=3)
    for _, row in speed.iterrows():
        ax.annotate(f"{row['label']} (n={row['seeds']})", (row[SPEED_AXIS], row[metric]), fontsize="x-small",
                    xytext=(4, 4), textcoords="offset points")
    spec, axis = METRICS[metric], SPEEDS[SPEED_AXIS]
    ax.set_xlabel(f"{axis.label} {axis.unit} ({axis.direction} is better)")
    ax.set_ylabel(f"{spec.label} ({spec.direction} is better)")
    ax.set_title(f"{spec.label} vs {axis.label} throughput (mean over seeds)", fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_captioned(fig, footer, path, caption)


def plot_quality_vs_steps(table: pd.DataFrame, group: list[str], path: str | Path, caption: str = "") -> Path | None:
    """The first plotted quality metric against ``steps_per_image`` (the decoding steps of each
    point), means over the runs :func:`summary_use` keeps, one line per variant; None unless the
    table records more than one step count and a plotted metric."""
    x = "steps_per_image"
    runs = used_runs(table, [col for col in group if col != "variant"])
    metric = next((spec.name for spec in plotted() if spec.name in runs and runs[spec.name].notna().any()), None)
    if x not in runs or metric is None or pd.to_numeric(runs[x], errors="coerce").nunique() < 2:
        return None
    runs = runs.assign(**{x: pd.to_numeric(runs[x], errors="coerce")})
    means = runs.groupby(group, sort=False, dropna=False)[[x, metric]].mean().reset_index()
    fig, ax, footer = captioned_figure(caption)
    for variant, rows in means.groupby("variant", sort=False):
        rows = rows.sort_values(x)
        ax.plot(rows[x], rows[metric], marker="o", label=str(variant))
    spec = METRICS[metric]
    ax.set_xlabel("decoding steps per image")
    ax.set_ylabel(f"{spec.label} ({spec.direction} is better)")
    ax.set_title(f"{spec.label} vs decoding steps (mean over seeds)", fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return save_captioned(fig, footer, path, caption)


def write_report(table: pd.DataFrame, grid: list[str], out_dir: str | Path, info: dict[str, str]) -> dict[str, Path]:
    """Writes runs.csv/.md (one row per run, ``summary_use`` saying whether the summary uses it),
    summary.csv/.md (mean ± std over distinct seeds per variant and ``grid`` columns, FINISHED runs
    only, with the provenance ``info`` on top), metrics.png and provenance.json; when the runs
    carry speed records also quality_vs_speed.csv/.md and quality_vs_speed.png (the Pareto plot).
    The caller guards ``out_dir`` (tracking.provenance.guard_output) before doing any work."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = ["variant", *grid]
    use = summary_use(table, grid)
    summary = summarize(table, group)
    info = {**info, "evaluation": evaluation_line(table, info), "summary": left_out_line(use)}
    paths = {"runs_csv": out / "runs.csv", "runs_md": out / "runs.md", "summary_csv": out / "summary.csv",
             "summary_md": out / "summary.md", "plot": out / "metrics.png", "provenance": out / "provenance.json"}
    write_table(table.assign(summary_use=use), paths["runs_csv"])
    summary.to_csv(paths["summary_csv"], index=False)
    header = "\n".join(f"- {key}: `{value}`" for key, value in info.items())
    paths["summary_md"].write_text(f"{header}\n\n{summary_markdown(summary, group)}\n")
    caption = plot_caption(table, info)
    plot_summary(summary, group, paths["plot"], caption)
    speed = quality_vs_speed(table, group)
    if speed is not None:
        paths["speed_csv"], paths["speed_md"] = write_table(speed, out / "quality_vs_speed.csv")
        pareto = plot_quality_vs_speed(speed, out / "quality_vs_speed.png", caption)
        if pareto is not None:
            paths["pareto"] = pareto
    steps = plot_quality_vs_steps(table, group, out / "quality_vs_steps.png", caption)
    if steps is not None:
        paths["steps_plot"] = steps
    write_provenance(out, info)
    return paths
