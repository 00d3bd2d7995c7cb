"""``nar-bench sweep``: every point of a config's sweep under one MLflow parent run, each point =
train + evaluate in its own MLflow child run.

Points whose configs differ only in ``eval.*`` (e.g. a CFG-scale grid) or in the paradigm's
decode-only options (``Paradigm.decode_options``: e.g. a decoding order or step count) share one
training: those are sampling-time settings, so retraining per value would only add training noise
and cost. The first such point trains in its child run; the others evaluate the same in-memory
weights (rebuilt with their own decode options) in their own child runs, tagged with the id of the
run that trained it. Points run grouped by training, and only the model of the current group is
kept in memory.

Sweeps resume: re-running the same command (same config, overrides and ``--only``: the same sweep
key) reopens the parent run, keeps the points whose child run FINISHED with the same point key
(tag ``nar_bench.point_key``), continues those whose child run was KILLED or FAILED in that run
(training from its last.ckpt, evaluation from its shards), runs the others in new child runs and
reports over all points; ``--fresh`` starts a new parent run.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from nar_bench.config import expand_sweep
from nar_bench.errors import NarBenchError
from nar_bench.evaluation import evaluate
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.progress import point_line
from nar_bench.lit.trainer import check_sweep_inputs, uses_gpu
from nar_bench.registry import PARADIGMS
from nar_bench.run.train import ResumePoint, finish_run, fit
from nar_bench.tracking.lifecycle import check_interrupted, run_end_status
from nar_bench.tracking.mlflow import client, make_logger, parent_run
from nar_bench.tracking.names import (
    POINT_KEY_TAG,
    POINT_TAG,
    RUN_DIR_TAG,
    SEED_TAG,
    SWEEP_POINTS_PARAM,
    TRAINED_IN_TAG,
    TRAINING_KEY_TAG,
    VARIANT_TAG,
)
from nar_bench.tracking.resume import (
    OUTPUT_SETTINGS,
    POINT_ROW,
    finished_points,
    point_key,
    settings_without,
    sweep_key,
    unfinished_points,
)
from nar_bench.tracking.sharing import POLL_S, SharedSweep

# (point name, point config, parent run id) -> one result row; the function opens the child run
RunPoint = Callable[[str, DictConfig, str], dict]
# (result table, parent run id): writes the report and logs it to the parent before the parent ends
FinishSweep = Callable[[pd.DataFrame, str], None]

SUMMARY_COLUMNS = ("paradigm", "size", "params_M", "steps_per_image", "train_steps", "train_loss", "val_loss",
                   "device")


def training_key(cfg: DictConfig) -> str:
    """Everything that determines the trained weights: the config without eval / tracking / output
    and without the paradigm's decode-only options."""
    decode = tuple(f"model.options.{key}" for key in PARADIGMS[cfg.model.paradigm].decode_options)
    return json.dumps(settings_without(cfg, ("eval", "sweep", *OUTPUT_SETTINGS, *decode)), sort_keys=True)


def decoding_module(module: GeneratorModule, cfg: DictConfig) -> GeneratorModule:
    """``module`` itself when it decodes with ``cfg``'s model options, else the same weights in a
    module built from ``cfg`` (a point of the training group with other decode-only options)."""
    if OmegaConf.to_container(module.cfg.model.options) == OmegaConf.to_container(cfg.model.options):
        return module
    decoder = GeneratorModule(cfg, module.num_classes, load_initial_weights=False)
    decoder.load_state_dict(module.state_dict())
    return decoder.to(module.device)


