"""Throughput sweep (``nar-bench bench``): paradigm x model size x batch size with random weights.

Each model of ``bench.points`` is built through the registry, given random weights and measured
with the efficiency protocol at ascending batch sizes until one runs out of GPU memory (recorded
as the model's limit). One MLflow parent run ("throughput-sweep") holds a child run per point; the
tables and plots go to ``bench.output_dir`` and are logged to the parent run.

A bench resumes like a sweep: each model, once measured (points, profile, training rows and the
wall time of its phases), logs its rows on a child run ``<model>/rows``; re-running the same
command on the same GPU model at the same commit reopens the parent run and keeps those models, so
a sweep stopped by a time limit or a crash measures only what is missing. ``--fresh`` re-measures
everything.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from nar_bench.bench.report import write_report
from nar_bench.config import merge
from nar_bench.errors import NarBenchError
from nar_bench.metrics.cost_model import Ceilings, Cost, generation_cost, measure_ceilings
from nar_bench.metrics.efficiency import (
    DTYPES,
    inference_decoder,
    inference_dtype,
    measure_batch_sizes,
    profile_generation,
    randomize_weights,
    release_decode_state,
    reset_device_memory,
)
from nar_bench.metrics.training_throughput import measure_training_step
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms import build_paradigm
from nar_bench.paradigms.model_config import check_model
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tokenizers.base import CodeSpace
from nar_bench.tracking.mlflow import PARENT_TAG, client, create_run, experiment_id, parent_run
from nar_bench.tracking.provenance import guard_output, provenance, provenance_line, write_provenance
from nar_bench.tracking.resume import POINT_KEY_TAG, POINT_ROW, digest, finished_points, point_key, sweep_key

log = logging.getLogger(__name__)

SWEEP_NAME = "throughput-sweep"
RUN_PARAMS = ("model", "paradigm", "size", "params", "steps", "batch_size", "dtype", "cfg", "cfg_scale", "top_k",
              "top_p", "tokenizer_decode", "cuda_graph", "compiled", "device", "status")
RUN_METRICS = ("latency_s", "throughput_img_s", "peak_mem_gb", "setup_s", "compile_s", "gflop_per_image", "tflops_s",
               "gbps", "floor_pct")


def check_bench(bench: DictConfig) -> None:
    """Fails on bad bench settings before any run is opened."""
    if bench.dtype not in DTYPES:
        raise NarBenchError(f"unknown bench.dtype '{bench.dtype}'; choose one of: {', '.join(DTYPES)}")
    if not bench.batch_sizes or min(bench.batch_sizes) < 1:
        raise NarBenchError(f"bench.batch_sizes must be positive integers; got {list(bench.batch_sizes)}")
    if bench.warmup < 0 or bench.repeats < 1:
        raise NarBenchError(f"need bench.warmup >= 0 and bench.repeats >= 1; got {bench.warmup}, {bench.repeats}")
    if bench.include_decode and bench.vocab_size is not None:
        raise NarBenchError("bench.include_decode times the tokenizer's decode, which needs the real tokenizer; "
                            "set bench.vocab_size=null")


def point_label(point: DictConfig) -> str:
    if point.name:
        return point.name
    options = "".join(f"-{key}{value}" for key, value in point.options.items())
    return f"{point.paradigm}-{point.size}{options}"


def bench_points(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(label, experiment config) of each model in ``bench.points`` (the configured model when the
    list is empty), each validated up front: an unknown paradigm, size or option is one error naming
    the point, before any run is opened."""
    points = list(cfg.bench.points) or [OmegaConf.create({
        "name": None, "paradigm": cfg.model.paradigm, "size": cfg.model.size, "options": cfg.model.options,
        "overrides": []})]
    out = []
    for point in points:
        label = point_label(point)
        if point.paradigm not in PARADIGMS:
            raise NarBenchError(f"bench point '{label}': unknown paradigm '{point.paradigm}'; choose one of: "
                                f"{', '.join(sorted(PARADIGMS))}")
        base = copy.deepcopy(cfg)
        base.model.options = {}  # the point's options replace the configured model's
        model = {"paradigm": point.paradigm, "size": point.size, "options": OmegaConf.to_container(point.options)}
        point_cfg = merge(base, {"model": model}, OmegaConf.from_dotlist(list(point.overrides)),
                          source=f"bench point '{label}'")
        check_model(point_cfg.model)
        check_bench(point_cfg.bench)
        out.append((label, point_cfg))
    return out


