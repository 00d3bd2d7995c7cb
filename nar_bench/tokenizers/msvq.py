"""VAR's multi-scale residual VQ-VAE ("msvq").

An image becomes K token maps of growing side ``scales[k]`` (coarse to fine), all drawn from one
shared codebook. Scale k quantises what the coarser scales left unexplained: the residual feature
map is area-downsampled to pn x pn, each cell snaps to its nearest code, and the code map is
bicubic-upsampled back to full size and refined by a small phi convolution
(``(1 - r) h + r conv3x3(h)``, r = quant_resi = 0.5; 4 phi convs shared across scales, picked by
the scale's relative position) before it is added to the running reconstruction ``f_hat``.

Codes are the per-scale indices concatenated coarse to fine: (B, sum pn^2), 680 for the paper's
scales 1,2,3,4,5,6,8,10,13,16 and 341 for the synthetic default 1,2,4,8,16.

Module and parameter names match VAR's VQVAE (``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv``, ``quantize.embedding``, ``quantize.quant_resi.qresi_ls.{k}``), so the official
``vae_ch160v4096z32.pth`` loads through ``nar_bench.checkpoints`` (layout ``msvq``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import TOKENIZER_FIX, Layout, load_tokenizer_weights
from nar_bench.errors import NarBenchError
from nar_bench.nn.conv_vae import ConvVAEConfig, Decoder, Encoder
from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.base import MULTISCALE, CodeSpace, Tokenizer, fields_for, preset_config

PAPER_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR at 256px with a /16 VAE: 10 steps, 680 tokens
# Synthetic default (64px shapes, 16x16 latent): a dyadic pyramid. Each coarser map is then an exact
# 2x2 box average of the next one, matching the blocky cell structure of the data; 5 steps and 341
# tokens (half the paper's 680) keep CPU training of the tokenizer and of VAR cheap.
SYNTHETIC_SCALES = (1, 2, 4, 8, 16)


@dataclass
class MSVQConfig:
    """Tokenizer hyper-parameters; the defaults are the small synthetic tokenizer (64px -> 16x16)."""

    # Token-map sides, coarse to fine; the last must equal the latent side (image_size / downsample).
    scales: tuple[int, ...] = SYNTHETIC_SCALES
    vocab_size: int = 256
    z_channels: int = 32  # VAR's Cvae: the width of what VAR is fed
    ch: int = 16
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    using_sa: bool = False
    using_mid_sa: bool = True
    norm_groups: int = 8
    beta: float = 0.25  # commitment weight
    quant_resi: float = 0.5  # phi(h) = (1 - r) h + r conv(h); 0 = no phi
    share_quant_resi: int = 4  # number of phi convs shared across scales

    @property
    def vae(self) -> ConvVAEConfig:
        return fields_for(self, ConvVAEConfig)


PRESETS = {
    "synthetic": MSVQConfig(),
    # VAR's released tokenizer (256px, /16, 4096 x 32 codebook), the layout of vae_ch160v4096z32.pth
    "vae_ch160v4096z32": MSVQConfig(scales=PAPER_SCALES, vocab_size=4096, z_channels=32, ch=160,
                                    ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, using_sa=True, using_mid_sa=True,
                                    norm_groups=32),
}


def check_scales(scales) -> tuple[int, ...]:
    scales = tuple(int(s) for s in scales)
    if len(scales) < 2 or scales[0] < 1 or any(b <= a for a, b in itertools.pairwise(scales)):
        raise NarBenchError(f"scales {list(scales)} must be at least two strictly increasing positive sides, "
                            f"e.g. {list(SYNTHETIC_SCALES)} or {list(PAPER_SCALES)}")
    return scales


def scale_bounds(scales) -> list[tuple[int, int]]:
    """[begin, end) of each scale's tokens in the concatenated code sequence."""
    ends = list(itertools.accumulate(s * s for s in scales))
    return list(zip([0] + ends[:-1], ends, strict=True))


class Phi(nn.Conv2d):
    """(1 - r) h + r conv3x3(h): VAR's refinement of an upsampled code map."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, h: Tensor) -> Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiSet(nn.Module):
    """``count`` phi convs shared across scales; a scale uses the one whose tick is nearest to its
    relative position si / (K - 1) (VAR's PhiPartiallyShared)."""

    def __init__(self, channels: int, ratio: float, count: int, num_scales: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) if ratio else nn.Identity() for _ in range(count))
        margin = 1 / 3 / count if count == 4 else 1 / 2 / count
        ticks = np.linspace(margin, 1 - margin, count)
        # numpy on purpose: with the paper's scales, scale 2 sits exactly between two ticks and VAR's
        # float rounding decides; computing it the same way keeps official checkpoints exact.
        self.index = [int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales)]

    def forward(self, si: int, h: Tensor) -> Tensor:
        return self.qresi_ls[self.index[si]](h)


