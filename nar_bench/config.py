"""Experiment configuration: OmegaConf structured schemas, YAML files, dotlist overrides, sweeps.

``load_config("experiments/x.yaml", ["model.size=B"])`` merges schema defaults <- YAML <- overrides.
Unknown keys and wrong types raise ``NarBenchError`` naming the key and the valid ones.

Numeric settings with a domain (batch sizes, learning rate, top-p, ...) are checked here against
one table (``DOMAINS``), so a typo fails before torch is imported (this module imports none).
What a section's values mean beyond that is checked by the component that reads it: the paradigm
the ``model`` section (``nar_bench.paradigms.model_config``), the tokenizer its section and the data
geometry (``nar_bench.tokenizers.checks``), evaluation its inputs (``nar_bench.evaluation.scoring``);
``nar_bench.lit.trainer.check_generator_inputs`` runs those a training run needs before it starts.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling_config import SamplingConfig


@dataclass
class DataConfig:
    name: str = "shapes"  # registry name: shapes | imagefolder | codes | ...
    root: str | None = None  # folder for real data
    image_size: int = 64
    grid_size: int = 16  # token grid side (H = W)
    frames: int | None = None  # video datasets (moving_shapes): frames per clip T; None = still images
    num_train: int = 20000
    num_val: int = 256
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    upscale_small_images: bool = False  # imagefolder: upscale images smaller than image_size (ADM does)


@dataclass
class TokenizerConfig:
    name: str = "palette"  # palette | vq | msvq | codes | ...
    checkpoint: str | None = None
    # a learned tokenizer (vq, msvq) without a checkpoint is refused unless this says it is meant
    # (tests, demos of the code path; its codes mean nothing)
    untrained: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # tokenizer-specific: preset, architecture fields


@dataclass
class ModelConfig:
    paradigm: str = "ar"  # nar | ar | par | var | maskgit
    size: str = "tiny"  # key of MODEL_SIZES; dim/n_layers/n_heads below override it
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    # Training dropouts; null = the paradigm's released recipe (``Paradigm.default_dropouts``: 0.1 each
    # for LlamaGen / NAR / PAR, resid / ffn / token 0 and class 0.1 for VAR)
    token_dropout: float | None = None
    resid_dropout: float | None = None
    ffn_dropout: float | None = None
    class_dropout: float | None = None
    checkpoint: str | None = None  # official or nar-bench state dict to load
    options: dict[str, Any] = field(default_factory=dict)  # paradigm-specific, see Paradigm.Options


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 300
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # ddp, fsdp, ... (Lightning)
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    val_check_interval: int = 100
    log_every_n_steps: int = 10
    resume: str | None = None  # nar-bench train: continue a run from its last.ckpt (latest | run id | .ckpt path)


@dataclass
class EvalConfig:
    samples_per_class: int = 4  # sample grid rows (validation, end of training, nar-bench sample)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # quality evaluation (nar_bench.evaluation): class-balanced samples vs real reference images
    num_samples: int = 1024  # generated images per evaluation
    batch_size: int = 128  # images generated per device and batch (CFG doubles the forward batch)
    metrics: list[str] = field(default_factory=lambda: ["fid", "isc", "kid", "prc"])  # torch-fidelity names
    # images: domain (synthetic shapes classifier) | inception (local weights file);
    # video (data.frames set, scored with FVD): video_domain (moving-shapes classifier) | i3d (local weights file)
    extractor: str = "domain"
    extractor_options: dict[str, Any] = field(default_factory=dict)  # e.g. weights_path, domain classifier steps
    reference_size: int = 2048  # real images in the reference set
    reference_split: str = "val"
    reference_data: str | None = None  # dataset of reference images (default data.name), e.g. imagefolder
    reference_root: str | None = None  # its folder (default data.root)
    # paper-comparable evaluation (nar-bench evaluate): ADM reference batch .npz (images + mu/sigma +
    # mu_s/sigma_s, e.g. VIRTUAL_imagenet256_labeled.npz or one from `nar-bench reference`); when set,
    # metrics are ADM's fid, sfid, is, precision, recall on torch-fidelity's InceptionV3
    reference: str | None = None
    shard_size: int = 1000  # samples per .npz shard (the unit of resuming and of work per device)
    decode_batch: int = 32  # codes per tokenizer decode call (fixed: images do not depend on batch_size)
    # auto | eager | graph (nar_bench.paradigms.generation): graph = the fused compiled step in one CUDA
    # graph per batch shape + the fast decoder; auto = graph on a GPU where the paradigm has one, else eager
    engine: str = "auto"
    after_training: bool = False  # nar-bench train: evaluate (num_samples) in the training run once it ends


@dataclass
class TrackingConfig:
    tracking_uri: str = "sqlite:///results/mlruns.db"
    artifact_location: str = "results/mlartifacts"
    experiment: str = "nar-bench"
    run_name: str | None = None


@dataclass
class SweepConfig:
    """Runs = variants x grid x seeds. A variant is a named list of dotlist overrides; ``grid``
    maps a config key to the values to try (cartesian product). A variant with a ``grid`` of its own
    (some keys of ``grid``, or {}) crosses that one instead: e.g. a step-count grid only for the
    variants whose paradigm has a step count."""

    variants: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)


@dataclass
class BenchPoint:
    """One model of the throughput sweep: a paradigm at a size, with its options and any further
    dotlist overrides of the experiment config (e.g. ``eval.sampling.top_k=900``)."""

    name: str | None = None  # label in tables and plots; default "<paradigm>-<size>"
    paradigm: str = "nar"
    size: str = "B"
    options: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    """Throughput sweep (``nar-bench bench``): points x batch sizes with random weights. Sampling
    (CFG scale, top-k, top-p) comes from ``eval.sampling``; batch sizes ascend and the first
    out-of-memory batch ends a model's row (recorded as its limit)."""

    points: list[BenchPoint] = field(default_factory=list)  # empty = the configured model alone
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    dtype: str = "bf16"  # bf16 (autocast) | fp32
    warmup: int = 1
    repeats: int = 3
    include_decode: bool = False  # time tokenizer decode of the codes too
    cuda_graph: bool = False  # replay each batch's whole generation from one CUDA graph (GPU only)
    compile: bool = False  # fused, compiled per-step forward (paradigm.compile_decoding)
    compile_decoder: bool | None = None  # compile the tokenizer decoder with include_decode; null = bench.compile
    roofline: bool = True  # count the FLOPs / floor bytes of each model: TFLOP/s, GB/s, % of compute floor
    train_batch: int = 0  # > 0: images/s of a bf16 training step (fwd + bwd + AdamW) per model at this batch
    train_attention: list[str] = field(default_factory=lambda: ["dense", "flex"])  # masked-attention paths timed
    # Token-only stand-in for the tokenizer: codes in [0, vocab_size) on the data.grid_size grid.
    # null = the configured tokenizer's code space (needed for include_decode and for VAR).
    vocab_size: int | None = None
    num_classes: int = 1000
    device: str = "auto"  # auto = cuda when available, else cpu
    profile_batch: int = 0  # > 0: write a torch.profiler table per model at this batch size
    profile_best: bool = False  # also profile each model at its best-throughput batch (where a target is read)
    output_dir: str = "results/runs/throughput"  # git-ignored scratch; results/throughput only via --out