def varying_params(points: list[tuple[str, DictConfig]]) -> list[str]:
    """The flattened config settings (``cfg/model/paradigm``, as Lightning names the params) whose
    values differ between the sweep's points: a child run logs only these as params, the rest of its
    config is in its config.yaml (84 identical params per child hid what the sweep compares)."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    values: dict[str, list[str]] = {}
    for _, cfg in points:
        flat = _flatten_dict(_convert_params({"cfg": OmegaConf.to_container(cfg, resolve=True)}))
        for key, value in flat.items():
            if not key.startswith(("cfg/sweep/", "cfg/tracking/")):
                values.setdefault(key, []).append(str(value))
    # a key some points lack (a paradigm option set by one variant) varies too
    return sorted(key for key, seen in values.items() if len(set(seen)) > 1 or len(seen) < len(points))


def point_columns(name: str, cfg: DictConfig, grid_keys: list[str]) -> dict:
    """variant, seed and one column per grid key (short name, as in the point name)."""
    columns = {"variant": name.split("/")[0], "seed": cfg.seed}
    columns.update({key.split(".")[-1]: OmegaConf.select(cfg, key) for key in grid_keys})
    return columns


def _malloc_trim() -> None:
    """Hands the freed heap back to the OS (glibc keeps it otherwise, and the next training's peak
    would add to it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass
class Trained:
    """A trained model the next points of its training group evaluate."""

    module: GeneratorModule
    run_id: str
    run_dir: Path
    summary: dict


@dataclass
class FinishedTraining:
    """A training a FINISHED point of an earlier attempt of this sweep logged (to resume from)."""

    run_id: str
    checkpoint: Path
    summary: dict


def point_tags(name: str, cfg: DictConfig, grid_keys: list[str], training: str) -> dict[str, str]:
    """Tags that find a point's child run again (report, resume), set when the run opens."""
    tags = {VARIANT_TAG: name.split("/")[0], SEED_TAG: str(cfg.seed), POINT_KEY_TAG: point_key(cfg),
            TRAINING_KEY_TAG: hashlib.sha256(training.encode()).hexdigest()[:16]}
    tags.update({POINT_TAG + k.split(".")[-1]: str(OmegaConf.select(cfg, k)) for k in grid_keys})
    return tags


def completed_training(run: Run, cfg: DictConfig) -> FinishedTraining | None:
    """The training of an unfinished point's run if it got to the end (last.ckpt and summary.csv of
    ``trainer.max_steps`` steps in its folder: it was killed while evaluating), else None."""
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir or not (Path(run_dir) / "summary.csv").is_file():
        return None
    summary = pd.read_csv(Path(run_dir) / "summary.csv").iloc[0].to_dict()
    checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt"
    if summary.get("train_steps") != cfg.trainer.max_steps or not checkpoint.is_file():
        return None
    return FinishedTraining(run.info.run_id, checkpoint, {k: summary.get(k) for k in SUMMARY_COLUMNS})


class TrainAndEvaluate:
    """run_point for :func:`run_sweep`; one result row per point (rank 0; {} elsewhere).

    Holds at most one trained model: the one of the current training group (run_sweep runs the
    points of a group one after another); it is freed when the next group starts.

    A point whose child run of an earlier attempt ended KILLED or FAILED (``unfinished``) continues
    in that run: its training from the run's last.ckpt (or not at all if it had ended), its
    evaluation from the shards it wrote."""

    def __init__(self, sweep_cfg: DictConfig):
        self.grid_keys = list(sweep_cfg.sweep.grid)
        self.param_keys = varying_params(expand_sweep(sweep_cfg))  # the rest is in each child's config.yaml
        self.trained: dict[str, Trained] = {}
        self.finished: dict[str, FinishedTraining] = {}  # training_key -> training of a resumed sweep
        self.unfinished: dict[str, Run] = {}  # point key -> its KILLED / FAILED child run

    def release(self) -> None:
        """Frees the held model (and what Lightning attached to it) before the next group trains."""
        for trained in self.trained.values():
            trained.module.trainer = None
        self.trained.clear()
        gc.collect()
        _malloc_trim()

    def reuse_finished(self, rows: list[dict], configs: list[DictConfig]) -> None:
        """Trainings of points that FINISHED in an earlier attempt, to evaluate the group's other points
        with (from the run's last.ckpt) instead of training again."""
        for row, cfg in zip(rows, configs, strict=True):
            run_dir = row.get("run_dir")
            if row.get("trained_in_run") == row.get("mlflow_run_id") and run_dir:
                checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt"
                if checkpoint.is_file():
                    summary = {k: row.get(k) for k in SUMMARY_COLUMNS}
                    self.finished[training_key(cfg)] = FinishedTraining(row["mlflow_run_id"], checkpoint, summary)

    def train(self, name: str, cfg: DictConfig, parent_run_id: str, key: str, tags: dict[str, str],
              previous: Run | None):
        """(model, its training run's id, run folder, training summary; logger of this point's run,
        ``previous`` reopened if given)."""
        own = previous is not None and TRAINED_IN_TAG not in previous.data.tags  # it trained its model itself
        if own and key not in self.trained and key not in self.finished:
            done = completed_training(previous, cfg)
            if done is not None:
                self.finished[key] = done
            else:  # continue its training, in its run and folder
                run_dir = previous.data.tags.get(RUN_DIR_TAG)
                checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir else None
                resume = ResumePoint(previous.info.run_id, checkpoint if checkpoint and checkpoint.is_file() else None)
                return self.fit_point(name, cfg, parent_run_id, key, tags, resume)
        if key in self.trained:
            trained = self.trained[key]
        elif key in self.finished:
            done = self.finished[key]
            module = GeneratorModule.load_from_checkpoint(done.checkpoint, map_location="cpu")
            trained = self.trained[key] = Trained(module, done.run_id, done.checkpoint.parent.parent, done.summary)
        else:
            return self.fit_point(name, cfg, parent_run_id, key, tags)
        run_id = previous.info.run_id if previous is not None else None
        if trained.run_id != run_id:
            tags = {**tags, TRAINED_IN_TAG: trained.run_id}
        logger = make_logger(cfg.tracking, name, parent_run_id, tags=tags, run_id=run_id, param_keys=self.param_keys)
        logger.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True),
                                "num_classes": trained.module.num_classes})
        return trained, logger

    def fit_point(self, name: str, cfg: DictConfig, parent_run_id: str, key: str, tags: dict[str, str],
                  resume: ResumePoint | None = None):
        """Trains the point's model in its run (a new one, or ``resume``); keeps it for its group."""
        run = fit(cfg, name, parent_run_id, tags, resume, self.param_keys)
        try:
            summary = finish_run(cfg, run.module, run.trainer, run.logger, run.run_dir, name) \
                if rank_zero_only.rank == 0 else {}
        except BaseException as err:
            run.logger.end(run_end_status(err))
            raise
        run.module.trainer = None  # the Trainer holds optimizer state and data loaders: free them
        self.trained[key] = Trained(run.module, run.logger.run_id or "", run.run_dir, summary)
        return self.trained[key], run.logger

    def __call__(self, name: str, cfg: DictConfig, parent_run_id: str) -> dict:
        key, rank_zero = training_key(cfg), rank_zero_only.rank == 0
        if key not in self.trained:
            self.release()
        previous = self.unfinished.pop(point_key(cfg), None)
        if previous is not None:
            print(f"nar-bench: continuing point '{name}' in its {previous.info.status} run {previous.info.run_id}",
                  flush=True)
        trained, logger = self.train(name, cfg, parent_run_id, key, point_tags(name, cfg, self.grid_keys, key),
                                     previous)
        columns = point_columns(name, cfg, self.grid_keys)
        try:
            module = decoding_module(trained.module, cfg)
            metrics = evaluate(module, cfg, logger=logger, out_dir=trained.run_dir / "eval" / name.replace("/", "_"))
            module.trainer = trained.module.trainer = None  # evaluation's predict Trainer holds the gathered samples
            row = {}
            if rank_zero:
                # metrics last: their steps_per_image is what this point decoded in (its decode options),
                # not the training summary's
                row = {**columns, **{k: trained.summary.get(k) for k in SUMMARY_COLUMNS}, **metrics,
                       "mlflow_run_id": logger.run_id, "trained_in_run": trained.run_id}
                self.record(logger, {**row, "run_dir": str(trained.run_dir)})
        except BaseException as err:
            logger.end(run_end_status(err))
            raise
        logger.end("FINISHED")
        return row

    def record(self, logger, row: dict) -> None:
        """The folder of the point's model (tag) and its result row, as an artifact."""
        logger.experiment.set_tag(logger.run_id, RUN_DIR_TAG, row["run_dir"])
        logger.experiment.log_dict(logger.run_id, row, POINT_ROW)


