"""NAR on video as the authors built it (ThisisBillhe/NAR, ``NAR-videos/models/larp_ar.py``).

Order, mask and targets are NAR's (``nar.py``) on a T x H x W grid: step k produces every token with
t + h + w = k, so a grid takes T + H + W - 2 steps (34 for the released 4 x 16 x 16 latent: the
LARP tokenizer's 1024 codes read as 4 frames of 16 x 16); the training sequence is [condition,
tokens in raster order] under the proximity mask.

What differs from the image model:

- Positions: one absolute embedding row per raster-sequence position (condition tokens + T*H*W),
  added to the inputs after the token dropout, learned (the released recipe) or fixed 1D sin-cos
  (the official ``use_fixed_pe``); no RoPE, so any head_dim works.
- Heads from one stack of L + a + b LLaMA blocks (L = ``model.n_layers``): the *right* head (next
  token along w) reads the output of block L, the *down* head (along h) the output of block L + a,
  the *back* head (along t) the output of the last block, each through its own RMSNorm + linear
  (zero-initialised). The released models use a = b = 1; the official config calls a
  ``attn_num_back`` and b ``attn_num_down`` (crossed with the heads their blocks feed), here they
  are ``Options.down_blocks`` and ``Options.back_blocks``.
- Mixed logits everywhere: a token gets the mean of the logits of every head that reaches it from
  a neighbour (left via right, above via down, previous frame via back). By which of t, h, w are
  > 0: (0,0,0) mean of all three heads on the condition token; one of them > 0: that axis's head
  alone; two: the mean of those two heads; all three: the mean of all three.

Sizes: ``model.size=L`` is the official ``llama-abs-L`` (NAR-L, 369M parameters with vocab 8192,
101 classes and a learned table of 1025 rows: 26 blocks, 3 heads), ``model.size=LP`` is
``llama-abs-LP`` (NAR-LP, 694M). ``nar_bench.checkpoints`` loads the official state dict key for key
(layout ``nar_video``). Decoding runs on the shared engine, one cached forward per step through the
whole stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from torch import Tensor, nn

from nar_bench.checkpoints import Layout, llamagen_key_map
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import guided_while_tokens_before_at_most
from nar_bench.nn.transformer import RMSNorm, TransformerConfig
from nar_bench.paradigms.engine import SequenceParadigm
from nar_bench.paradigms.nar import (
    head_sources,
    mixed_head_logits,
    neighbor_schedule,
    proximity_mask,
    register_head_sources,
)
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers.base import CodeSpace

# Head j predicts the next token along grid axis -(j + 1) (``head_sources``): w, h, t.
HEADS = ("right", "down", "back")
VIDEO_POSITION_EMBEDDINGS = ("learned", "sincos")


@dataclass
class VideoNAROptions:
    position_embedding: str = "learned"  # learned (released recipe) | sincos (official use_fixed_pe)
    down_blocks: int = 1  # blocks between the right and the down head's inputs (official attn_num_back)
    back_blocks: int = 1  # blocks between the down and the back head's inputs (official attn_num_down)

    def __post_init__(self) -> None:
        if self.position_embedding not in VIDEO_POSITION_EMBEDDINGS:
            raise NarBenchError(f"model.options.position_embedding='{self.position_embedding}' is not valid; "
                                f"choose one of: {', '.join(VIDEO_POSITION_EMBEDDINGS)}")
        if self.down_blocks < 0 or self.back_blocks < 0:
            raise NarBenchError(f"model.options.down_blocks / back_blocks must be >= 0; got {self.down_blocks}, "
                                f"{self.back_blocks}")


NAR_VIDEO_HEADS = {"backbone.norm.": "norm_R.", "backbone.output.": "output_R.", "down_norm.": "norm_D.",
                   "down_output.": "output_D.", "back_norm.": "norm_B.", "back_output.": "output_B."}


def nar_video_key_map(model: nn.Module) -> dict[str, str]:
    """NAR-videos LARP_AR: LlamaGen names for embeddings and the whole stack (``layers.0 ..
    L + a + b - 1``), the right / down / back heads as ``norm_R / output_R``, ``norm_D / output_D``,
    ``norm_B / output_B`` and the absolute position table as ``abs_pe`` (a parameter when learned,
    a buffer under use_fixed_pe: both saved)."""
    mapping = llamagen_key_map(model) | {"backbone.pos_embedding": "abs_pe"}
    for k in model.state_dict():
        for ours, official in NAR_VIDEO_HEADS.items():
            if k.startswith(ours):
                mapping[k] = official + k.removeprefix(ours)
    return mapping


NAR_VIDEO_HINTS = {
    r"abs_pe": "position rows = condition tokens + T*H*W: the released models use a 4 x 16 x 16 grid (1025 rows); "
               "set data.frames / data.grid_size to match",
    r"cls_embedding\..*": "number of classes + 1 null row differs (UCF-101: 101 classes)",
    r"tok_embeddings\.weight|output_[RDB]\.weight": "vocabulary differs: the LARP tokenizer has 8192 codes",
    r"layers\..*": "depth or width differs: model.size=L (llama-abs-L) or LP (llama-abs-LP), and "
                   "model.options.down_blocks / back_blocks (official attn_num_back / attn_num_down, 1 each)",
}


@PARADIGMS.register("nar_video")
class VideoNAR(SequenceParadigm):
    """NAR-videos' LARP_AR: absolute positions, a stack of L + down_blocks + back_blocks blocks with
    the right / down / back heads tapped after block L, L + down_blocks and the last one."""

    Options = VideoNAROptions
    video = True
    tiny_overrides = ("data.name=moving_shapes", "data.frames=2")  # 2 x 4 x 4 clips
    official_layout = Layout(nar_video_key_map, derived=r"freqs_cis|layers\.\d+\.attention\.kv_cache\..*",
                             hints=NAR_VIDEO_HINTS,
                             download="download the NAR authors' released NAR-videos checkpoint (NAR-L / NAR-LP on "
                                      "UCF-101) and point model.checkpoint at it")

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: VideoNAROptions | None = None):
        if len(codes.grid) != 3:
            raise NarBenchError(f"paradigm 'nar_video' supports 3D token grids (T, H, W); got grid {codes.grid}; "
                                "for H x W images use model.paradigm=nar")
        if model.n_layers < 1:
            raise NarBenchError("paradigm 'nar_video' needs model.n_layers >= 1 (the right head reads block L)")
        super().__init__(model, codes, options)
        first = model.n_layers + self.options.down_blocks
        self.taps = (model.n_layers, first, first + self.options.back_blocks)  # blocks before each head's input
        for name in HEADS[1:]:  # the right head is the backbone's own norm + output
            output = nn.Linear(model.dim, model.vocab_size, bias=False)
            nn.init.zeros_(output.weight)  # the official model zero-initialises all three outputs
            setattr(self, f"{name}_norm", RMSNorm(model.dim, model.norm_eps))
            setattr(self, f"{name}_output", output)
        register_head_sources(self, *head_sources(self.grid, "mixed", model.cls_token_num))

    def backbone_config(self, model: TransformerConfig) -> TransformerConfig:
        """The whole stack (L + down_blocks + back_blocks blocks) with the absolute position table."""
        extra = self.options.down_blocks + self.options.back_blocks
        return replace(model, n_layers=model.n_layers + extra, position_embedding=self.options.position_embedding,
                       max_seq_len=model.cls_token_num + math.prod(self.grid))

    def schedule(self) -> list[Tensor]:
        return neighbor_schedule(self.grid)

    def train_mask(self) -> Tensor:
        return proximity_mask(self.grid, self.model_cfg.cls_token_num)

    # --- heads ----------------------------------------------------------------------------------
    def head_projections(self) -> list[tuple[nn.Module, Tensor]]:
        """(norm, output weight (V, dim)) of the right, down and back heads."""
        bb = self.backbone
        return [(bb.norm, bb.output.weight), (self.down_norm, self.down_output.weight),
                (self.back_norm, self.back_output.weight)]

    def run_stack(self, h: Tensor, mask: Tensor | None = None, cache_start: int | None = None) -> list[Tensor]:
        """Embedded inputs (B, n, dim) through every block; returns the inputs of the right, down and
        back heads (B, n, dim each): the hidden states after blocks ``self.taps``."""
        taps = []
        for depth, layer in enumerate(self.backbone.layers, start=1):
            h = layer(h, None, mask, cache_start)
            taps.extend(h for tap in self.taps if tap == depth)  # a tap may repeat (0 blocks between)
        return taps

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        taps = self.run_stack(self.backbone.embed(tokens, labels), self.mask)
        return mixed_head_logits(taps, self.head_projections(), self.head_src, self.head_weight)

    # --- decoding (the shared engine in SequenceParadigm.generate) ------------------------------
    def feed(self, x: Tensor, rope: Tensor | None, cache_start: int) -> list[Tensor]:
        return self.run_stack(x, cache_start=cache_start)

    def step_logits(self, step: int, fed: list[Tensor]) -> Tensor:
        rows = slice(self.decode_offsets[step], self.decode_offsets[step + 1])
        return mixed_head_logits(fed, self.head_projections(), self.decode_head_src[rows],
                                 self.decode_head_weight[rows])

    def official_guided_steps(self, interval: int) -> list[bool]:
        """NAR-videos ``ar/generate.py``: like the image model, guidance while the tokens generated
        before a step number at most cfg_interval (the prefill step always guided)."""
        return guided_while_tokens_before_at_most([len(idx) for idx in self.schedule()], interval)
