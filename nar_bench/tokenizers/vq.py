"""LlamaGen's VQ tokenizer ("vq"): a conv encoder, an l2-normalised codebook, a conv decoder.

The default preset is VQ-16 (``vq_ds16``): ch 128, ch_mult (1, 1, 2, 2, 4) (downsample 16),
z_channels 256, 16384 codes of dim 8 (~72M parameters), so a 256px image becomes a 16x16 grid.
Parameter and buffer names equal LlamaGen's ``VQModel`` (``encoder.*``, ``decoder.*``,
``quant_conv``, ``post_quant_conv``, ``quantize.embedding``, ``quantize.codebook_used``), so the
official ``vq_ds16_c2i.pt`` (weights under "model") loads by path via ``tokenizer.checkpoint``.

Codes are matched and decoded with l2-normalised vectors (cosine-similarity lookup), as VQ-16.

Training (``training_loss``) keeps LlamaGen's VQ objective minus its perceptual and adversarial
parts: reconstruction (L2 by default, or L1) + codebook loss |sg(z) - z_q|^2 + beta * commitment
loss |z - sg(z_q)|^2 with the straight-through estimator. Omitted: the LPIPS perceptual loss
(weight 1.0 in LlamaGen; needs VGG weights), the PatchGAN discriminator with hinge loss (weight
0.5, from 20k steps) and the codebook entropy loss (ratio 0 in VQ-16 anyway). Without LPIPS/GAN,
reconstructions are blurrier than the official tokenizer's: use the official weights for ImageNet
numbers and train this one for small or synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import TOKENIZER_FIX, Layout, load_tokenizer_weights
from nar_bench.errors import NarBenchError
from nar_bench.nn.llamagen_vae import ConvNetConfig, Decoder, Encoder
from nar_bench.registry import TOKENIZERS
from nar_bench.tokenizers.base import Tokenizer, fields_for, preset_config

USAGE_WINDOW = 65536  # LlamaGen's ``codebook_used``: the indices of the last 65536 encoded tokens


@dataclass
class VQConfig:
    codebook_size: int = 16384
    code_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    beta: float = 0.25  # commitment weight
    rec_loss: str = "l2"  # l2 | l1

    @property
    def net(self) -> ConvNetConfig:
        return fields_for(self, ConvNetConfig)


PRESETS = {
    "vq_ds16": VQConfig(),  # LlamaGen VQ-16, the layout of vq_ds16_c2i.pt / vq_ds16_t2i.pt
    # 64px synthetic shapes -> 16x16 tokens on a CPU: downsample 4, small widths and codebook
    "synthetic": VQConfig(codebook_size=256, code_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                          z_channels=32, norm_groups=8),
}


class VectorQuantizer(nn.Module):
    """Nearest l2-normalised code; LlamaGen's ``VectorQuantizer`` with l2_norm=True."""

    def __init__(self, codebook_size: int, code_dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def nearest(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, C, h, w) -> (unit-norm z as (B, h, w, C), codes (B, h*w) in raster order)."""
        with torch.autocast(z.device.type, enabled=False):  # bf16 distances would pick wrong codes
            z = F.normalize(z.float().permute(0, 2, 3, 1), dim=-1)
            flat, codebook = z.flatten(0, 2), self.codebook()
            dist = flat.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * flat @ codebook.T
            return z, dist.argmin(1).view(z.shape[0], -1)

    def lookup(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """codes (B, h*w) -> quantised latents (B, C, h, w)."""
        return self.codebook()[codes].view(codes.shape[0], *grid, -1).permute(0, 3, 1, 2)

    def record_usage(self, codes: Tensor) -> float:
        """Rolls ``codes`` into the usage window; fraction of the codebook used in the window."""
        window = torch.cat([self.codebook_used, codes.flatten().to(self.codebook_used)])[-USAGE_WINDOW:]
        self.codebook_used.copy_(window)
        return window.unique().numel() / self.embedding.num_embeddings


@TOKENIZERS.register("vq")
class VQTokenizer(Tokenizer):
    """Images in [-1, 1] (B, 3, H, W) <-> codes (B, h*w), h = H / downsample, raster order."""

    graphed_decode = True
    official_layout = Layout(optional=("quantize.codebook_used",),  # a usage log, not a weight
                             tokenizer_fix=f"{TOKENIZER_FIX} (preset vq_ds16 for vq_ds16_c2i.pt)",
                             download="download LlamaGen's VQ-16 tokenizer vq_ds16_c2i.pt (Hugging Face, "
                                      "FoundationVision/LlamaGen) and set tokenizer.checkpoint to its path, or train "
                                      "one (nar-bench train-tokenizer)")

    def __init__(self, cfg: VQConfig | None = None, image_size: int = 256):
        super().__init__()
        self.cfg = cfg or VQConfig()
        side = latent_side(image_size, self.cfg.net.downsample)
        self.grid = (side, side)
        self.vocab_size = self.cfg.codebook_size
        self.encoder, self.decoder = Encoder(self.cfg.net), Decoder(self.cfg.net)
        self.quantize = VectorQuantizer(self.cfg.codebook_size, self.cfg.code_dim, self.cfg.beta)
        self.quant_conv = nn.Conv2d(self.cfg.z_channels, self.cfg.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.cfg.code_dim, self.cfg.z_channels, 1)

    learned = True

    @classmethod
    def config_grid(cls, cfg) -> tuple[int, int]:
        """data.image_size / downsample of the configured architecture (data.grid_size is not read)."""
        side = latent_side(cfg.data.image_size, vq_config(cfg.tokenizer.get("options") or {}).net.downsample)
        return side, side

    @classmethod
    def from_config(cls, cfg) -> VQTokenizer:
        """``tokenizer.options``: ``preset`` (vq_ds16 | synthetic), then any VQConfig field;
        loads ``tokenizer.checkpoint`` when set (official or nar-bench, weights under "model")."""
        tok = cls(vq_config(cfg.tokenizer.get("options") or {}), cfg.data.image_size)
        if cfg.tokenizer.checkpoint:
            load_tokenizer_weights(tok, cfg.tokenizer.checkpoint)
        return tok

    def latents(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> pre-quantisation latents (B, code_dim, h, w)."""
        return self.quant_conv(self.encoder(images))

    def latents_to_images(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        return self.quantize.nearest(self.latents(images))[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, h*w) or (B, h, w) -> (B, 3, H, W) in [-1, 1]; a flat code count other than
        the configured grid's is read as a square grid (another image size)."""
        grid = tuple(codes.shape[1:]) if codes.dim() == 3 else self.grid
        codes = codes.reshape(codes.shape[0], -1)
        if codes.shape[1] != grid[0] * grid[1]:
            side = round(codes.shape[1] ** 0.5)
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes are not a square grid; pass them as (B, h, w)")
            grid = (side, side)
        return self.latents_to_images(self.quantize.lookup(codes, grid)).clamp(-1, 1)

    def training_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """images (B, 3, H, W) in [-1, 1] -> (total loss, detached parts for logging)."""
        z, codes = self.quantize.nearest(self.latents(images))  # z: (B, h, w, C), unit norm
        z_q = self.quantize.codebook()[codes].view_as(z)
        codebook_loss = F.mse_loss(z_q, z.detach())
        commit_loss = self.cfg.beta * F.mse_loss(z, z_q.detach())
        z_st = z + (z_q - z).detach()  # straight-through: decoder gradients flow to the encoder
        recon = self.latents_to_images(z_st.permute(0, 3, 1, 2))
        rec_loss = (F.l1_loss if self.cfg.rec_loss == "l1" else F.mse_loss)(recon, images)
        logs = {"rec_loss": rec_loss.detach(), "codebook_loss": codebook_loss.detach(),
                "commit_loss": commit_loss.detach()}
        if self.training:
            logs["codebook_usage"] = torch.tensor(self.quantize.record_usage(codes))
        return rec_loss + codebook_loss + commit_loss, logs


def latent_side(image_size: int, down: int) -> int:
    """Side of the code grid of ``image_size`` px images at downsample ``down``."""
    if image_size % down:
        raise NarBenchError(f"vq: data.image_size {image_size} is not a multiple of the tokenizer's downsample "
                            f"{down} (2 ** (len(ch_mult) - 1)); use e.g. {max(down, image_size // down * down)}")
    return image_size // down


def vq_config(options) -> VQConfig:
    """``tokenizer.options`` -> VQConfig: a preset, then field overrides; bad keys -> NarBenchError."""
    cfg = preset_config(options, PRESETS, "vq_ds16", "vq")
    cfg.ch_mult = tuple(cfg.ch_mult)
    if cfg.rec_loss not in ("l1", "l2"):
        raise NarBenchError(f"tokenizer.options.rec_loss '{cfg.rec_loss}' for 'vq'; choose l1 or l2")
    widths = sorted({cfg.ch * m for m in cfg.ch_mult})
    if any(c % cfg.norm_groups for c in widths):
        raise NarBenchError(f"vq: channel widths {widths} must be multiples of tokenizer.options.norm_groups "
                            f"{cfg.norm_groups}; change ch / ch_mult or norm_groups")
    return cfg