def training_groups(points: list[tuple[str, DictConfig]]) -> list[int]:
    """Indices of ``points`` with the points of one training consecutive, groups in first-seen order
    (a grid over eval.* with several seeds would otherwise alternate between trainings)."""
    first: dict[str, int] = {}
    keys = [first.setdefault(training_key(cfg), i) for i, (_, cfg) in enumerate(points)]
    return sorted(range(len(points)), key=lambda i: (keys[i], i))


def multi_process(cfg: DictConfig) -> bool:
    """Whether training may run in several processes (DDP): only rank 0 sees the parent run, so the
    ranks could not agree on which points to skip."""
    t = cfg.trainer
    all_gpus = str(t.devices) in ("auto", "-1") and uses_gpu(t) and torch.cuda.device_count() > 1
    return t.num_nodes > 1 or all_gpus or str(t.devices) not in ("1", "auto", "[0]")


def run_sweep(cfg: DictConfig, run_point: RunPoint, name: str, fresh: bool = False,
              finish: FinishSweep | None = None) -> pd.DataFrame:
    """Expands ``cfg.sweep``, runs each point not already FINISHED in this sweep's parent run (all of
    them when ``fresh``), calls ``finish`` with the table of all points (one row each, in sweep order)
    and returns it. A failed sweep returns nothing; its parent run ends FAILED (KILLED on a signal).

    The same sweep started again while it runs joins it (``nar_bench.tracking.sharing``): each
    training group runs in one process, the others wait for its rows."""
    points = expand_sweep(cfg)
    check_sweep_inputs(points)  # every point's inputs, before the first one trains
    params = {SWEEP_POINTS_PARAM: len(points), "sweep": OmegaConf.to_yaml(cfg.sweep)[:5000]}
    with parent_run(cfg.tracking, name, params, key=sweep_key(cfg), fresh=fresh, join=True) as parent_id:
        shared = SharedSweep(cfg.tracking, parent_id) if parent_id and not multi_process(cfg) else None
        rows: dict[int, dict] = {}

        def read_back() -> int:
            """Rows of points FINISHED in the parent run (earlier attempts, other processes); the
            point runs of KILLED / FAILED attempts to continue in. Returns the number of new rows."""
            done = finished_points(cfg.tracking, parent_id)
            new = {i: {"point": point_name, **done[point_key(point_cfg)]} for i, (point_name, point_cfg)
                   in enumerate(points) if i not in rows and point_key(point_cfg) in done}
            rows.update(new)
            if isinstance(run_point, TrainAndEvaluate):
                run_point.reuse_finished(list(new.values()), [points[i][1] for i in new])
                run_point.unfinished = unfinished_points(cfg.tracking, parent_id)
            return len(new)

        if shared is not None and read_back():
            print(f"nar-bench: {len(rows)} of {len(points)} points already finished in this sweep; "
                  "running the others (--fresh starts over)", flush=True)
        groups: dict[str, list[int]] = {}
        for i in training_groups(points):
            if i not in rows:
                groups.setdefault(training_key(points[i][1]), []).append(i)
        start, ran, total = time.perf_counter(), 0, sum(map(len, groups.values()))
        pending, said = list(groups), ""
        while pending:
            check_interrupted()  # a Ctrl-C whose KeyboardInterrupt was lost stops the sweep here
            key, claim = shared.next_claim(pending) if shared is not None else (pending[0], "new")
            if key is None:  # every group left is running in another process: wait for its rows
                line = shared.waiting_line(pending)
                if line != said:
                    print(line, flush=True)
                    said = line
                time.sleep(POLL_S)
                read_back()
                pending = [key for key in pending if any(i not in rows for i in groups[key])]
                continue
            pending.remove(key)
            if claim == "taken over":  # its process died: continue its runs as in a resumed sweep
                shared.mark_dead_children_killed()
                read_back()
            for i in groups[key]:
                if i in rows:
                    continue
                point_name, point_cfg = points[i]
                ran += 1
                if rank_zero_only.rank == 0:
                    print(point_line(ran, total, point_name, time.perf_counter() - start), flush=True)
                rows[i] = {"point": point_name, **run_point(point_name, point_cfg, parent_id)}
                check_interrupted()
        if isinstance(run_point, TrainAndEvaluate):
            run_point.release()
        check_interrupted()
        table = pd.DataFrame([{k: v for k, v in rows[i].items() if k != "run_dir"} for i in range(len(points))])
        if finish is not None:
            finish(table, parent_id)
    return table


