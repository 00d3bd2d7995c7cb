"""What lets a sweep or a bench resume: stable keys of configs and the result rows their FINISHED
child runs logged. Re-running the same command reopens the parent run with the same sweep key
(``nar_bench.tracking.mlflow.parent_run``) and keeps the points whose row is already there."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from nar_bench.tracking.mlflow import child_runs, client
from nar_bench.tracking.names import POINT_KEY_TAG, POINT_ROW

# settings that name where results go, not what is computed
OUTPUT_SETTINGS = ("tracking", "output_dir", "trainer.resume", "bench.output_dir")


def settings_without(cfg: DictConfig, drop: tuple[str, ...]) -> dict:
    """The resolved config as a dict, without the dotted keys in ``drop``."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        node = settings
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return settings


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def point_key(cfg: DictConfig) -> str:
    """Stable hash of everything that determines a point's result (training and evaluation)."""
    return digest(settings_without(cfg, ("sweep", *OUTPUT_SETTINGS)))


def sweep_key(cfg: DictConfig) -> str:
    """Stable hash of a sweep: its points' settings (after overrides and ``--only``) and the sweep itself."""
    return digest(settings_without(cfg, OUTPUT_SETTINGS))


def unfinished_points(tracking: DictConfig, parent_run_id: str) -> dict[str, Run]:
    """{point key: child run} of the children of ``parent_run_id`` that ended KILLED or FAILED (the
    newest per key): points of an earlier attempt to continue in their own runs."""
    runs = {}
    for run in child_runs(tracking, parent_run_id):  # oldest first: the newest of a key wins
        key = run.data.tags.get(POINT_KEY_TAG)
        if key is not None and run.info.status in ("KILLED", "FAILED"):
            runs[key] = run
    return runs


def finished_points(tracking: DictConfig, parent_run_id: str) -> dict[str, dict]:
    """{point key: result row} of the FINISHED child runs of ``parent_run_id`` (the latest per key)."""
    c = client(tracking)
    rows = {}
    for run in child_runs(tracking, parent_run_id):
        key = run.data.tags.get(POINT_KEY_TAG)
        if run.info.status != "FINISHED" or key is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = c.download_artifacts(run.info.run_id, POINT_ROW, tmp)
            except Exception:  # finished without its row (an older nar-bench): run it again
                continue
            rows[key] = json.loads(Path(path).read_text())
    return rows
