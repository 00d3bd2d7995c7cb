"""The metric registry: every quality metric nar-bench reports, declared once with what a reader
(tables, plots, MLflow names, best-variant tags) and a scorer need to know about it.

Registration order is display order. A metric's spread (``is_std``, ``kid_std``) is reported next
to it, not as a metric of its own. Scorers (``nar_bench.evaluation.scoring``) only ever return
registered names, their spreads and the bookkeeping keys in ``RECORD_KEYS``; a test holds them to it.

Speed records (``SPEEDS``: generate / decode / feature img/s, latency, peak memory, the wall time of
each phase) are what every evaluation also records about how fast it ran, with the unit each is in.
They are not quality metrics: never averaged into the metric summary or tagged best, but tabled and
plotted against quality (a sweep's quality-vs-throughput table and Pareto plot).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from nar_bench.registry import Registry

Direction = Literal["lower", "higher"]
# what a metric applies to: generated images, generated video clips, or class-conditional samples
DATA_KINDS = ("images", "video", "classes")
# what computing it needs
NEEDS = ("features", "reference_stats", "reference_features", "logits", "classifier")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str  # as a table header or plot title says it
    direction: Direction
    data: tuple[str, ...]
    needs: tuple[str, ...]
    spread: str | None = None  # name of its std column, if the metric reports one
    plot: bool = True  # drawn in the summary plot

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is better than ``b``."""
        return a < b if self.direction == "lower" else a > b


METRICS = Registry("metric")


def register_metric(name: str, label: str, direction: Direction, data: tuple[str, ...], needs: tuple[str, ...],
                    spread: str | None = None, plot: bool = True) -> MetricSpec:
    unknown = sorted({*data} - {*DATA_KINDS}) + sorted({*needs} - {*NEEDS})
    if direction not in ("lower", "higher") or unknown:
        raise ValueError(f"metric '{name}': direction {direction!r}, unknown data/needs {unknown}")
    spec = MetricSpec(name, label, direction, tuple(data), tuple(needs), spread, plot)
    METRICS.register(name)(spec)
    return spec


register_metric("fid", "FID", "lower", ("images",), ("features", "reference_stats"))
register_metric("sfid", "sFID", "lower", ("images",), ("features", "reference_stats"))
register_metric("is", "IS", "higher", ("images",), ("logits",), spread="is_std")
register_metric("precision", "precision", "higher", ("images",), ("features", "reference_features"))
register_metric("recall", "recall", "higher", ("images",), ("features", "reference_features"))
register_metric("kid", "KID", "lower", ("images",), ("features", "reference_features"), spread="kid_std", plot=False)
register_metric("f_score", "F-score (precision, recall)", "higher", ("images",), ("features", "reference_features"),
                plot=False)
register_metric("class_accuracy", "class accuracy", "higher", ("classes",), ("classifier",))
register_metric("fvd", "FVD", "lower", ("video",), ("features", "reference_stats"))

# What an evaluation records next to its metrics (not metrics: no direction, never summarised).
RECORD_KEYS = ("num_samples", "generate_seconds", "steps_per_image")  # steps: the decoding steps it ran


@dataclass(frozen=True)
class SpeedSpec:
    name: str
    label: str  # as a table header or axis says it
    unit: str
    direction: Direction


SPEEDS = Registry("speed record")


def register_speed(name: str, label: str, unit: str, direction: Direction) -> SpeedSpec:
    if name in METRICS or name in RECORD_KEYS:
        raise ValueError(f"speed record '{name}' is already a metric or record key")
    spec = SpeedSpec(name, label, unit, direction)
    SPEEDS.register(name)(spec)
    return spec


# Rates count the samples kept (a micro-batch's padding rows cost time but are not counted) over the
# steady-state seconds of their phase (setup excluded); on several devices, rank 0's own.
register_speed("generate_img_s", "generate", "img/s", "higher")
register_speed("decode_img_s", "decode", "img/s", "higher")
# the samples' features (ADM: the extraction's own seconds, overlapped with assembling the .npz), else the scoring
register_speed("feature_img_s", "features", "img/s", "higher")
register_speed("latency_s", "latency per batch", "s", "lower")  # median seconds of one micro-batch's generation
register_speed("peak_mem_gb", "peak GPU memory", "GiB", "lower")  # while generating (GPU only)
# engine copies, compilation, warm-up, graph capture (the generation's and the decoder's)
register_speed("setup_s", "setup", "s", "lower")
register_speed("compile_s", "compile", "s", "lower")  # torch.compile's part of setup_s
register_speed("generate_s", "generate time", "s", "lower")
register_speed("decode_s", "decode time", "s", "lower")  # with the copy to the host it overlaps (GPU)
# shards (+ PNGs) and the final .npz (ADM: with the features extracted meanwhile)
register_speed("write_s", "write time", "s", "lower")
register_speed("score_s", "score time", "s", "lower")  # features (unless extracted while writing) + metrics
register_speed("wall_s", "wall time", "s", "lower")  # the whole evaluation: generate_seconds + score_s


def metric_names() -> list[str]:
    """Registered metric names in display order."""
    return list(METRICS)


def spreads() -> dict[str, str]:
    """{spread column: its metric}, e.g. {"is_std": "is"}."""
    return {spec.spread: spec.name for spec in METRICS.values() if spec.spread}


def plotted() -> Iterator[MetricSpec]:
    return (spec for spec in METRICS.values() if spec.plot)


def speed_names() -> list[str]:
    """Registered speed records in display order."""
    return list(SPEEDS)


def check_reported(keys: list[str] | set[str], what: str) -> None:
    """Raises unless every key is a registered metric, a spread, a record key or a speed record (a
    scorer's contract)."""
    unknown = sorted(set(keys) - set(METRICS) - set(spreads()) - set(RECORD_KEYS) - set(SPEEDS))
    if unknown:
        raise ValueError(f"{what} returned unregistered metric(s) {unknown}: register them in "
                         "nar_bench/metrics/registry.py")
