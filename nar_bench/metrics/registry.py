"""The metric registry: every quality metric nar-bench reports, declared once with what a reader
(tables, plots, MLflow names, best-variant tags) and a scorer need to know about it.

Registration order is display order. A metric's spread (``is_std``, ``kid_std``) is reported next
to it, not as a metric of its own. Scorers (``nar_bench.evaluation.scoring``) only ever return
registered names, their spreads and the bookkeeping keys in ``RECORD_KEYS``; a test holds them to it.
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
RECORD_KEYS = ("num_samples", "generate_seconds")


def metric_names() -> list[str]:
    """Registered metric names in display order."""
    return list(METRICS)


def spreads() -> dict[str, str]:
    """{spread column: its metric}, e.g. {"is_std": "is"}."""
    return {spec.spread: spec.name for spec in METRICS.values() if spec.spread}


def plotted() -> Iterator[MetricSpec]:
    return (spec for spec in METRICS.values() if spec.plot)


def check_reported(keys: list[str] | set[str], what: str) -> None:
    """Raises unless every key is a registered metric, a spread or a record key (a scorer's contract)."""
    unknown = sorted(set(keys) - set(METRICS) - set(spreads()) - set(RECORD_KEYS))
    if unknown:
        raise ValueError(f"{what} returned unregistered metric(s) {unknown}: register them in "
                         "nar_bench/metrics/registry.py")