@dataclass
class ExperimentConfig:
    seed: int = 0
    output_dir: str = "results/runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def _valid_keys(schema: Any, dotted: str, message: str = "") -> list[str]:
    """Field names valid at the parent of ``dotted`` in the schema, for error messages; [] when
    OmegaConf's ``message`` names another parent (a key inside a list item reaches us without its path)."""
    node = schema
    for part in dotted.split(".")[:-1]:
        if not is_dataclass(node) or part not in {f.name for f in fields(node)}:
            return []
        node = getattr(node, part)
    named = re.search(r"not in '(\w+)'", message)
    if not is_dataclass(node) or (named and named.group(1) != type(node).__name__):
        return []
    return sorted(f.name for f in fields(node))


def _culprit(base: DictConfig, layer: Any, prefix: str = "") -> str:
    """The dotted key of ``layer`` whose merge into ``base`` fails (OmegaConf names none when a whole
    section is given a scalar, ``data=5``)."""
    if not isinstance(layer, (dict, DictConfig)):
        return prefix.rstrip(".")
    for key in layer:
        value = layer[key]
        try:
            OmegaConf.merge(base, {key: value})
        except (OmegaConfBaseException, TypeError, ValueError):
            below = base.get(key) if isinstance(base, DictConfig) and key in base else None
            return _culprit(below, value, f"{prefix}{key}.") if isinstance(below, DictConfig) else f"{prefix}{key}"
    return prefix.rstrip(".")


