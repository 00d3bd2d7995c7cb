"""The evaluation protocol: samples -> ``SampleStore`` -> features -> metrics, as used by
``nar-bench evaluate`` (``evaluate_checkpoint``: the number a paper would print), by sweeps and by
training's end-of-run evaluation (``evaluate``: a model in memory).

N class-balanced samples (label i % classes, noise from (seed, i), so identical for any device
count) go through ``Trainer.predict`` into resumable .npz shards (each rank writes the shards it
generates; rank 0 assembles the file) by the engine ``eval.engine`` resolves to, then the config's
scorer (``scorer_for``) scores them. Each evaluation also records how fast it ran, next to its
quality: the speed records of ``nar_bench.metrics.registry.SPEEDS`` (generate / decode / feature
img/s, latency, peak GPU memory, seconds per phase, compile seconds). While it generates, a tqdm bar
counts samples and the MLflow run gets ``progress/samples_done`` and ``progress/eta_s``. Call both
functions on every rank under DDP; ranks other than 0 get nothing back.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torch import Tensor

from nar_bench.config import merge
from nar_bench.errors import NarBenchError
from nar_bench.evaluation.samples import engine_settings, first_samples, generate_samples, sample_settings
from nar_bench.evaluation.scoring import Scorer, device, scorer_for
from nar_bench.images import save_samples
from nar_bench.lit.data import GeneratorDataModule
from nar_bench.lit.module import GeneratorModule
from nar_bench.lit.run_checkpoint import checkpoint_config, module_from_checkpoint, read_run_checkpoint
from nar_bench.lit.shard_sampling import Progress, class_balanced_labels
from nar_bench.lit.trainer import check_generator_inputs, check_inputs
from nar_bench.metrics.adm_npz import atomic_path, sha256_file
from nar_bench.metrics.registry import SPEEDS
from nar_bench.metrics.sample_store import settings_path
from nar_bench.paradigms.model_config import decode_settings
from nar_bench.tracking.lifecycle import run_end_status
from nar_bench.tracking.mlflow import log_artifact, make_logger, unfinished_run
from nar_bench.tracking.names import EVAL_KEY_TAG, EVAL_PREFIX, PROGRESS_PREFIX
from nar_bench.tracking.provenance import guard_output, provenance
from nar_bench.tracking.resume import digest

GRID_FILE = "eval_samples.png"  # .gif for video (save_samples picks the format)


def grid_rows(cfg: DictConfig, num_classes: int, num_samples: int) -> int:
    """Rows of the sample grid: eval.samples_per_class, at most what was generated, at least 1."""
    return max(1, min(cfg.eval.samples_per_class, num_samples // min(num_classes, 16)))


def write_artifacts(images: Tensor, per_class: pd.DataFrame | None, out_dir: Path, num_classes: int,
                    logger=None) -> list[Path]:
    """Sample grid (labels cycle, so its columns are the first classes) and the per-class accuracy
    table; logged to the logger's MLflow run if given."""
    paths = [save_samples(images, out_dir / GRID_FILE, min(num_classes, 16))]
    if per_class is not None:
        paths.append(out_dir / "per_class_accuracy.csv")
        per_class.to_csv(paths[-1])
    for path in paths:
        log_artifact(logger, path)
    return paths


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes): which weights made a set of
    samples when no checkpoint file names them (a model in memory), so that resumed or reused
    samples are never those of other weights (a training resumed to more steps)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def progress_to(logger) -> Progress | None:
    """Logs samples done and the ETA (from the mean time per sample so far) to the logger's MLflow
    run after each shard, with the samples done as the step."""
    if logger is None:
        return None

    def report(done: int, total: int, elapsed_s: float) -> None:
        eta = elapsed_s / done * (total - done) if done else float("nan")
        logger.log_metrics({PROGRESS_PREFIX + "samples_done": float(done), PROGRESS_PREFIX + "eta_s": eta}, step=done)

    return report


def score_timed(scorer: Scorer, path: Path, num_samples: int, generate_seconds: float,
                speed: dict[str, float]) -> tuple[dict[str, float], pd.DataFrame | None, dict[str, float]]:
    """(metrics, per-class table, speed records) of the samples at ``path``: ``speed`` (what
    generation recorded) plus score_s, feature_img_s and wall_s, in registry order."""
    start = time.perf_counter()
    metrics, per_class = scorer.score(path)
    score_s = time.perf_counter() - start
    # the samples' feature extraction, timed apart by the scorer (0: read from the cache, no rate),
    # else the whole scoring
    feature_s = scorer.feature_seconds if scorer.feature_seconds is not None else score_s
    speed = {**speed, "score_s": score_s, "wall_s": generate_seconds + score_s,
             "feature_img_s": num_samples / feature_s if feature_s > 0 else None}
    return metrics, per_class, {key: float(speed[key]) for key in SPEEDS if speed.get(key) is not None}