def bench_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NarBenchError(f"bad bench.device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NarBenchError("bench.device is cuda but no CUDA GPU is available; use bench.device=cpu")
    return device


def bench_tokenizer(cfg: DictConfig) -> tuple[nn.Module | None, CodeSpace]:
    """(tokenizer, code space): the configured tokenizer and its codes, or for token-only timing
    at ``bench.vocab_size`` no tokenizer and raster codes of that vocabulary over a data.grid_size
    square grid, with data.frames in front for video (T x H x W): paper-size vocabularies are timed
    without the tokenizer's weights."""
    if cfg.bench.vocab_size is None:
        tokenizer = build_tokenizer(cfg)
        return tokenizer, tokenizer.code_space
    grid = (cfg.data.grid_size, cfg.data.grid_size)
    return None, CodeSpace(cfg.bench.vocab_size, (cfg.data.frames, *grid) if cfg.data.frames else grid)


def settings_line(cfg: DictConfig) -> str:
    b, s = cfg.bench, SamplingConfig(**cfg.eval.sampling)
    cfg_text = f"CFG on (scale {s.cfg_scale:g})" if s.uses_cfg else "CFG off"
    return (f"{b.dtype}, {cfg_text}, top-k {s.top_k}, top-p {s.top_p:g} (per-model overrides in the table), "
            f"{'tokens + tokenizer decode' if b.include_decode else 'tokens only'}, "
            f"{'compiled, ' if b.compile else ''}{'CUDA graph' if b.cuda_graph else 'eager'}, "
            f"median of {b.repeats} after {b.warmup} warm-up, random weights")


def log_point(mlflow: MlflowClient, exp_id: str, parent_id: str, row: dict) -> None:
    """One child run under the sweep's parent run: the point's settings as params, its timings as
    metrics (none for an out-of-memory point)."""
    run = create_run(mlflow, exp_id, f"{row['model']}/bs={row['batch_size']}",
                     tags={PARENT_TAG: parent_id, "status": row["status"]})
    now = int(time.time() * 1000)
    params = [Param(key, str(row[key])) for key in RUN_PARAMS]
    metrics = [Metric(key, float(row[key]), now, 0) for key in RUN_METRICS if row[key] is not None]
    mlflow.log_batch(run.info.run_id, metrics=metrics, params=params)
    mlflow.set_terminated(run.info.run_id)


def bench_key(cfg: DictConfig, prov: dict[str, str]) -> str:
    """Sweep key of a bench: its settings on this GPU model at this commit, so a resumed bench only
    keeps models measured by the same code on the same kind of device."""
    return digest({"sweep": sweep_key(cfg), "device": prov["device"], "commit": prov["commit"]})


def record_model(mlflow: MlflowClient, exp_id: str, parent_id: str, label: str, key: str, rows: dict) -> None:
    """The measured model's rows (points, training, profile text) on a FINISHED child run, where a
    resumed bench reads them back."""
    run = create_run(mlflow, exp_id, f"{label}/rows", tags={PARENT_TAG: parent_id, POINT_KEY_TAG: key})
    mlflow.log_dict(run.info.run_id, rows, POINT_ROW)
    mlflow.set_terminated(run.info.run_id)


def point_cost(paradigm: nn.Module, sampling: SamplingConfig, dtype: str, tokenizer: nn.Module | None = None,
               include_decode: bool = False) -> Cost:
    """FLOPs and floor bytes of a point, counted on the eager engine (the maths, not the kernels)
    with the weights in the point's dtype, since its bytes depend on it. The tokenizer's weights
    count as fixed operands (VAR reads them while generating); ``include_decode`` adds its eager
    decode of the codes (the fast decoder pads a one-image chunk to two, which would count twice)."""
    paradigm.to(dtype=inference_dtype(dtype))
    decode = tokenizer.decode if include_decode else None
    return generation_cost(paradigm, sampling, decode, decoder=tokenizer)


@dataclass
class ModelRecord:
    """What a model's measurement leaves besides its points: training-step rows and the wall time
    of each phase (what a sweep's minutes went on)."""

    label: str
    training: list[dict] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[f"{name}_s"] = self.phases.get(f"{name}_s", 0.0) + time.perf_counter() - start

    def timeline_row(self) -> dict:
        return {"model": self.label, **self.phases, "total_s": sum(self.phases.values())}


def bench_model(label: str, cfg: DictConfig, device: torch.device, prov: dict[str, str],
                ceilings: Ceilings | None = None, record: ModelRecord | None = None) -> Iterator[dict]:
    """Result rows of one model at ascending batch sizes, up to and including its OOM point; with
    ``bench.train_batch`` the training-step rows of the same model go to ``record.training``, and
    the wall time of each phase (build, cost, points, profile, training) to ``record.phases``."""
    bench = cfg.bench
    record = record or ModelRecord(label)
    with record.phase("build"):
        reset_device_memory(device)  # this model's peak must not include the previous model's leftovers
        torch.manual_seed(cfg.seed)
        tokenizer, codes = bench_tokenizer(cfg)
        paradigm = build_paradigm(cfg, codes, bench.num_classes).to(device)
        randomize_weights(paradigm)
        if tokenizer is not None:
            tokenizer.to(device).eval()  # paradigms like VAR use it while generating
        sampling = SamplingConfig(**cfg.eval.sampling)
        compile_decoder = bench.compile if bench.compile_decoder is None else bench.compile_decoder
        decode_fn = inference_decoder(tokenizer, bench.dtype, compile_decoder) if bench.include_decode else None
    cost = None
    if bench.roofline:
        with record.phase("cost"):
            try:
                cost = point_cost(paradigm, sampling, bench.dtype, tokenizer, bench.include_decode)
            except torch.cuda.OutOfMemoryError:
                log.warning("no roofline columns for '%s': counting its cost ran out of memory", label)
                release_decode_state(paradigm)
    protocol = {"dtype": bench.dtype, "warmup": bench.warmup, "repeats": bench.repeats, "device": device,
                "decode_fn": decode_fn, "cuda_graph": bench.cuda_graph, "compile": bench.compile,
                "size": cfg.model.size, "seed": cfg.seed, "cost": cost, "ceilings": ceilings}
    sampling_cols = {"cfg_scale": sampling.cfg_scale, "top_k": sampling.top_k, "top_p": sampling.top_p}
    profile_path(bench.output_dir, label).unlink(missing_ok=True)  # no stale profile if this one is skipped
    fits, best = 0, None
    points = measure_batch_sizes(paradigm, bench.batch_sizes, sampling, **protocol)
    while True:
        with record.phase("points"):
            result = next(points, None)
        if result is None:
            break
        if result.status == "ok":
            fits = max(fits, result.batch_size)
            best = result if best is None or result.throughput_img_s > best.throughput_img_s else best
        yield {"model": label, **asdict(result), **sampling_cols}
    if bench.profile_batch > fits:
        log.warning("no profile for '%s': batch %d is above the largest that fits (%d)", label, bench.profile_batch,
                    fits)
    profiled = [bench.profile_batch] if 0 < bench.profile_batch <= fits else []
    if bench.profile_best and best is not None and best.batch_size not in profiled:
        profiled.append(best.batch_size)
    if profiled:
        with record.phase("profile"):
            tables = []
            for batch in profiled:
                # no warm-up run when the sweep has just run this model at that batch size
                warm = batch in bench.batch_sizes
                table = profile_generation(paradigm, batch, sampling, bench.dtype, device=device,
                                           decode_fn=protocol["decode_fn"], warmup=0 if warm else 1)
                tables.append(f"## batch {batch}\n\n{table}\n")
            path = profile_path(bench.output_dir, label)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {label}, batch {' and '.join(map(str, profiled))}, {settings_line(cfg)}\n"
                            f"# {provenance_line(prov)}\n" + "\n".join(tables))
    if bench.train_batch > 0:
        with record.phase("training"):
            record.training.extend(training_rows(label, paradigm, bench, device))


