"""Tables and plots of a throughput sweep: the per-point CSV, a Table-1-style summary per model,
the split of end-to-end points into tokens and decode, where the sweep's wall time went, and
Figure-6-style plots (latency, peak memory, throughput vs batch size, one line per model).
Every file carries the provenance (command, device, commit, torch, date)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from nar_bench.tracking.provenance import provenance_line

# (column, axis label, y scale) of each Figure-6 panel
PANELS = (
    ("latency_s", "latency per batch (s)", "log"),
    ("peak_mem_gb", "peak GPU memory (GiB)", "linear"),
    ("throughput_img_s", "throughput (images/s)", "log"),
)
# columns of the points table left out of the Markdown (kept in the CSV)
MARKDOWN_DROP = ("latency_all", "device", "torch", "paradigm", "size")


def summary_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per model: params, steps, best throughput and its batch, latency at batch 8, peak
    memory, achieved TFLOP/s and % of the compute floor at the best batch, compile time, largest
    batch that fits and the batch that ran out of memory."""
    rows = []
    for model, g in points.groupby("model", sort=False):
        ok, oom = g[g.status == "ok"], g[g.status == "oom"]
        best = ok.loc[ok.throughput_img_s.idxmax()] if len(ok) else None
        at8 = ok[ok.batch_size == 8]
        rows.append({
            "model": model,
            "paradigm": g.paradigm.iloc[0],
            "size": g["size"].iloc[0],
            "params_M": g.params.iloc[0] / 1e6,
            "steps": g.steps.iloc[0],
            "best_img_s": None if best is None else best.throughput_img_s,
            "best_batch": None if best is None else best.batch_size,
            "latency_bs8_ms": at8.latency_s.iloc[0] * 1e3 if len(at8) else None,
            "peak_gb_at_best": None if best is None else best.peak_mem_gb,
            "tflops_at_best": None if best is None else best.get("tflops_s"),
            "floor_pct_at_best": None if best is None else best.get("floor_pct"),
            "compile_s": ok["compile_s"].max() if "compile_s" in ok and ok["compile_s"].notna().any() else None,
            "max_batch": ok.batch_size.max() if len(ok) else None,
            "oom_at": oom.batch_size.min() if len(oom) else None,
        })
    return pd.DataFrame(rows).astype({"best_batch": "Int64", "max_batch": "Int64", "oom_at": "Int64"})


# what makes an end-to-end point and a tokens-only point the same generation
SAME_GENERATION = ("paradigm", "size", "params", "steps", "batch_size", "dtype", "cfg_scale", "top_k", "top_p")


def decode_split(points: pd.DataFrame) -> pd.DataFrame:
    """Each end-to-end point (tokens + tokenizer decode) next to the tokens-only point of the same
    generation at the same batch size: decode_s = end-to-end latency - tokens latency (one stream,
    so the two add up), and the decoder's images/s from it. Derived, not timed on its own."""
    ok = points[points.status == "ok"]
    if "tokenizer_decode" not in ok or not ok.tokenizer_decode.astype(bool).any():
        return pd.DataFrame()
    e2e, tokens = ok[ok.tokenizer_decode.astype(bool)], ok[~ok.tokenizer_decode.astype(bool)]
    pairs = e2e.merge(tokens, on=list(SAME_GENERATION), suffixes=("", "_tokens"))
    decode_s = pairs.latency_s - pairs.latency_s_tokens
    return pd.DataFrame({
        "model": pairs.model, "tokens_model": pairs.model_tokens, "batch_size": pairs.batch_size,
        "tokens_s": pairs.latency_s_tokens, "end_to_end_s": pairs.latency_s, "decode_s": decode_s,
        "decode_img_s": pairs.batch_size / decode_s, "decode_share_pct": 100 * decode_s / pairs.latency_s})


def with_provenance(table: pd.DataFrame, prov: dict[str, str]) -> pd.DataFrame:
    """The table plus one column per provenance field it does not already have."""
    return table.assign(**{key: value for key, value in prov.items() if key not in table.columns})


def markdown(table: pd.DataFrame) -> str:
    table = table.astype(object).where(table.notna(), None)  # pd.NA / NaN -> None, shown as "-"
    return table.to_markdown(index=False, floatfmt=".4g", missingval="-")


def timeline_text(timeline: pd.DataFrame, wall_s: float | None) -> list[str]:
    lines = ["## Where the sweep's time went (wall seconds per model and phase)", ""]
    if wall_s is not None:
        lines += [f"This call: {wall_s:.0f} s from the start of the sweep to its report (phases below exclude "
                  "the MLflow logging between points); a model marked kept was measured by an earlier call of "
                  "the same bench, and its times are that call's.", ""]
    return [*lines, markdown(timeline), ""]