def generate_and_score(module: GeneratorModule, cfg: DictConfig, scorer: Scorer, num_samples: int, out: Path,
                       batch_size: int, settings: dict, png_dir: str | Path | None = None, logger=None,
                       ) -> tuple[Path, float, dict[str, float], pd.DataFrame | None, dict[str, float]] | None:
    """(samples file, seconds to generate it, metrics, per-class table, speed records) of
    ``generate_samples`` then ``score_timed``; the scorer observes the samples as they are assembled
    (``Scorer.streaming``). None on ranks other than 0."""
    start, speed = time.perf_counter(), {}
    with scorer.streaming() as observe:
        path = generate_samples(module, cfg, num_samples, out, batch_size, settings, png_dir,
                                progress=progress_to(logger), speed=speed, observe=observe)
        if path is None:
            return None
        seconds = time.perf_counter() - start
        return path, seconds, *score_timed(scorer, path, num_samples, seconds, speed)


def speed_line(speed: dict[str, float]) -> str:
    """E.g. "generate 1890 img/s, decode 1210 img/s, ..., wall time 42.1 s"."""
    return ", ".join(f"{SPEEDS[key].label} {value:.4g} {SPEEDS[key].unit}" for key, value in speed.items())


def evaluate(module: GeneratorModule, cfg: DictConfig, num_samples: int | None = None,
             batch_size: int | None = None, logger=None, out_dir: str | Path | None = None) -> dict[str, float]:
    """Generates ``num_samples`` (default eval.num_samples) class-balanced samples with
    cfg.eval.sampling, ``batch_size`` (default eval.batch_size) per device and batch, and returns
    their metrics (see ``scorer_for``) plus num_samples, generate_seconds and the speed records
    (``metrics.registry.SPEEDS``).

    The samples go to ``out_dir``/samples.npz when ``out_dir`` is given (else a temporary folder).
    With an MLflow ``logger`` (Lightning MLFlowLogger) the metrics are logged as ``eval/<name>``,
    with the sample grid and the per-class accuracy table as artifacts, and the progress while it
    generates (``progress_to``). Ranks other than 0 return {}.
    """
    num_samples = num_samples or cfg.eval.num_samples
    scorer = scorer_for(cfg)
    scorer.check()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        settings = sample_settings(cfg, module.num_classes, weights_sha256=weights_sha256(module),
                                   **decoding_settings(cfg))
        done = generate_and_score(module, cfg, scorer, num_samples, folder / "samples.npz",
                                  batch_size or cfg.eval.batch_size, settings, logger=logger)
        if done is None:
            return {}
        path, seconds, metrics, per_class, speed = done
        metrics.update(num_samples=float(num_samples), generate_seconds=seconds,
                       steps_per_image=float(module.paradigm.num_steps), **speed)
        grid = first_samples(path, min(module.num_classes, 16) * grid_rows(cfg, module.num_classes, num_samples))
        write_artifacts(grid, per_class, folder, module.num_classes, logger)
    if logger is not None:
        logger.log_metrics({EVAL_PREFIX + key: value for key, value in metrics.items()})
    return metrics


def generator_config(cfg: DictConfig, ckpt: str | Path, num_classes: int | None = None,
                     given: Mapping[str, str] | None = None) -> tuple[DictConfig, Mapping | None]:
    """(the evaluation's config, the checkpoint's content) for ``ckpt``. A nar-bench Lightning
    ``.ckpt`` fixes the model, geometry, tokenizer and classes: settings ``given`` by the user (see
    ``config.given_keys``; None: all of ``cfg``) that contradict it are one error, the others take
    its values. An official weights file is described by ``cfg`` (content None: read when built)."""
    path = Path(ckpt).expanduser()
    if path.suffix == ".ckpt" or path.is_dir():
        content = read_run_checkpoint(path, hint="pass a run's checkpoints/last.ckpt or an official weights file")
        return checkpoint_config(cfg, content, path, given, num_classes), content
    if not path.is_file():
        raise NarBenchError(f"checkpoint '{path}' not found; pass a nar-bench .ckpt or an official weights file")
    cfg = merge(cfg, {"model": {"checkpoint": str(path)}}, source="--ckpt")
    check_inputs(cfg)
    check_generator_inputs(cfg)
    return cfg, None


