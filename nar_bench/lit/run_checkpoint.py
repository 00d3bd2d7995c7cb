"""A nar-bench run's Lightning checkpoint (``checkpoints/last.ckpt``) is the source of truth for
what it records: the model (paradigm, size, dims, options), the image and token geometry, the
tokenizer and the class count. A config that says otherwise is refused in one line naming each
setting and the checkpoint's value; settings the config leaves at the schema's defaults take the
checkpoint's values (so an evaluation records what was really sampled). The exception: the
paradigm's decode-only options (``Paradigm.decode_options``, e.g. ``model.options.order=zipar`` on an
``ar`` run) change how the same weights decode, so a value the config gives overrides the checkpoint's.

``read_run_checkpoint`` checks the file (one line for a truncated file, a plain state dict or
another program's Lightning checkpoint), ``checkpoint_config`` reconciles a config with it and
``module_from_checkpoint`` builds the module from what was read (the file is read once).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nar_bench.checkpoints import load_file
from nar_bench.config import ExperimentConfig, merge
from nar_bench.errors import NarBenchError
from nar_bench.lit.module import GeneratorModule
from nar_bench.paradigms.model_config import paradigm_options
from nar_bench.registry import PARADIGMS, TOKENIZERS

# settings a run's checkpoint fixes; a section (options) is compared key by key
RECORDED = ("model.paradigm", "model.size", "model.dim", "model.n_layers", "model.n_heads", "model.options",
            "data.image_size", "data.grid_size", "data.frames", "tokenizer.name", "tokenizer.options")


def read_run_checkpoint(path: str | Path, hint: str = "point --ckpt at a run's checkpoints/last.ckpt") -> Mapping:
    """The content of a nar-bench run's Lightning checkpoint (state_dict + hyper_parameters cfg and
    num_classes); NarBenchError for a missing, truncated or foreign file."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        found = f", e.g. {last}" if last.is_file() else ""
        raise NarBenchError(f"checkpoint '{path}' is a folder; pass the checkpoint file{found}")
    if not path.is_file():
        raise NarBenchError(f"checkpoint '{path}' not found; train first (nar-bench train ...) or fix the path")
    content = load_file(path, download=hint)
    hparams = content.get("hyper_parameters")
    if ("pytorch-lightning_version" not in content or not isinstance(hparams, Mapping) or "cfg" not in hparams
            or "num_classes" not in hparams or not isinstance(content.get("state_dict"), Mapping)):
        raise NarBenchError(f"'{path}' is not a nar-bench Lightning checkpoint (a plain state dict?): it holds no "
                            "run config; use a run's checkpoints/last.ckpt, or train from its weights with "
                            "model.checkpoint=<file>")
    return content


def recorded_config(content: Mapping, path: str | Path) -> tuple[DictConfig, set[str]]:
    """(the run's config as its checkpoint stores it, over the schema (keys added since take
    defaults), the ``data.*`` keys its tokenizer fixes itself). A ``codes`` tokenizer decodes to the
    image size and grid of its manifest whatever ``data.*`` says: those replace the stored ones."""
    cfg = merge(OmegaConf.structured(ExperimentConfig), content["hyper_parameters"]["cfg"],
                source=f"checkpoint '{path}'")
    recorded_data = getattr(TOKENIZERS.get(cfg.tokenizer.name), "recorded_data", None)
    if recorded_data is None:
        return cfg, set()
    fixed = recorded_data(cfg)
    cfg.data.update(fixed)
    return cfg, {f"data.{key}" for key in fixed}


def _leaves(cfg: DictConfig, key: str) -> list[str]:
    node = OmegaConf.select(cfg, key, default=None)
    return [f"{key}.{k}" for k in node] if isinstance(node, DictConfig) else [key]