def _shape_hint(base: DictConfig, key: str) -> str:
    """What the schema holds at ``key`` when a value of the wrong shape was given, or ''."""
    node = OmegaConf.select(base, key, default=None, throw_on_missing=False) if key else None
    if isinstance(node, ListConfig):
        element = node._metadata.element_type
        if is_dataclass(element):
            return f"{key} is a list of mappings with keys {', '.join(f.name for f in fields(element))}, e.g. " \
                   f"{key}=[{{{fields(element)[1].name}: ...}}]"
        if typing.get_origin(element) is dict:
            return f"{key} is a list of mappings, e.g. {key}=[{{name: a, overrides: [model.paradigm=ar]}}] (see " \
                   "experiments/ablation_heads.yaml)"
        example = _dotlist_value(node) if len(node) else "[...]"
        return f"{key} is a list: write it in brackets, e.g. {key}={example}"
    if isinstance(node, DictConfig):
        keys = list(node) or ["<key>"]
        return f"{key} is a section of keys ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}): set one " \
               f"as {key}.{keys[0]}=<value>"
    return ""


def merge(base: DictConfig, *layers: Any, source: str = "config") -> DictConfig:
    """``OmegaConf.merge`` whose failure is one NarBenchError naming the key, the source and the fix."""
    try:
        return OmegaConf.merge(base, *layers)
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        key = getattr(err, "full_key", None) or ""
        merged = base
        for layer in layers:  # the layer that fails, and in it the key
            try:
                merged = OmegaConf.merge(merged, layer)
            except (OmegaConfBaseException, TypeError, ValueError):
                key = key or _culprit(merged, layer)
                break
        shape = _shape_hint(merged, key.split("[", 1)[0]) if isinstance(merged, DictConfig) else ""  # list[i] -> list
        msg = shape or str(err).splitlines()[0]
        valid = _valid_keys(ExperimentConfig(), key, msg) if key else []
        hint = f"; valid keys here: {', '.join(valid)}" if valid and not shape else ""
        raise NarBenchError(f"bad config key '{key}' in {source}: {msg}{hint}") from None


def parse_overrides(items: list[str], source: str = "command-line overrides") -> DictConfig:
    """Dotlist ``key=value`` items as one config layer; NarBenchError naming an item that is not
    key=value or whose value is not valid YAML (an unclosed ``[``)."""
    import yaml

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise NarBenchError(f"override '{item}' in {source} is not key=value; write e.g. model.size=B")
    try:
        return OmegaConf.from_dotlist(list(items))
    except (yaml.YAMLError, OmegaConfBaseException, ValueError):
        for item in items:
            try:
                OmegaConf.from_dotlist([item])
            except (yaml.YAMLError, OmegaConfBaseException, ValueError) as err:
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                raise NarBenchError(f"override '{item}' in {source}: its value is not valid YAML ({problem}); "
                                    "close its brackets or quote it, e.g. 'bench.batch_sizes=[1,8]'") from None
        raise