def load_generator(cfg: DictConfig, ckpt: str | Path, num_classes: int | None = None,
                   given: Mapping[str, str] | None = None) -> GeneratorModule:
    """A nar-bench Lightning ``.ckpt`` (architecture from the checkpoint, see ``generator_config``)
    or an official weights file loaded into the paradigm ``cfg`` describes (as ``model.checkpoint``);
    ``num_classes`` defaults to the checkpoint's, else the configured dataset's."""
    cfg, content = generator_config(cfg, ckpt, num_classes, given)
    return build_generator(cfg, ckpt, content, num_classes)


def decoding_settings(cfg: DictConfig) -> dict:
    """{"decode_options": {...}}: the values of the paradigm's decode-only options (defaults filled
    in), recorded with the samples, so one checkpoint decoded in two orders gets two keyed folders;
    {} for a paradigm without any (its keys stay as before)."""
    options = decode_settings(cfg.model)
    return {"decode_options": options} if options else {}


def build_generator(cfg: DictConfig, ckpt: str | Path, content: Mapping | None,
                    num_classes: int | None = None) -> GeneratorModule:
    if content is not None:
        return module_from_checkpoint(content, ckpt, cfg.model.options)
    return GeneratorModule(cfg, num_classes or GeneratorDataModule(cfg.data).num_classes)


def default_name(cfg: DictConfig, ckpt: str | Path, key: dict) -> str:
    """``eval-<paradigm>-<checkpoint stem>-<checkpoint hash>-<settings hash>``: two checkpoints named
    last.ckpt, or one at two CFG scales, never share a folder."""
    return f"eval-{cfg.model.paradigm}-{Path(ckpt).stem}-{key['settings']['checkpoint_sha256'][:8]}-{digest(key)[:8]}"


def same_samples(out: Path, key: dict) -> bool:
    """Whether ``out`` was assembled with ``key``'s settings (an evaluation killed while scoring:
    its samples are reused, see ``SampleStore.complete``)."""
    try:
        stored = json.loads(settings_path(out).read_text())
    except (OSError, ValueError):
        return False
    same = all(stored.get(k) == v for k, v in key["settings"].items())
    return same and stored.get("num_samples") == key["num_samples"]


def check_results_folder(results: Path, out: Path, key: dict, overwrite: bool) -> None:
    """Refuses (before the run opens) a results folder holding the evaluation of another checkpoint or
    other settings, and a samples file that is not this evaluation's, unless ``overwrite``; an
    unfinished evaluation with the same settings resumes from its shards."""
    guard_output(results, overwrite)
    guard_output(out, overwrite)
    if overwrite:
        return
    record_path = results / "eval.json"
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
    except (OSError, ValueError):
        record = {}
    same = record is not None and all(record.get(k) == v for k, v in key.items())
    if record is not None and not same:
        differing = [k for k in key["settings"] if record.get("settings", {}).get(k) != key["settings"][k]]
        differing += [k for k in ("num_samples", "reference") if record.get(k) != key[k]]
        raise NarBenchError(f"refusing to overwrite: '{results}' holds the evaluation of another checkpoint or other "
                            f"settings (differing: {', '.join(differing) if record else 'its eval.json is unreadable'}"
                            "); choose another --name (the default is keyed by checkpoint and settings) or pass "
                            "--overwrite")
    if out.exists() and not (same and record.get("samples") == str(out.resolve())) and not same_samples(out, key):
        raise NarBenchError(f"refusing to overwrite: '{out}' exists and is not this evaluation's samples (no "
                            f"{record_path} of the same checkpoint and settings); choose another --out or --name, or "
                            "pass --overwrite")