def _recorded_value(recorded: DictConfig, key: str) -> Any:
    """The checkpoint's value of ``key``; an option it leaves unset is the paradigm's default."""
    value = OmegaConf.select(recorded, key, default=None)
    if value is None and key.startswith("model.options."):
        value = getattr(paradigm_options(recorded.model), key.rsplit(".", 1)[1], None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def decode_option_keys(paradigm: str) -> set[str]:
    """``model.options.<key>`` of the paradigm's decode-only options."""
    cls = PARADIGMS.get(paradigm) if paradigm in PARADIGMS else None
    return {f"model.options.{key}" for key in getattr(cls, "decode_options", ())}


def checkpoint_config(cfg: DictConfig, content: Mapping, path: str | Path, given: Mapping[str, str] | None = None,
                      num_classes: int | None = None) -> DictConfig:
    """``cfg`` with the checkpoint's values of ``RECORDED``. ``given`` maps the keys the user set
    (YAML file or overrides, see ``config.given_keys``) to where they were set; one that contradicts
    the checkpoint (or a ``num_classes`` other than its) is a NarBenchError listing all of them with
    the checkpoint's values. ``given`` None compares every recorded setting of ``cfg``. A decode-only
    option of the checkpoint's paradigm that the config sets is not a contradiction: its value wins
    (and is checked against the paradigm's options)."""
    recorded, fixed_by_tokenizer = recorded_config(content, path)
    decode_keys = decode_option_keys(recorded.model.paradigm)
    said, decoding = [], {}
    for section in RECORDED:
        for key in dict.fromkeys([*_leaves(cfg, section), *_leaves(recorded, section)]):
            if (given is not None and key not in given) or key in fixed_by_tokenizer:  # a setting nothing reads
                continue
            value = OmegaConf.select(cfg, key, default=None)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if (given is not None or value is not None) and value != _recorded_value(recorded, key):
                if key in decode_keys and value is not None:
                    decoding[key] = value
                    continue
                said.append((key, value, given[key] if given is not None else "the config"))
    ckpt_classes = int(content["hyper_parameters"]["num_classes"])
    if said or (num_classes is not None and num_classes != ckpt_classes):
        theirs = [f"{key}={_recorded_value(recorded, key)}" for key, _, _ in said]
        ours = [f"{key}={value} ({source})" for key, value, source in said]
        if num_classes is not None and num_classes != ckpt_classes:
            theirs.append(f"{ckpt_classes} classes")
            ours.append(f"--num-classes {num_classes}")
        fix = " ".join(t for t in theirs if "=" in t) or f"--num-classes {ckpt_classes}"
        free = sorted(k.rsplit(".", 1)[1] for k in decode_keys)
        decode_note = (f" (of model.options only {', '.join(free)} may differ: they only change decoding)"
                       if free and any(key.startswith("model.options.") for key, _, _ in said) else "")
        raise NarBenchError(f"checkpoint '{path}' records {', '.join(theirs)}, but the config says {', '.join(ours)}; "
                            f"the checkpoint fixes these: pass {fix} to match it{decode_note}")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    for key in RECORDED:
        OmegaConf.update(cfg, key, OmegaConf.select(recorded, key, default=None), merge=False)
    for key, value in decoding.items():  # decode-only options the config sets: decode the weights that way
        OmegaConf.update(cfg, key, value, merge=False)
    cfg = merge(OmegaConf.structured(ExperimentConfig), cfg, source=f"checkpoint '{path}'")
    if decoding:
        paradigm_options(cfg.model)  # e.g. an order the checkpoint's paradigm does not have: one line
    return cfg


def module_from_checkpoint(content: Mapping, path: str | Path, options: Mapping | None = None) -> GeneratorModule:
    """The GeneratorModule the checkpoint ``content`` (``read_run_checkpoint``) holds, on the CPU;
    ``options``: its ``model.options`` as ``checkpoint_config`` reconciled them (decode-only ones the
    config set), else the checkpoint's."""
    hparams = content["hyper_parameters"]
    cfg = hparams["cfg"]
    if options is not None:
        options = OmegaConf.to_container(options) if OmegaConf.is_config(options) else dict(options)
        cfg = {**cfg, "model": {**cfg["model"], "options": options}}
    module = GeneratorModule(cfg, int(hparams["num_classes"]), load_initial_weights=False)
    try:
        module.load_state_dict(content["state_dict"])
    except RuntimeError as err:  # keys or shapes of another version of the model
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise NarBenchError(f"checkpoint '{path}' does not fit the model its own config describes ({first[:200]}); "
                            "was it written by another nar-bench version? re-train, or load its weights with "
                            "model.checkpoint=<file>") from None
    return module