def training_rows(label: str, paradigm: nn.Module, bench: DictConfig, device: torch.device) -> list[dict]:
    """Images/s of a bf16 training step per masked-attention path in ``bench.train_attention``
    (FlexAttention only on a GPU, where the paradigm trains under a mask on the LLaMA backbone)."""
    flex = device.type == "cuda" and paradigm.flex_attention_training  # FlexAttention trains on GPUs only
    paths = [a for a in bench.train_attention if a == "dense" or (a == "flex" and flex)]
    rows = []
    for attention in paths:
        result = measure_training_step(paradigm, bench.train_batch, attention=attention, device=device)
        rows.append({"model": label, **asdict(result)})
    return rows


def profile_path(output_dir: str, label: str) -> Path:
    return Path(output_dir) / f"profile_{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.txt"


def eager_on_cpu(cfg: DictConfig, device: torch.device) -> DictConfig:
    """``cfg`` with ``bench.cuda_graph`` off when ``device`` is not a GPU (CUDA graphs need one), so
    the GPU settings of experiments/throughput_sweep.yaml also run on a CPU; says so in one line."""
    if device.type == "cuda" or not cfg.bench.cuda_graph:
        return cfg
    print(f"note: bench.cuda_graph needs a CUDA device; timing eager generation on {device.type} "
          "(recorded as cuda_graph=False)", file=sys.stderr)
    return merge(cfg, {"bench": {"cuda_graph": False}}, source="CPU fallback")