def select_variants(cfg: DictConfig, only: str | None) -> DictConfig:
    """``cfg`` with just the sweep variants named in the comma-separated ``only``."""
    if not only:
        return cfg
    names = [name.strip() for name in only.split(",")]
    known = [variant.get("name") for variant in cfg.sweep.variants]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise NarBenchError(f"--only: no sweep variant named {', '.join(unknown)}; "
                            f"variants: {', '.join(map(str, known))}")
    cfg = copy.deepcopy(cfg)
    cfg.sweep.variants = [variant for variant in cfg.sweep.variants if variant.get("name") in names]
    return cfg


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config
    from nar_bench.tracking.parent_summary import log_sweep_summary
    from nar_bench.tracking.provenance import provenance
    from nar_bench.tracking.report import write_report

    cfg = select_variants(args.cfg or load_config(args.config, args.overrides), args.only)
    name = cfg.tracking.run_name or Path(args.config).stem
    grid = [key.split(".")[-1] for key in cfg.sweep.grid]
    out = args.out or Path("results") / Path(args.config).stem

    def finish(table: pd.DataFrame, parent_id: str) -> None:
        if rank_zero_only.rank != 0:
            return
        info = provenance(args.command_line, experiment=cfg.tracking.experiment, parent_run=parent_id,
                          extractor=cfg.eval.extractor)
        Path(out).mkdir(parents=True, exist_ok=True)
        with FileLock(str(Path(out) / ".report.lock")):  # processes sharing the sweep write its report in turn
            paths = write_report(table, grid, out, info)
            log_sweep_summary(client(cfg.tracking), parent_id, pd.read_csv(paths["summary_csv"]),
                              ["variant", *grid], list(paths.values()))
        print("\n".join(str(path) for path in paths.values()))

    run_sweep(cfg, TrainAndEvaluate(cfg), name, fresh=getattr(args, "fresh", False), finish=finish)
