"""``nar-bench sample``: a class grid of samples from a trained Lightning checkpoint.

Only what sampling reads can be overridden (``eval.sampling.*``, ``eval.samples_per_class``,
``seed``): the checkpoint fixes the model, tokenizer and data, so an override of those would be
silently ignored and is refused instead, as is an unknown key."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nar_bench.config import ExperimentConfig, merge
from nar_bench.errors import NarBenchError
from nar_bench.images import save_labelled_grid, save_samples
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.tracking.provenance import guard_output, provenance, provenance_line

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
    # unknown keys (a misspelt eval.sampling.cfg_scal) and wrong types, before the checkpoint is read
    merge(OmegaConf.structured(ExperimentConfig), OmegaConf.from_dotlist(overrides), source="command-line overrides")


def check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise NarBenchError(f"--out '{out}': name the image file with one of {', '.join(IMAGE_SUFFIXES)} "
                            "(a video model writes a .gif next to it)")
    return guard_output(out, overwrite)


def load_module(ckpt: str | Path):
    """The GeneratorModule of a nar-bench Lightning checkpoint; NarBenchError for anything else."""
    from nar_bench.checkpoints import load_file
    from nar_bench.lit.module import GeneratorModule

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise NarBenchError(f"checkpoint '{ckpt}' not found; train first (nar-bench train ...) or fix the path")
    content = load_file(ckpt, download="point --ckpt at a run's checkpoints/last.ckpt")
    if "pytorch-lightning_version" not in content or "cfg" not in content.get("hyper_parameters", {}):
        raise NarBenchError(f"'{ckpt}' is not a nar-bench Lightning checkpoint (a plain state dict?); sample from a "
                            "run's checkpoints/last.ckpt, or train from it with model.checkpoint=<file>")
    return GeneratorModule.load_from_checkpoint(ckpt, map_location="cpu")


def main(args: argparse.Namespace) -> None:
    check_overrides(args.overrides)
    out = check_out(args.out, args.overwrite)
    module = load_module(args.ckpt)
    if torch.cuda.is_available():
        module = module.cuda()
    schema = OmegaConf.structured(ExperimentConfig)  # unknown keys (a misspelt cfg_scal) are errors
    cfg = merge(schema, module.cfg, source=f"checkpoint '{args.ckpt}'")
    cfg = merge(cfg, OmegaConf.from_dotlist(args.overrides), source="command-line overrides")
    module.cfg = cfg
    sampling = SamplingConfig(**cfg.eval.sampling)
    images = module.sample_grid(cfg.seed, sampling)
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