def run_throughput_sweep(cfg: DictConfig, command: str | None = None, overwrite: bool = False,
                         fresh: bool = False) -> pd.DataFrame:
    """Runs the sweep of ``cfg.bench``; returns the table of points (one row per model and batch
    size, ``status`` ok | oom) and writes it with the summary and plots to ``bench.output_dir``
    (refused before any work if that folder holds committed results, unless ``overwrite``). Models
    an earlier run of the same bench measured are kept unless ``fresh`` (module docstring)."""
    guard_output(cfg.bench.output_dir, overwrite)
    device = bench_device(cfg.bench.device)
    cfg = eager_on_cpu(cfg, device)
    bench = cfg.bench
    points = bench_points(cfg)
    prov = provenance(command, device)
    settings = settings_line(cfg)
    mlflow, exp_id = client(cfg.tracking), experiment_id(cfg.tracking)
    params = {"points": ", ".join(label for label, _ in points), "batch_sizes": list(bench.batch_sizes),
              "settings": settings, **{k: v[:500] for k, v in prov.items()}}
    rows, training, timeline, failed = [], [], [], []
    sweep_start = time.perf_counter()
    ceilings = measure_ceilings(device.type) if bench.roofline and device.type == "cuda" else None
    per_model = len(set(bench.batch_sizes))
    with parent_run(cfg.tracking, SWEEP_NAME, params, key=bench_key(cfg, prov), fresh=fresh) as parent_id, \
            tqdm(total=len(points) * per_model, desc=SWEEP_NAME, leave=False) as bar:
        done, keys = finished_points(cfg.tracking, parent_id), [point_key(point_cfg) for _, point_cfg in points]
        kept = [label for (label, _), key in zip(points, keys, strict=True) if key in done]
        if kept:
            print(f"nar-bench: keeping {len(kept)} model(s) measured earlier in this bench ({', '.join(kept)}); "
                  "--fresh re-measures them", flush=True)
        for i, ((label, point_cfg), key) in enumerate(zip(points, keys, strict=True)):
            profile = profile_path(bench.output_dir, label)
            if key in done:
                rows += done[key]["points"]
                training += done[key]["training"]
                timeline += [{**row, "kept": True} for row in done[key].get("timeline", [])]
                if done[key]["profile"] is not None:
                    profile.parent.mkdir(parents=True, exist_ok=True)
                    profile.write_text(done[key]["profile"])
                bar.update((i + 1) * per_model - bar.n)
                continue
            first_row, record = len(rows), ModelRecord(label)
            try:
                for row in bench_model(label, point_cfg, device, prov, ceilings, record):
                    bar.set_postfix_str(f"{label} bs={row['batch_size']} {row['status']}")
                    bar.update()
                    log_point(mlflow, exp_id, parent_id, row)
                    rows.append(row)
                record_model(mlflow, exp_id, parent_id, label, key, {
                    "points": rows[first_row:], "training": record.training, "timeline": [record.timeline_row()],
                    "profile": profile.read_text() if profile.is_file() else None})
            except Exception as err:  # one model's failure is reported, the other models still run
                log.exception("bench point '%s' failed", label)
                failed.append(f"{label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            training += record.training  # a model that fails mid-way keeps the rows it measured
            timeline.append({**record.timeline_row(), "kept": False})
            bar.update((i + 1) * per_model - bar.n)  # batch sizes past an OOM are skipped
        table = pd.DataFrame(rows)
        files = write_report(table, bench.output_dir, prov, settings, pd.DataFrame(training), pd.DataFrame(timeline),
                             wall_s=time.perf_counter() - sweep_start)
        files.append(write_provenance(bench.output_dir, {**prov, "settings": settings}))
        if bench.profile_batch > 0 or bench.profile_best:
            files += [p for label, _ in points if (p := profile_path(bench.output_dir, label)).is_file()]
        for path in files:
            mlflow.log_artifact(parent_id, str(path))
        if failed:  # after the report of the points that ran; the parent run ends FAILED
            raise NarBenchError(f"{len(failed)} bench point(s) failed (traceback above, results of the others in "
                                f"{bench.output_dir}): " + "; ".join(failed))
    log.info("throughput sweep: %s", provenance_line(prov))
    return table


def main(args: argparse.Namespace) -> None:
    from nar_bench.config import load_config

    cfg = args.cfg or load_config(args.config, args.overrides)
    if args.out:
        cfg = merge(cfg, {"bench": {"output_dir": args.out}}, source="--out")
    run_throughput_sweep(cfg, command=args.command_line, overwrite=args.overwrite, fresh=args.fresh)
    print(f"results in {cfg.bench.output_dir}")
