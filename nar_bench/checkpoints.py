"""Converters between official checkpoints and nar-bench modules, so released weights give the
same logits (and codes) in nar-bench.

Every official layout is a ``Layout`` held by the class it fits, as its ``official_layout``
(``Paradigm`` / ``Tokenizer``): LlamaGen GPT (``ar``), NAR-images GPT (``nar``), PAR GPT + transition
tokens (``par``), NAR-videos LARP_AR (``nar_video``), VAR transformer ``var_d*.pth`` (``var``), VAR's
VQ-VAE ``vae_ch160v4096z32.pth`` (``msvq``) and LlamaGen's VQ-16 ``vq_ds16_c2i.pt`` (``vq``); this
file holds the machinery they share. ``load_official`` and ``to_official`` work for all of them;
``load_generator_weights`` also reads nar-bench's own Lightning checkpoints.
One reader (``read_checkpoint``: safe load, wrapper unwrapping) and one strict loader
(``load_checked``: names missing / unexpected / mis-shaped keys and the setting to change) serve all.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import size_name
from nar_bench.registry import PARADIGMS, TOKENIZERS

# DDP saves {"model": ...}, DeepSpeed {"module": ...}, Lightning {"state_dict": ...}, FSDP the raw dict;
# NAR-videos' trainer {"model": {"name": ..., "args": ..., "sd": ...}}
WRAPPERS = ("model", "module", "state_dict", "sd")
LIGHTNING_PREFIX = "paradigm."  # GeneratorModule keeps the paradigm under this attribute name
SHOWN_KEYS = 5  # how many keys of each kind an error message lists
DOWNLOAD_HINT = (
    "download the official GPT weights (LlamaGen: c2i_{B,L,XL,XXL}_256.pt from the LlamaGen release on "
    "Hugging Face, FoundationVision/LlamaGen; NAR: the NAR authors' released NAR-images checkpoints) "
    "and point model.checkpoint at the .pt file"
)
PARADIGM_FIX = "set model.paradigm / model.size (and data vocab / classes) to match"
PAR_TRANSITION_KEY = "spe_tok_embeddings.special_embeddings.weight"  # PAR's gpt.py: n-1 rows


# --- reading --------------------------------------------------------------------------------------------
def load_file(path: str | Path, download: str = DOWNLOAD_HINT) -> Mapping:
    """``torch.load`` on the CPU of tensors and plain containers only (no arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise NarBenchError(f"checkpoint file '{path}' not found; {download}")
    # Official training scripts also save their argparse namespace next to the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            culprit = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
            if not culprit:
                raise NarBenchError(f"'{path}' is not a readable PyTorch weights file (corrupt or truncated?); "
                                    f"{download}") from None
            raise NarBenchError(f"checkpoint '{path}' holds objects other than tensors, which are not loaded "
                                f"for safety ({culprit}); re-save just its state dict with torch.save") from None
        except (KeyError, EOFError, RuntimeError, ValueError, OSError):  # text, truncated or foreign files
            raise NarBenchError(f"'{path}' is not a readable PyTorch weights file (corrupt or truncated?); "
                                f"{download}") from None
    if not isinstance(checkpoint, Mapping):
        raise NarBenchError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, expected a state dict")
    return checkpoint


def check_torch_file(path: str | Path, key: str) -> None:
    """Cheap look at the first bytes (no weights read): a torch.save file is a zip archive or, in the
    legacy format, a pickle. Anything else (a text file, an image) is refused naming ``key``."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise NarBenchError(f"{key}: '{path}' is not a readable PyTorch weights file (not written by torch.save); "
                            f"point {key} at a .pt / .pth / .ckpt file")


def unwrap(checkpoint: Mapping, prefix: str = "") -> dict[str, Tensor]:
    """The state dict inside a "model" / "module" / "state_dict" wrapper (or the raw dict); with
    ``prefix`` (a Lightning module's attribute, e.g. ``"tokenizer."``) and keys carrying it, just
    those keys, prefix stripped."""
    if not isinstance(checkpoint, Mapping):
        raise NarBenchError(f"checkpoint holds a {type(checkpoint).__name__}, expected a state dict")
    unwrapping = True
    while unwrapping:  # wrappers nest (NAR-videos: model -> sd); a state dict's values are tensors
        unwrapping = False
        for key in WRAPPERS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint, unwrapping = checkpoint[key], True
                break
    if prefix and any(k.startswith(prefix) for k in checkpoint):
        return {k.removeprefix(prefix): v for k, v in checkpoint.items() if k.startswith(prefix)}
    return dict(checkpoint)


def read_checkpoint(source: str | Path | Mapping, prefix: str = "", download: str = DOWNLOAD_HINT
                    ) -> dict[str, Tensor]:
    """State dict from a file path or an already loaded (wrapped or raw) mapping; see ``unwrap``."""
    return unwrap(source if isinstance(source, Mapping) else load_file(source, download), prefix)


# --- strict loading with one readable error ---------------------------------------------------------------
def top_level_first(key: str) -> tuple[int, str]:
    """Sort key listing top-level weights (medusa_norm.weight) before per-layer ones: they tell
    the architectures apart."""
    return key.count("."), key


def describe_keys(label: str, keys: list[str], entries: list[str], hints: Mapping[str, str], count: bool) -> str:
    """'label (n): first entries (+m more) (hints of the listed keys: the first pattern each matches)'."""
    more = f" (+{len(entries) - SHOWN_KEYS} more)" if len(entries) > SHOWN_KEYS else ""
    first_hints = (next((h for pattern, h in hints.items() if re.fullmatch(pattern, k)), None)
                   for k in keys[:SHOWN_KEYS])
    matched = dict.fromkeys(h for h in first_hints if h)
    return (f"{label}{f' ({len(keys)})' if count else ''}: {', '.join(entries[:SHOWN_KEYS])}{more}"
            + (f" ({'; '.join(matched)})" if matched else ""))


def load_checked(module: nn.Module, state: Mapping[str, Tensor], mapping: Mapping[str, str], mismatch: str,
                 fix: str, hints: Mapping[str, str] | None = None) -> nn.Module:
    """Loads ``state`` (keys as named in the file) into ``module`` through ``mapping`` {module key:
    file key}, or raises NarBenchError '<mismatch>: <every missing, unexpected and mis-shaped key,
    with the ``hints`` whose key regex matches them>. <fix>'."""
    hints = hints or {}
    expected = module.state_dict()
    missing = sorted((o for o in mapping.values() if o not in state), key=top_level_first)
    unexpected = sorted(set(state) - set(mapping.values()), key=top_level_first)
    misshaped = sorted(((o, k) for k, o in mapping.items() if o in state and state[o].shape != expected[k].shape),
                       key=lambda pair: top_level_first(pair[0]))
    problems = [describe_keys(label, keys, keys, hints, count=True)
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
    if misshaped:
        entries = [f"{o} {tuple(state[o].shape)} vs {tuple(expected[k].shape)}" for o, k in misshaped]
        problems.append(describe_keys("shape (file vs config)", [o for o, _ in misshaped], entries, hints, count=False))
    if problems:
        raise NarBenchError(f"{mismatch}: {'; '.join(problems)}. {fix}")
    module.load_state_dict({k: state[o] for k, o in mapping.items()})
    return module


# --- official layouts -------------------------------------------------------------------------------------
def same_keys(module: nn.Module) -> dict[str, str]:
    """Modules that use the official names already (VAR, msvq, vq)."""
    return {k: k for k in module.state_dict()}


def llamagen_key_map(model: nn.Module) -> dict[str, str]:
    """LlamaGen GPT (raster AR, and the base of NAR, PAR and NAR video, whose layouts add their own
    keys): nar-bench's backbone uses LlamaGen's names, only the "backbone." prefix differs."""
    return {k: k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.")}


def no_buffers(module: nn.Module) -> dict[str, Tensor]:
    return {}


def no_check(module: nn.Module, state: Mapping[str, Tensor]) -> None:
    return None


@dataclass(frozen=True)
class Layout:
    """How one kind of nar-bench module maps onto an official checkpoint layout."""

    key_map: Callable[[nn.Module], dict[str, str]] = same_keys  # {nar-bench key: official key}
    derived: str = "freqs_cis"  # regex of official buffers nar-bench rebuilds from the config: not loaded
    official_buffers: Callable[[nn.Module], dict[str, Tensor]] = no_buffers  # derived buffers to_official writes
    check: Callable[[nn.Module, Mapping[str, Tensor]], None] = no_check  # targeted errors before the key check
    hints: dict[str, str] = field(default_factory=dict)  # official-key regex -> the setting to change
    optional: tuple[str, ...] = ()  # keys older files lack: the module keeps its own value
    download: str = DOWNLOAD_HINT  # where to get the file (missing-file error)
    tokenizer_fix: str | None = None  # set for tokenizers: the fix named on a mismatch (else PARADIGM_FIX)


TOKENIZER_FIX = "Set tokenizer.options to the architecture the checkpoint was trained with"


def module_name(module: nn.Module) -> str:
    """The registry name of ``module``'s class (``model.paradigm`` / ``tokenizer.name``), else its class name."""
    return getattr(module, "name", type(module).__name__)


def official_layouts() -> list[str]:
    """Names of the registered paradigms and tokenizers that have an official layout."""
    return [name for registry in (PARADIGMS, TOKENIZERS) for name, obj in registry.items()
            if getattr(obj, "official_layout", None) is not None]


def layout_of(module: nn.Module) -> Layout:
    """The official layout of ``module``'s class (its ``official_layout``)."""
    layout = getattr(type(module), "official_layout", None)
    if layout is None:
        raise NarBenchError(f"no official checkpoint converter for '{module_name(module)}'; available: "
                            f"{', '.join(official_layouts())} (a nar-bench Lightning checkpoint, .ckpt, loads into "
                            "every paradigm)")
    return layout


def key_map(module: nn.Module) -> dict[str, str]:
    """{nar-bench key: official key} of ``module`` in its class's official layout."""
    mapping = layout_of(module).key_map(module)
    unmapped = sorted(set(module.state_dict()) - set(mapping))
    if unmapped:
        raise ValueError(f"converter for '{module_name(module)}' leaves keys unmapped: {unmapped[:SHOWN_KEYS]}")
    return mapping


def to_official(module: nn.Module) -> dict[str, Tensor]:
    """The module's weights under the official key names, with the derived buffers the official
    files carry (a raw, FSDP-style state dict)."""
    mapping = key_map(module)
    state = {mapping[k]: v.detach().clone() for k, v in module.state_dict().items()}
    return state | layout_of(module).official_buffers(module)


def load_official(module: nn.Module, source: str | Path | Mapping, prefix: str = "") -> nn.Module:
    """Loads an official checkpoint (file path, wrapped or raw state dict) into ``module`` in place,
    in its class's official layout; ``prefix`` see ``unwrap``.

    Raises NarBenchError naming missing / unexpected / mis-shaped keys, the setting to change and,
    for paradigms, the model size the checkpoint looks like.
    """
    layout = layout_of(module)
    origin = "checkpoint" if isinstance(source, Mapping) else f"checkpoint '{source}'"
    return load_official_state(module, read_checkpoint(source, prefix, layout.download), origin)


def load_official_state(module: nn.Module, state: Mapping[str, Tensor], origin: str) -> nn.Module:
    """``load_official`` of an unwrapped state dict; ``origin`` names it in errors."""
    layout = layout_of(module)
    state = {k: v for k, v in state.items() if not re.fullmatch(layout.derived, k)}
    own = module.state_dict()
    mapping = key_map(module)
    for key in layout.optional:
        state.setdefault(mapping[key], own[key])
    layout.check(module, state)
    if layout.tokenizer_fix:
        what, fix = f"the '{module_name(module)}' tokenizer configured by tokenizer.options", layout.tokenizer_fix
    else:
        what, fix = describe_model(module), f"The checkpoint looks like {describe_checkpoint(state)}; {PARADIGM_FIX}"
    return load_checked(module, state, mapping, f"{origin} does not fit {what}", fix, layout.hints)


def load_tokenizer_weights(tokenizer: nn.Module, path: str | Path) -> nn.Module:
    """``tokenizer.checkpoint``: an official file in the tokenizer's layout (msvq, vq) or a nar-bench
    Lightning checkpoint holding the tokenizer under ``tokenizer.`` (TokenizerModule, GeneratorModule)."""
    return load_official(tokenizer, path, prefix="tokenizer.")


def load_generator_weights(paradigm: nn.Module, path: str | Path) -> nn.Module:
    """``model.checkpoint``: a nar-bench Lightning checkpoint (``state_dict`` with the paradigm under
    ``paradigm.``, any paradigm) or an official file in the paradigm's layout (ar, nar, par, var, ...)."""
    layout = getattr(type(paradigm), "official_layout", None)
    checkpoint = load_file(path, layout.download if layout is not None else DOWNLOAD_HINT)
    lightning = checkpoint.get("state_dict")
    if not (isinstance(lightning, Mapping) and any(k.startswith(LIGHTNING_PREFIX) for k in lightning)):
        return load_official_state(paradigm, unwrap(checkpoint), f"checkpoint '{path}'")
    trained = (checkpoint.get("hyper_parameters") or {}).get("cfg", {}).get("model", {})
    was = f"model.paradigm={trained.get('paradigm')} model.size={trained.get('size')}" if trained else "unknown"
    return load_checked(paradigm, unwrap(checkpoint, LIGHTNING_PREFIX), {k: k for k in paradigm.state_dict()},
                        f"checkpoint '{path}' does not fit {describe_model(paradigm)}",
                        f"The run that wrote it used {was}; {PARADIGM_FIX}")


def load_par_checkpoint(paradigm: nn.Module, source: str | Path | Mapping,
                        transition_key: str = PAR_TRANSITION_KEY) -> nn.Module:
    """``load_official`` for PAR files that keep the transition tokens under another key."""
    state = read_checkpoint(source, download=layout_of(paradigm).download)
    if transition_key in state:
        state[PAR_TRANSITION_KEY] = state.pop(transition_key)
    return load_official(paradigm, state)


# --- describing mismatches in error messages ----------------------------------------------------------------
def describe_model(model: nn.Module) -> str:
    cfg = model.model_cfg
    size = size_name(cfg.dim, cfg.n_layers)
    return (f"paradigm '{model.name}' model.size={size or 'custom'} (dim {cfg.dim}, {cfg.n_layers} layers, "
            f"vocab {cfg.vocab_size}, {cfg.num_classes} classes)")


def describe_checkpoint(state: Mapping[str, Tensor]) -> str:
    """Architecture inferred from an official state dict, e.g. 'a NAR GPT ... model.size=B (dim 768, ...)'."""
    if "mask_token" in state and "token_emb.weight" in state:  # LPD (MAR-style decoder): before VAR's class_emb
        vocab, dim = state["token_emb.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        side = math.isqrt(state["pos_embed"].shape[1] - 1) if "pos_embed" in state else "?"
        classes = state["class_emb.weight"].shape[0] if "class_emb.weight" in state else "?"
        size = size_name(dim, depth) or "custom (no MODEL_SIZES entry)"
        return (f"an LPD model (position queries: use model.paradigm=lpd) of model.size={size} (dim {dim}, "
                f"{depth} layers, vocab {vocab}, {classes} classes, {side}x{side} tokens)")
    if "class_emb.weight" in state:  # VAR: width 64 * depth, class table with a null row
        classes, width = state["class_emb.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        vocab = state["head.weight"].shape[0] if "head.weight" in state else "?"
        return (f"a VAR transformer of depth {depth}, width {width}, vocab {vocab}, {classes - 1} classes "
                f"(var_d{depth}.pth; model.size=d{depth})")
    if "tok_embeddings.weight" not in state:
        return "neither a LlamaGen-style GPT (no tok_embeddings.weight) nor a VAR (no class_emb.weight)"
    vocab, dim = state["tok_embeddings.weight"].shape
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
    vertical = "medusa_output.weight" in state
    video = "output_B.weight" in state  # NAR-videos: right / down / back heads on one stack
    # NAR stores its vertical block as one more layer; NAR-videos two (the released a = b = 1)
    n_layers = len(blocks) - int(vertical) - 2 * int(video)
    if video:
        rows = state["abs_pe"].shape[1] if "abs_pe" in state else "?"
        kind = (f"a NAR video GPT (right/down/back heads, {rows} position rows: use model.paradigm=nar_video; "
                "layers counted with model.options.down_blocks = back_blocks = 1)")
    elif vertical:
        kind = "a NAR GPT (with vertical head: use model.paradigm=nar)"
    elif PAR_TRANSITION_KEY in state:
        kind = (f"a PAR GPT ({state[PAR_TRANSITION_KEY].shape[0] + 1} regions: use model.paradigm=par "
                f"model.options.regions={state[PAR_TRANSITION_KEY].shape[0] + 1})")
    elif "pos_instruct_embeddings" in state:
        kind = "a RandAR GPT (position instruction embedding: use model.paradigm=randar)"
    else:
        kind = "a LlamaGen GPT (no vertical head)"
    size = size_name(dim, n_layers)
    table = state.get("cls_embedding.embedding_table.weight")
    classes = f", {table.shape[0] - 1} classes" if table is not None else ""
    return (f"{kind} of model.size={size or 'custom (no MODEL_SIZES entry)'} "
            f"(dim {dim}, {n_layers} layers, vocab {vocab}{classes})")