def read_yaml(path: Path) -> DictConfig:
    """The mapping in YAML file ``path``; NarBenchError (one line) for malformed YAML, an empty file
    or a file whose top level is not a mapping of config sections."""
    import yaml

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise NarBenchError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NarBenchError(f"cannot read config file '{path}': {err}") from None
    if not isinstance(loaded, DictConfig):
        raise NarBenchError(f"config file '{path}' holds a {type(loaded).__name__.removesuffix('Config').lower()} at "
                            "its top level; it must be a mapping of sections (data:, model:, trainer:, ...), "
                            "see experiments/demo.yaml")
    if not loaded:  # an empty (or truncated) file would silently run the schema defaults
        raise NarBenchError(f"config file '{path}' is empty; give it sections (data:, model:, trainer:, ...), "
                            "e.g. copy experiments/demo.yaml")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults <- YAML file <- dotlist overrides, checked against the schema (keys, types,
    the numeric domains of ``DOMAINS``), the sampling settings and the override rules below."""
    cfg = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise NarBenchError(f"config file '{path}' is a folder; pass a YAML file, e.g. experiments/demo.yaml")
        if not path.is_file():
            raise NarBenchError(f"config file '{path}' not found; pass a YAML from experiments/, "
                                "e.g. experiments/demo.yaml")
        cfg = merge(cfg, read_yaml(path), source=str(path))
    base = cfg
    overrides = list(overrides or [])
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides), source="command-line overrides")
    check_domains(cfg, lambda key: "command-line overrides" if override_sets(overrides, key)
                  else str(path or "the defaults"))
    SamplingConfig(**cfg.eval.sampling)  # validates cfg_schedule / cfg_interval
    check_cell_size_change(base, cfg, overrides, str(path or "the defaults"))
    return cfg


def given_keys(path: str | Path | None, overrides: list[str] | None, cfg: DictConfig) -> dict[str, str]:
    """{dotted leaf key: where it was set} for the keys the YAML file ``path`` or the dotlist
    ``overrides`` set (not those left at the schema's defaults); an override of a whole section
    (``model.options={...}``) gives the leaves of ``cfg`` under it. What a checkpoint records is
    compared with these (``nar-bench evaluate``)."""
    def leaves(node: Any, prefix: str) -> set[str]:
        if isinstance(node, DictConfig) and len(node):
            return set().union(*(leaves(node[k], f"{prefix}{k}.") for k in node))
        return {prefix[:-1]}

    keys = dict.fromkeys(sorted(leaves(read_yaml(Path(path)), "")), str(path)) if path is not None else {}
    for item in overrides or []:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.update(dict.fromkeys(sorted(leaves(OmegaConf.select(cfg, key, default=None), f"{key}.")),
                                  "command-line overrides"))
    return keys


# --- numeric domains: one table, checked on every loaded config and sweep point -------------------------
@dataclass(frozen=True)
class Domain:
    """The values a numeric setting may take: ``test`` (on a finite number) and ``text``, which
    completes "must be ..."."""

    test: Callable[[float], bool]
    text: str


POSITIVE = Domain(lambda v: v > 0, "> 0")
NON_NEGATIVE = Domain(lambda v: v >= 0, ">= 0")
PROBABILITY = Domain(lambda v: 0 <= v < 1, "in [0, 1)")
SEED = Domain(lambda v: 0 <= v < 2**32, "in [0, 4294967295] (numpy's and Lightning's seed range)")

# dotted key -> domain; a list value (optim.betas, bench.batch_sizes, sweep.seeds) is checked per
# element; null (an unset optional) is not checked
DOMAINS: dict[str, Domain] = {
    "seed": SEED,
    "sweep.seeds": SEED,
    "data.image_size": POSITIVE,
    "data.grid_size": POSITIVE,
    "data.frames": POSITIVE,
    "data.num_train": POSITIVE,
    "data.num_val": POSITIVE,
    "data.batch_size": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "model.dim": POSITIVE,
    "model.n_layers": POSITIVE,
    "model.n_heads": POSITIVE,
    "model.token_dropout": PROBABILITY,
    "model.resid_dropout": PROBABILITY,
    "model.ffn_dropout": PROBABILITY,
    "model.class_dropout": PROBABILITY,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": PROBABILITY,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.grad_clip": NON_NEGATIVE,
    "trainer.max_steps": NON_NEGATIVE,
    "trainer.num_nodes": POSITIVE,
    "trainer.val_check_interval": POSITIVE,
    "trainer.log_every_n_steps": POSITIVE,
    "eval.samples_per_class": POSITIVE,
    "eval.num_samples": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.reference_size": Domain(lambda v: v >= 2, ">= 2 (a covariance needs 2 images)"),
    "eval.shard_size": POSITIVE,
    "eval.decode_batch": POSITIVE,
    "eval.sampling.cfg_scale": Domain(lambda v: v >= 0, ">= 0 (<= 1 means no guidance)"),
    "eval.sampling.cfg_interval": Domain(lambda v: v >= -1, ">= -1 (-1 guides every step)"),
    "eval.sampling.temperature": Domain(lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "eval.sampling.top_k": Domain(lambda v: v >= 0, ">= 0 (0 = off)"),
    "eval.sampling.top_p": Domain(lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "bench.batch_sizes": POSITIVE,
    "bench.warmup": NON_NEGATIVE,
    "bench.repeats": POSITIVE,
    "bench.train_batch": NON_NEGATIVE,
    "bench.vocab_size": POSITIVE,
    "bench.num_classes": POSITIVE,
    "bench.profile_batch": NON_NEGATIVE,
}


def override_sets(overrides: list[str], key: str) -> bool:
    """Whether one of the dotlist ``overrides`` sets ``key`` (or a section holding it)."""
    given = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    return any(key == k or key.startswith(k + ".") for k in given)


def _default(key: str) -> Any:
    value = OmegaConf.select(OmegaConf.structured(ExperimentConfig), key, default=None)
    return OmegaConf.to_container(value) if _is_sequence(value) else value


def _is_sequence(value: Any) -> bool:
    """A list or tuple, plain or OmegaConf's (optim.betas is a tuple node)."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def _dotlist_value(value: Any) -> str:
    """``value`` as written in a dotlist override: 3, 0.5, [1,8]."""
    if _is_sequence(value):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def check_domains(cfg: DictConfig, source: Callable[[str], str] | str = "config") -> None:
    """NarBenchError (one line: key, value, where it came from, its domain and a valid value) for the
    first setting of ``DOMAINS`` outside its domain; NaN and infinity are outside every domain."""
    for key, domain in DOMAINS.items():
        value = OmegaConf.select(cfg, key, default=None)
        values = list(value) if _is_sequence(value) else [value]
        bad = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not (math.isfinite(v) and domain.test(v))]
        if not bad:
            continue
        where = source(key) if callable(source) else source
        each = "each value " if _is_sequence(value) else ""
        default = _default(key)
        example = f", e.g. {key}={_dotlist_value(default)}" if default not in (None, []) else ""
        raise NarBenchError(f"{key}={_dotlist_value(value)} (from {where}) is out of range: {each}must be a finite "
                            f"number {domain.text}{example}")


