"""``nar-bench sample``: a class grid of samples from a trained Lightning checkpoint.

Only what sampling reads can be overridden (``eval.sampling.*``, ``eval.samples_per_class``,
``seed``): the checkpoint fixes the model, tokenizer and data, so an override of those would be
silently ignored and is refused instead, as is an unknown key or a value out of its range. Those
checks and the output guard run before torch is imported (a typo fails in a second)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from nar_bench.config import ExperimentConfig, check_domains, merge, parse_overrides
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling_config import SamplingConfig
from nar_bench.tracking.provenance import SCRATCH_ROOT, guard_output, provenance, provenance_line

SAMPLING_KEYS = ("eval.sampling.", "eval.samples_per_class", "seed")  # what `sample` reads of the config
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_overrides(overrides: list[str]) -> None:
    """Refuses overrides that sampling from a checkpoint would ignore (model.*, data.*, ...)."""
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item:
            raise NarBenchError(f"override '{item}' is not key=value, e.g. eval.sampling.cfg_scale=3")
        if not key.startswith(SAMPLING_KEYS):
            raise NarBenchError(f"sample ignores '{key}': the checkpoint fixes the model, tokenizer and data; only "
                                f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in SAMPLING_KEYS)}"
                                " can be set here")
    # unknown keys (a misspelt eval.sampling.cfg_scal), wrong types and ranges, before the checkpoint is read
    check_domains(merge(OmegaConf.structured(ExperimentConfig), parse_overrides(overrides),
                        source="command-line overrides"), "command-line overrides")


def check_out(out: str | Path, overwrite: bool) -> Path:
    """An --out the grid may be written to: an image name, not an existing file unless ``overwrite``
    (the default name is keyed by checkpoint and settings instead), never over committed files."""
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise NarBenchError(f"--out '{out}': name the image file with one of {', '.join(IMAGE_SUFFIXES)} "
                            "(a video model writes a .gif next to it)")
    if out.exists() and not overwrite:
        raise NarBenchError(f"refusing to overwrite: '{out}' exists; choose another --out, leave --out out (the "
                            "default name is keyed by checkpoint and settings) or pass --overwrite")
    return guard_output(out, overwrite)


def default_out(cfg, ckpt: str | Path) -> Path:
    """``results/runs/samples/<paradigm>-<ckpt stem>-<ckpt hash>-<settings hash>.png``: one file per
    checkpoint and sampling settings, so a second checkpoint named last.ckpt gets its own."""
    from nar_bench.metrics.adm_npz import sha256_file

    settings = {"sampling": OmegaConf.to_container(cfg.eval.sampling), "seed": cfg.seed,
                "samples_per_class": cfg.eval.samples_per_class}
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{cfg.model.paradigm}-{Path(ckpt).stem}-{sha256_file(ckpt)[:8]}-{settings_hash}.png"
    return guard_output(SCRATCH_ROOT / "samples" / name)


def load_module(ckpt: str | Path):
    """The GeneratorModule of a nar-bench Lightning checkpoint; NarBenchError for anything else."""
    from nar_bench.lit.run_checkpoint import module_from_checkpoint, read_run_checkpoint

    return module_from_checkpoint(read_run_checkpoint(ckpt), ckpt)


def main(args: argparse.Namespace) -> None:
    check_overrides(args.overrides)
    out = check_out(args.out, args.overwrite) if args.out else None
    import torch

    from nar_bench.evaluation.samples import engine_grid
    from nar_bench.images import save_labelled_grid, save_samples

    module = load_module(args.ckpt)
    schema = OmegaConf.structured(ExperimentConfig)  # unknown keys (a misspelt cfg_scal) are errors
    cfg = merge(schema, module.cfg, source=f"checkpoint '{args.ckpt}'")
    cfg = merge(cfg, parse_overrides(args.overrides), source="command-line overrides")
    # one device of this machine (a GPU if there is one), whatever the training ran on
    cfg.trainer.update(accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, num_nodes=1,
                       strategy="auto")
    module.cfg = cfg
    out = out or default_out(cfg, args.ckpt)
    sampling = SamplingConfig(**cfg.eval.sampling)
    images = engine_grid(module, cfg)  # the evaluation's engine: its first samples with <= 16 classes
    if images.dim() != 4:  # video: animated GIF grid
        print(save_samples(images, out, nrow=module.grid_columns))
        return
    class_names = None
    if cfg.data.name == "shapes":
        from nar_bench.data.shapes import class_name

        class_names = [class_name(label) for label in range(module.num_classes)]
    title = (f"{cfg.model.paradigm}-{cfg.model.size} ({cfg.tokenizer.name} tokens) | seed {cfg.seed} | "
             f"cfg_scale {sampling.cfg_scale:g}, temperature {sampling.temperature:g}, top-k {sampling.top_k}, "
             f"top-p {sampling.top_p:g}")
    prov = provenance(args.command_line, module.device)
    caption = f"{provenance_line({k: prov[k] for k in ('command', 'commit', 'device')})}\ncheckpoint: {args.ckpt}"
    print(save_labelled_grid(images, module.sample_grid_labels().cpu(), out, module.grid_columns, title,
                             class_names, caption))
