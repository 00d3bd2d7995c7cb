"""Converters for VAR's released checkpoints: the transformer ``var_d{16,20,24,30}.pth`` and the
multi-scale VQ-VAE ``vae_ch160v4096z32.pth``.

Our modules use VAR's parameter names, so conversion only drops the official files' derived buffers
(masks, level ids, the zero k-bias, codebook-usage statistics) and checks that every key and shape
matches, with an error that names the setting to change. ``*_to_official`` writes the official
layout back (used by the round-trip tests and to hand weights to VAR's own code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from nar_bench.errors import NarBenchError

# Official buffers that our modules rebuild from the config instead of storing.
VAR_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")
MSVQ_BUFFERS = re.compile(r"^quantize\.ema_vocab_hit_SV$")


def read_state_dict(source: str | Path | Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A state dict from a file or mapping. Unwraps Lightning checkpoints (``state_dict``) and strips
    ``prefix`` (e.g. ``"tokenizer."`` for a TokenizerModule checkpoint) when every key has it."""
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise NarBenchError(f"checkpoint '{path}' not found; check the path in the config")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = dict(sd["state_dict"])
    if prefix and sd and all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _load_checked(module: nn.Module, sd: dict[str, Tensor], what: str, hints: dict[str, str]) -> None:
    """Strict load with one readable error: missing / unexpected keys and shape mismatches, each
    shape mismatch with the hint registered for its key (by regex)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    problems = []
    for key in sorted(set(own) & set(sd)):
        if own[key].shape != sd[key].shape:
            hint = next((h for pattern, h in hints.items() if re.fullmatch(pattern, key)), "")
            problems.append(f"{key}: checkpoint {tuple(sd[key].shape)} vs model {tuple(own[key].shape)}"
                            + (f" ({hint})" if hint else ""))
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            hint = next((h for pattern, h in hints.items() if any(re.fullmatch(pattern, k) for k in keys)), "")
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{label} keys {', '.join(keys[:5])}{more}" + (f" ({hint})" if hint else ""))
    if problems:
        raise NarBenchError(f"{what} does not match the model: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


# --- VAR transformer ----------------------------------------------------------------------------
def var_from_official(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if not VAR_BUFFERS.match(k)}


def var_to_official(var: nn.Module) -> dict[str, Tensor]:
    """Our VAR's state dict with the buffers VAR's own ``load_state_dict(strict=True)`` expects."""
    sd = {k: v.detach().clone() for k, v in var.state_dict().items()}
    sd["lvl_1L"] = var.lvl_1L.view(1, -1).clone()
    sd["attn_bias_for_masking"] = torch.zeros(var.mask.shape).masked_fill(~var.mask.cpu(), float("-inf"))[None, None]
    for i, block in enumerate(var.blocks):
        sd[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros_like(block.attn.q_bias)
    return sd


def load_var_state_dict(var: nn.Module, source: str | Path | Mapping[str, Tensor]) -> None:
    """Loads an official ``var_d*.pth`` (or our own VAR state dict) into ``var``."""
    sd = var_from_official(read_state_dict(source))
    depths = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(depths) + 1 if depths else 0
    if depth != len(var.blocks):
        raise NarBenchError(f"VAR checkpoint has depth {depth} (var_d{depth}.pth) but the model has {len(var.blocks)} "
                            f"blocks; set model.size=d{depth}")
    _load_checked(var, sd, "VAR checkpoint", {
        r"pos_1LC|lvl_embed\.weight|pos_start": "token count / scales differ: official checkpoints use "
                                               "model.options.scales=[1,2,3,4,5,6,8,10,13,16]",
        r"class_emb\.weight": "number of classes + 1 null class differs (ImageNet: 1000)",
        r"head\.(weight|bias)": "vocabulary differs: the official msvq codebook has 4096 codes",
        r"word_embed\.weight": "latent channels differ: set model.options.vae_channels to the tokenizer's z_channels",
        r"blocks\.\d+\.attn\.scale_mul_1H11": "attention l2-norm setting differs: set model.options.attn_l2_norm "
                                              "(true for the released checkpoints)",
        r"blocks\..*|head_nm\..*": "width differs: VAR width is 64 * depth; use model.size=d<depth>",
    })


# --- multi-scale VQ-VAE ---------------------------------------------------------------------------
def msvq_from_official(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if not MSVQ_BUFFERS.match(k)}


def msvq_to_official(tokenizer: nn.Module) -> dict[str, Tensor]:
    """Our tokenizer's state dict plus VAR's codebook-usage buffer (zeros: it is only statistics)."""
    sd = {k: v.detach().clone() for k, v in tokenizer.state_dict().items()}
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(len(tokenizer.scales), tokenizer.vocab_size)
    return sd


def load_msvq_state_dict(tokenizer: nn.Module, source: str | Path | Mapping[str, Tensor]) -> None:
    """Loads ``vae_ch160v4096z32.pth`` (or a checkpoint of our own msvq, including a TokenizerModule
    Lightning checkpoint) into the msvq tokenizer."""
    sd = msvq_from_official(read_state_dict(source, prefix="tokenizer."))
    _load_checked(tokenizer, sd, "msvq checkpoint", {
        r"quantize\.embedding\.weight": "codebook size / latent channels differ: set tokenizer.options.vocab_size "
                                        "and z_channels (official: preset vae_ch160v4096z32)",
        r"quantize\.quant_resi\..*": "phi convs differ: set tokenizer.options.share_quant_resi / quant_resi",
        r"(encoder|decoder)\..*|(post_)?quant_conv\..*": "encoder/decoder layout differs: set tokenizer.options "
                                                       "(ch, ch_mult, num_res_blocks, using_sa, using_mid_sa) or "
                                                       "preset=vae_ch160v4096z32 for the official file",
    })