def evaluate_checkpoint(cfg: DictConfig, ckpt: str | Path, num_samples: int = 50_000, name: str | None = None,
                        out: str | Path | None = None, png_dir: str | Path | None = None,
                        num_classes: int | None = None, command: str | None = None,
                        given: Mapping[str, str] | None = None, overwrite: bool = False) -> dict | None:
    """Samples ``num_samples`` class-balanced images (or clips) from ``ckpt`` into an .npz (resumable
    shards), scores them (ADM's metrics against ``eval.reference`` for images, FVD for video) and
    writes ``<output_dir>/<name>/eval.json``. Everything is checked before the MLflow run opens: the
    checkpoint against the config (``generator_config``; ``given``: the keys the user set), the
    scorer's inputs, the class count and the output folder (``check_results_folder``). The run ends
    FINISHED with the record, FAILED on an error, KILLED on a signal. Returns the record on rank 0,
    None on other ranks."""
    if num_samples < 1:
        raise NarBenchError(f"--num-samples {num_samples}: evaluate at least one sample per class, e.g. "
                            "--num-samples 50000")
    cfg, content = generator_config(cfg, ckpt, num_classes, given)
    video = cfg.data.frames is not None
    if not cfg.eval.reference and not video:
        raise NarBenchError("eval.reference is not set: pass eval.reference=<ADM reference batch .npz> (e.g. "
                            "VIRTUAL_imagenet256_labeled.npz, or one built with `nar-bench reference`)")
    if png_dir and video:
        raise NarBenchError("--png-dir writes images; this config generates video clips: drop --png-dir")
    scorer = scorer_for(cfg)
    scorer.check()
    classes = int(content["hyper_parameters"]["num_classes"]) if content is not None else None
    classes = classes or num_classes or GeneratorDataModule(cfg.data).num_classes
    class_balanced_labels(num_samples, classes)  # an uneven N fails before the run opens
    ckpt_sha = sha256_file(ckpt)
    settings = sample_settings(cfg, classes, checkpoint_sha256=ckpt_sha, **decoding_settings(cfg))
    protocol = scorer.protocol()
    key = {"settings": settings, "num_samples": num_samples, "reference": protocol["reference"]}
    name = name or cfg.tracking.run_name or default_name(cfg, ckpt, key)
    results = Path(cfg.output_dir) / name.replace("/", "_")  # results/runs/<name> (git-ignored) by default
    out = Path(out) if out else results / "samples.npz"
    check_results_folder(results, out, key, overwrite)
    if png_dir:
        guard_output(png_dir, overwrite)
    module = build_generator(cfg, ckpt, content, classes)
    settings = {**settings, **engine_settings(module, cfg, cfg.eval.batch_size)}  # an engine that cannot run fails here
    eval_key = digest({"settings": settings, "num_samples": num_samples, "samples": str(out.resolve()),
                       "protocol": protocol})
    previous = unfinished_run(cfg.tracking, EVAL_KEY_TAG, eval_key) if rank_zero_only.rank == 0 else None
    if previous is not None:
        print(f"nar-bench: continuing evaluation '{name}' in its {previous.info.status} run {previous.info.run_id}",
              flush=True)
    logger = make_logger(cfg.tracking, name, tags={EVAL_KEY_TAG: eval_key},
                         run_id=previous.info.run_id if previous is not None else None)
    try:
        logger.log_hyperparams({"num_samples": num_samples, "seed": cfg.seed, "sampling": settings["sampling"],
                                "checkpoint": {"path": str(Path(ckpt).resolve()), "sha256": ckpt_sha},
                                "reference": protocol["reference"], "paradigm": cfg.model.paradigm,
                                "protocol": protocol["name"]})
        record = _evaluate_into(module, cfg, ckpt, num_samples, name, results, out, png_dir, settings, protocol,
                                scorer, logger, command)
    except BaseException as err:
        logger.end(run_end_status(err))
        raise
    logger.end("FINISHED")
    return record


def _evaluate_into(module: GeneratorModule, cfg: DictConfig, ckpt: str | Path, num_samples: int, name: str,
                   results: Path, out: Path, png_dir: str | Path | None, settings: dict, protocol: dict, scorer,
                   logger, command: str | None) -> dict | None:
    """Generate, score and record for :func:`evaluate_checkpoint`, inside its open MLflow run."""
    done = generate_and_score(module, cfg, scorer, num_samples, out, cfg.eval.batch_size, settings, png_dir, logger)
    if done is None:
        return None
    path, seconds, metrics, per_class, speed = done
    record = {
        "name": name, "metrics": metrics, "num_samples": num_samples, "seed": cfg.seed,
        "sampling": settings["sampling"], "settings": settings, "generate_seconds": seconds,
        "steps_per_image": module.paradigm.num_steps, "speed": speed,
        "checkpoint": {"path": str(Path(ckpt).resolve()), "sha256": settings["checkpoint_sha256"]},
        "protocol": protocol, "reference": protocol["reference"],
        "samples": str(path.resolve()),
        "provenance": provenance(command, device(cfg)),
        "mlflow_run_id": logger.run_id,
    }
    logged = {**metrics, **speed, "steps_per_image": record["steps_per_image"]}
    logger.log_metrics({EVAL_PREFIX + key: value for key, value in logged.items()})
    results.mkdir(parents=True, exist_ok=True)
    grid = first_samples(path, min(module.num_classes, 16) * grid_rows(cfg, module.num_classes, num_samples))
    write_artifacts(grid, per_class, results, module.num_classes, logger)
    with atomic_path(results / "eval.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    log_artifact(logger, results / "eval.json")
    return record
