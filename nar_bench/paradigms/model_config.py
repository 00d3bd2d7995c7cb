"""The ``model`` section of an experiment config, read by the paradigm that owns it: ``model.size``
-> backbone dims, null dropouts -> the paradigm's released recipe, ``model.options`` -> its
``Options``, and the ``TransformerConfig`` a paradigm is built with."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import MODEL_SIZES, TransformerConfig
from nar_bench.registry import PARADIGMS

DROPOUTS = ("token_dropout", "resid_dropout", "ffn_dropout", "class_dropout")


def model_dims(model: DictConfig) -> tuple[int, int, int]:
    """(dim, n_layers, n_heads): ``model.size``'s, each overridden by model.dim / n_layers / n_heads."""
    if model.size not in MODEL_SIZES:
        raise NarBenchError(f"unknown model.size '{model.size}'; choose one of: {', '.join(MODEL_SIZES)}")
    dim, n_layers, n_heads = MODEL_SIZES[model.size]
    return model.dim or dim, model.n_layers or n_layers, model.n_heads or n_heads


def model_dropouts(model: DictConfig) -> dict[str, float]:
    """``model.*_dropout``, each null one replaced by the paradigm's released recipe."""
    recipe = PARADIGMS[model.paradigm].default_dropouts
    return {key: recipe[key] if model[key] is None else float(model[key]) for key in DROPOUTS}


def transformer_config(model: DictConfig, vocab_size: int, num_classes: int) -> TransformerConfig:
    dim, n_layers, n_heads = model_dims(model)
    return TransformerConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab_size,
                             num_classes=num_classes, **model_dropouts(model))


def paradigm_options(model: DictConfig) -> Any:
    """``model.options`` validated against the paradigm's ``Options`` dataclass."""
    options_cls = PARADIGMS[model.paradigm].Options
    schema = OmegaConf.structured(options_cls)
    try:
        merged = OmegaConf.merge(schema, model.options)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        valid = ", ".join(f.name for f in fields(options_cls)) or "(none)"
        owners = [name for name, cls in sorted(PARADIGMS.items())
                  if cls.Options is not options_cls and key in {f.name for f in fields(cls.Options)}]
        if owners and key not in {f.name for f in fields(options_cls)}:
            value = OmegaConf.select(model, f"options.{key}")
            owners = [name for name in owners if _accepts(PARADIGMS[name].Options, key, value)] or owners
            raise NarBenchError(
                f"model.options.{key}={value} is an option of paradigm {' / '.join(owners)}, not of "
                f"'{model.paradigm}': set model.paradigm={owners[0]} to use it, or drop model.options.{key}; "
                f"valid options: {valid}") from None
        raise NarBenchError(
            f"bad key 'model.options.{key}' for paradigm '{model.paradigm}': "
            f"{str(err).splitlines()[0]}; valid options: {valid}"
        ) from None
    return OmegaConf.to_object(merged)


def decode_settings(model: DictConfig) -> dict[str, Any]:
    """{option: value} of the paradigm's decode-only options (``Paradigm.decode_options``), defaults
    filled in; {} for a paradigm without any."""
    keys = PARADIGMS[model.paradigm].decode_options
    if not keys:
        return {}
    options = paradigm_options(model)
    return {key: getattr(options, key) for key in keys}


def _accepts(options_cls: type, key: str, value: Any) -> bool:
    """Whether ``options_cls`` takes ``key=value`` (ZipAR's order=zipar: the ar paradigm's, not maskgit's)."""
    try:
        options_cls(**{key: value})
    except (NarBenchError, TypeError, ValueError):
        return False
    return True


def check_model(model: DictConfig) -> None:
    """One clear error for a bad ``model`` section (unknown paradigm or size, bad options) before
    anything is built."""
    paradigm_options(model)
    model_dims(model)