def write_markdown(points: pd.DataFrame, summary: pd.DataFrame, path: Path, prov: dict[str, str],
                   settings: str, training: pd.DataFrame | None = None, decode: pd.DataFrame | None = None,
                   timeline: pd.DataFrame | None = None, wall_s: float | None = None) -> Path:
    lines = [
        "# Throughput sweep",
        "",
        f"<!-- provenance: {provenance_line(prov)} -->",
        f"Command: `{prov['command']}`  ",
        f"Device: {prov['device']} · torch {prov['torch']} · commit `{prov['commit']}` · {prov['date']}  ",
        f"Settings: {settings}",
        "",
        "## Summary",
        "",
        markdown(summary),
        "",
        "## All points",
        "",
        markdown(points.drop(columns=[c for c in MARKDOWN_DROP if c in points.columns])),
        "",
    ]
    if decode is not None:
        lines += ["## End to end = tokens + decode (decode_s = end-to-end latency - tokens latency, same batch)", "",
                  markdown(decode), ""]
    if training is not None:
        lines += ["## Training step (bf16 autocast, forward + backward + AdamW, random codes)", "",
                  markdown(training), ""]
    if timeline is not None:
        lines += timeline_text(timeline, wall_s)
    path.write_text("\n".join(lines))
    return path


def plot_panel(ax, points: pd.DataFrame, column: str, label: str, yscale: str) -> None:
    """One line per model over the batch sizes that fit; the legend names each model's OOM batch."""
    plotted = False
    for model, g in points.groupby("model", sort=False):
        ok = g[(g.status == "ok") & g[column].notna()]
        oom = g.batch_size[g.status == "oom"]
        if len(ok):
            name = f"{model} (OOM at {oom.min()})" if len(oom) else model
            ax.plot(ok.batch_size, ok[column].astype(float), marker="o", label=name)
            plotted = True
    ax.set_xscale("log", base=2)
    batch_sizes = sorted(points.batch_size.unique())
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes], fontsize=7)
    ax.set_xlabel("batch size")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.set_yscale(yscale)
        if yscale == "linear":  # memory starts at 0: a truncated axis would exaggerate the differences
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data (no GPU memory stats on CPU)" if column == "peak_mem_gb" else "no data",
                ha="center", va="center", transform=ax.transAxes)


def save_figure(points: pd.DataFrame, panels: tuple, path: Path, settings: str, prov: dict[str, str]) -> Path:
    fig = Figure(figsize=(5.5 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        plot_panel(ax, points, *panel)
    fig.suptitle("Throughput sweep")
    fig.get_layout_engine().set(rect=(0, 0.08, 1, 0.92))  # room for the footer
    footer = f"{settings}\n{provenance_line(prov)}"
    fig.text(0.01, 0.01, footer, fontsize=6, wrap=True)
    fig.savefig(path, dpi=150, metadata={"Title": "Throughput sweep", "Description": footer})  # PNG text chunk
    return path


def write_plots(points: pd.DataFrame, out_dir: Path, prov: dict[str, str], settings: str) -> list[Path]:
    """figure6.png (the three panels side by side) and one PNG per panel; the footer holds the
    settings and the provenance."""
    paths = [save_figure(points, PANELS, out_dir / "figure6.png", settings, prov)]
    for panel in PANELS:
        paths.append(save_figure(points, (panel,), out_dir / f"{panel[0]}_vs_batch.png", settings, prov))
    return paths


def write_report(points: pd.DataFrame, out_dir: str | Path, prov: dict[str, str], settings: str,
                 training: pd.DataFrame | None = None, timeline: pd.DataFrame | None = None,
                 wall_s: float | None = None) -> list[Path]:
    """points.csv, summary.csv, throughput.md (plus decode_split.csv for end-to-end points,
    training.csv with training-step rows, timeline.csv with the per-model phase times) and the
    plots under ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {"points": points, "summary": summary_table(points), "decode_split": decode_split(points),
              "training": training, "timeline": timeline}
    written = {name: t for name, t in tables.items() if t is not None and not t.empty}
    csvs = []
    for name, t in written.items():
        csvs.append(out_dir / f"{name}.csv")
        with_provenance(t, prov).to_csv(csvs[-1], index=False)
    md = write_markdown(points, written["summary"], out_dir / "throughput.md", prov, settings, written.get("training"),
                        written.get("decode_split"), written.get("timeline"), wall_s)
    return [*csvs, md, *write_plots(points, out_dir, prov, settings)]