class ResidualQuantizer(nn.Module):
    """Shared codebook + phi convs; every f_hat path (encode, decode, VAR inputs) goes through
    ``contribution`` so they agree exactly."""

    def __init__(self, cfg: MSVQConfig, scales: tuple[int, ...]):
        super().__init__()
        self.scales, self.beta, self.channels = scales, cfg.beta, cfg.z_channels
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        # nn.Embedding's N(0, 1) codes dwarf the latents and all but a handful die; small codes stay
        # reachable (seen on the shapes data: ~97% of 256 codes used vs 2%).
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.quant_resi = PhiSet(cfg.z_channels, cfg.quant_resi, cfg.share_quant_resi, len(scales))

    @property
    def side(self) -> int:
        return self.scales[-1]

    def contribution(self, si: int, idx: Tensor) -> Tensor:
        """Codes (B, pn^2) of scale ``si`` -> their full-size term (B, C, side, side) of f_hat."""
        pn = self.scales[si]
        h = self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], self.channels, pn, pn)
        if si != len(self.scales) - 1:
            h = F.interpolate(h, size=(self.side, self.side), mode="bicubic")
        return self.quant_resi(si, h)

    def nearest(self, z: Tensor) -> Tensor:
        """(N, C) -> (N,) index of the nearest code in L2."""
        w = self.embedding.weight
        dist = z.square().sum(1, keepdim=True) + w.square().sum(1) - 2 * z @ w.T
        return dist.argmin(1)

    def quantize(self, f: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """f (B, C, side, side) -> (codes per scale [(B, pn^2)], f_hat (B, C, side, side), vq loss).

        f_hat carries gradients to the codebook and the phi convs, not to ``f``. The loss is VAR's:
        mean over scales of beta * |sg(f_hat) - f|^2 (commitment) + |f_hat - sg(f)|^2 (codebook).
        """
        with torch.autocast(f.device.type, enabled=False):
            f = f.float()
            b, c, _, _ = f.shape
            rest, f_hat = f.detach().clone(), torch.zeros_like(f)
            codes, loss = [], f.new_zeros(())
            for si, pn in enumerate(self.scales):
                z = rest if si == len(self.scales) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
                idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn * pn)
                h = self.contribution(si, idx)
                f_hat = f_hat + h
                rest = rest - h.detach()
                codes.append(idx)
                loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
        return codes, f_hat, loss / len(self.scales)

    def next_input(self, si: int, f_hat: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Adds scale ``si``'s codes (B, pn^2) to f_hat (B, C, side, side); returns the new f_hat and
        the next scale's input tokens (B, pn_next^2, C), f_hat area-downsampled (None after the last)."""
        f_hat = f_hat + self.contribution(si, idx)
        if si == len(self.scales) - 1:
            return f_hat, None
        nxt = self.scales[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)


def msvq_buffers(tokenizer: nn.Module) -> dict[str, Tensor]:
    """VAR's codebook-usage statistics (zeros: they do not change the codes)."""
    return {"quantize.ema_vocab_hit_SV": torch.zeros(len(tokenizer.scales), tokenizer.vocab_size)}


MSVQ_HINTS = {
    r"quantize\.embedding\.weight": "codebook size / latent channels differ: set tokenizer.options.vocab_size "
                                    "and z_channels (official: preset vae_ch160v4096z32)",
    r"quantize\.quant_resi\..*": "phi convs differ: set tokenizer.options.share_quant_resi / quant_resi",
    r"(encoder|decoder)\..*|(post_)?quant_conv\..*": "encoder/decoder layout differs: set tokenizer.options "
                                                   "(ch, ch_mult, num_res_blocks, using_sa, using_mid_sa) or "
                                                   "preset=vae_ch160v4096z32 for the official file",
}


@TOKENIZERS.register("msvq")
class MultiScaleVQ(Tokenizer):
    """Images in [-1, 1] <-> multi-scale codes (B, sum pn^2); ``grid`` is the last scale's map."""

    official_layout = Layout(derived=r"quantize\.ema_vocab_hit_SV", official_buffers=msvq_buffers, hints=MSVQ_HINTS,
                             tokenizer_fix=TOKENIZER_FIX,
                             download="download vae_ch160v4096z32.pth from the VAR release, or train one "
                                      "(nar-bench train-tokenizer), and set tokenizer.checkpoint to it")

    def __init__(self, cfg: MSVQConfig | None = None):
        super().__init__()
        self.cfg = cfg or MSVQConfig()
        self.scales = check_scales(self.cfg.scales)
        self.vocab_size, self.z_channels = self.cfg.vocab_size, self.cfg.z_channels
        self.grid = (self.scales[-1], self.scales[-1])
        self.encoder, self.decoder = Encoder(self.cfg.vae), Decoder(self.cfg.vae)
        self.quant_conv = nn.Conv2d(self.z_channels, self.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(self.z_channels, self.z_channels, 3, padding=1)
        self.quantize = ResidualQuantizer(self.cfg, self.scales)
        self.scale_bounds = scale_bounds(self.scales)

    learned = True

    @classmethod
    def config_grid(cls, cfg) -> tuple[int, int]:
        """The last of tokenizer.options.scales (data.grid_size is not read)."""
        side = preset_config(cfg.tokenizer.get("options"), PRESETS, "synthetic", "msvq").scales[-1]
        return side, side

    @classmethod
    def from_config(cls, cfg) -> MultiScaleVQ:
        """Reads ``tokenizer.options`` (``preset``: synthetic | vae_ch160v4096z32, then any
        MSVQConfig field, ``scales`` included) and loads ``tokenizer.checkpoint``."""
        tcfg = preset_config(cfg.tokenizer.get("options"), PRESETS, "synthetic", "msvq")
        scales = check_scales(tcfg.scales)
        latent = cfg.data.image_size // tcfg.vae.downsample
        if scales[-1] != latent:
            raise NarBenchError(
                f"msvq: data.image_size {cfg.data.image_size} / downsample {tcfg.vae.downsample} gives a "
                f"{latent}x{latent} latent but the last scale is {scales[-1]}; end tokenizer.options.scales at "
                f"{latent} or change tokenizer.options.ch_mult (downsample = 2 ** (len(ch_mult) - 1))")
        tok = cls(tcfg)
        if cfg.tokenizer.checkpoint:
            load_tokenizer_weights(tok, cfg.tokenizer.checkpoint)
        return tok

    @property
    def num_tokens(self) -> int:
        return self.scale_bounds[-1][1]

    @property
    def code_space(self) -> CodeSpace:
        """Multi-scale codes; next-scale generators (VAR) are fed through this tokenizer's quantiser."""
        return CodeSpace(self.vocab_size, self.grid, MULTISCALE, self.scales, next_scale=self)

    # --- images <-> features ----------------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> continuous latent f (B, C, side, side)."""
        return self.quant_conv(self.encoder(images))

    def fhat_to_images(self, f_hat: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    # --- codes ----------------------------------------------------------------------------------
    def split_scales(self, codes: Tensor) -> list[Tensor]:
        """(B, L_k) codes of the first k scales -> [(B, pn^2)] per scale."""
        codes = codes.reshape(codes.shape[0], -1)
        ends = [end for _, end in self.scale_bounds]
        if codes.shape[1] not in ends:
            raise ValueError(f"{codes.shape[1]} codes is not a whole number of scales {self.scales} "
                             f"(prefix lengths {ends})")
        return [codes[:, a:b] for a, b in self.scale_bounds[: ends.index(codes.shape[1]) + 1]]

    def codes_to_fhat(self, codes: Tensor) -> Tensor:
        """(B, L_k) codes of the first k scales -> f_hat (B, C, side, side) from those scales."""
        f_hat = 0
        for si, idx in enumerate(self.split_scales(codes)):
            f_hat = f_hat + self.quantize.contribution(si, idx)
        return f_hat

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes (B, sum pn^2), scales concatenated coarse to fine."""
        codes, _, _ = self.quantize.quantize(self.features(images))
        return torch.cat(codes, dim=1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes of all scales (or of the first k: a coarser image) -> (B, 3, H, W) in [-1, 1]."""
        return self.fhat_to_images(self.codes_to_fhat(codes))

    # --- what VAR needs -------------------------------------------------------------------------
    def teacher_inputs(self, codes: Tensor) -> Tensor:
        """VAR's teacher-forcing input (``idxBl_to_var_input``): codes (B, L) -> (B, L - scales[0]^2, C),
        for every scale after the first the f_hat of all coarser scales, area-downsampled to its side."""
        f_hat, inputs = 0, []
        for si, idx in enumerate(self.split_scales(codes)[:-1]):
            f_hat, nxt = self.quantize.next_input(si, f_hat, idx)
            inputs.append(nxt)
        return torch.cat(inputs, dim=1)

    def next_input(self, si: int, f_hat: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """One decoding step of VAR (``get_next_autoregressive_input``); see ResidualQuantizer."""
        return self.quantize.next_input(si, f_hat, idx)

    # --- training -------------------------------------------------------------------------------
    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction MSE + VAR's vq loss, straight-through to the encoder (the contract of
        ``nar_bench.lit.tokenizer_module``)."""
        f = self.features(images)
        codes, f_hat, vq_loss = self.quantize.quantize(f)
        f_st = f_hat.detach() - f.detach() + f  # decoder gradients pass straight to the encoder
        rec_loss = F.mse_loss(self.decoder(self.post_quant_conv(f_st)), images)
        used = torch.cat(codes, 1).unique().numel() / self.vocab_size
        logs = {"rec_loss": rec_loss.detach(), "vq_loss": vq_loss.detach(), "codebook_usage": torch.tensor(used)}
        return rec_loss + vq_loss, logs