# --- override checks: what only the merge of YAML and dotlist can tell ----------------------------------
def check_cell_size_change(base: DictConfig, cfg: DictConfig, overrides: list[str], source: str) -> None:
    """An override of data.image_size alone on the palette tokenizer silently changes the token cell
    size (image_size / grid_size) of the data and tokenizer: refused unless data.grid_size is given too."""
    keys = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    if cfg.tokenizer.name != "palette" or "data.image_size" not in keys or "data.grid_size" in keys:
        return
    before, after = base.data.image_size / base.data.grid_size, cfg.data.image_size / cfg.data.grid_size
    if before != after:
        keep = cfg.data.image_size * base.data.grid_size / base.data.image_size
        keep_hint = f"data.grid_size={int(keep)} keeps {before:g} px cells, " if keep == int(keep) else ""
        raise NarBenchError(
            f"data.image_size={cfg.data.image_size} with data.grid_size {cfg.data.grid_size} (from {source}) changes "
            f"the token cells from {before:g} px to {after:g} px; set data.grid_size too: {keep_hint}"
            f"data.grid_size={cfg.data.grid_size} confirms {after:g} px cells")


def expand_sweep(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(run name, config) for each run of ``cfg.sweep``; a config without a sweep is one run."""
    sweep = cfg.sweep
    check_variants(sweep.variants)
    variants = list(sweep.variants) or [{"name": "base", "overrides": []}]
    seeds = list(sweep.seeds) or [cfg.seed]
    runs = []
    points = [(variant, list(grid), point) for variant in variants
              for grid in [variant.get("grid", sweep.grid)] for point in itertools.product(*grid.values())]
    for (variant, grid_keys, point), seed in itertools.product(points, seeds):
        overrides = list(variant.get("overrides", [])) + [f"{k}={v}" for k, v in zip(grid_keys, point, strict=True)]
        source = f"sweep variant '{variant.get('name')}'"
        run_cfg = merge(copy.deepcopy(cfg), parse_overrides(overrides + [f"seed={seed}"], source), source=source)
        run_cfg.sweep = OmegaConf.structured(SweepConfig)
        point_names = [f"{k.split('.')[-1]}={v}" for k, v in zip(grid_keys, point, strict=True)]
        parts = [str(variant.get("name", "base")), *point_names]
        if len(seeds) > 1:
            parts.append(f"seed={seed}")
        check_domains(run_cfg, f"sweep point '{'/'.join(parts)}'")
        runs.append(("/".join(parts), run_cfg))
    return runs


def check_variants(variants: ListConfig) -> None:
    """Each sweep variant is a mapping {name, overrides: [key=value, ...]}, names distinct (they name
    the points, their runs and the report's rows)."""
    names = []
    for i, variant in enumerate(variants):
        overrides = variant.get("overrides", []) if isinstance(variant, DictConfig) else None
        if not isinstance(variant, DictConfig) or not variant.get("name") or not isinstance(overrides, ListConfig):
            shown = OmegaConf.to_container(variant) if isinstance(variant, DictConfig) else variant
            raise NarBenchError(f"sweep.variants[{i}] is {shown}; each variant is {{name: <name>, overrides: "
                                "[key=value, ...]}, see experiments/ablation_heads.yaml")
        names.append(str(variant.name))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise NarBenchError(f"sweep.variants: the name {', '.join(repeated)} is used twice; give each variant its own "
                            "name")
