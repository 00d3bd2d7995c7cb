"""The one interface every generation paradigm implements (the shared KV-cache decode engine of
the LLaMA-backbone paradigms is ``nar_bench.paradigms.engine``).

A paradigm is built from (model config, code space, options): the code space is the tokenizer's
(``nar_bench.tokenizers.base.CodeSpace``: vocabulary, layout, grid or scales), so a paradigm never
reaches into the tokenizer. It is defined by its schedule, the list of code positions produced at
each decoding step; the training mask, the decode loop and the step count derive from it.
``generate`` returns codes in the code space's own layout, which the tokenizer decodes.
A paradigm whose positions are chosen while decoding (MaskGIT) has no such list: it overrides
``num_steps`` and ``token_steps`` and its ``schedule()`` raises.

Everything else the library and the tests need to know about a paradigm is declared on its class,
once: its capability flags (``code_layout``, ``video``, ``fixed_schedule``, ``flex_attention_training``,
``compiled_decoding``),
which of its options only change decoding (``decode_options``), its released training recipe
(``default_dropouts``), its official checkpoint layout
(``official_layout``) and its test kit (``tiny_overrides``, read by ``tiny_config`` / ``tiny``: a
model that builds in milliseconds on a CPU). Its decode loop calls ``step_logits`` once per step, which is what the
decoding contract (``nar_bench.paradigms.contract``) checks against ``forward``. Adding a paradigm
is one file here (registered with ``PARADIGMS.register``) and one test file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nar_bench.checkpoints import Layout
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig, guided_steps
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.tokenizers.base import MULTISCALE, RASTER, CodeSpace

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from nar_bench.tokenizers.base import Tokenizer

# The shared tiny settings of every paradigm's test kit: a 4 x 4 token grid of 16 px images.
TINY_SETTINGS = ("model.size=tiny", "data.image_size=16", "data.grid_size=4")
LAYOUT_FIX = {RASTER: "use a raster tokenizer (palette, vq)",
              MULTISCALE: "use a multi-scale tokenizer (tokenizer.name=msvq)"}


@dataclass
class NoOptions:
    """Paradigms without options of their own."""


class Paradigm(nn.Module, ABC):
    """Generator over a grid of discrete tokens, conditioned on a class label.

    ``name`` (the config string) is set by ``PARADIGMS.register``; subclasses with options set
    ``Options`` (a dataclass; its fields are the valid keys of ``model.options``).
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # The ``Options`` fields that only change decoding, never the trained weights: a run's checkpoint
    # decodes with other values of them (``nar-bench evaluate --ckpt``), and sweep points that differ
    # only in them (and eval.*) share one training. Declared after checking that training ignores them.
    decode_options: ClassVar[tuple[str, ...]] = ()
    # Training dropouts of the paradigm's released recipe, used where model.*_dropout is null:
    # LlamaGen's GPT (and NAR, PAR on it) trains with 0.1 on tokens, residuals, FFN and labels.
    default_dropouts: ClassVar[dict[str, float]] = {
        "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1, "class_dropout": 0.1}
    # How the released checkpoint maps onto the module (nar_bench.checkpoints); None: no official one
    official_layout: ClassVar[Layout | None] = None

    # --- capability flags -------------------------------------------------------------------------
    # The code space layout it decodes (CodeSpace.layout): raster grids, or multi-scale token maps (VAR).
    code_layout: ClassVar[str] = RASTER
    # Its grid is T x H x W video clips (data.frames), not H x W images.
    video: ClassVar[bool] = False
    # Which positions each step produces is fixed (``schedule()``) rather than chosen while decoding.
    fixed_schedule: ClassVar[bool] = True
    # Training runs a masked LLaMA backbone, whose attention FlexAttention block masks can replace.
    flex_attention_training: ClassVar[bool] = False
    # ``compile_decoding`` switches decoding to a fused, compiled step, and ``generate`` (static shapes,
    # no host sync) captures as one CUDA graph: what the graph engine (``paradigms.generation``) needs.
    compiled_decoding: ClassVar[bool] = False

    # --- test kit ---------------------------------------------------------------------------------
    # Dotlist overrides on top of TINY_SETTINGS that make a tiny, valid config of this paradigm
    # (e.g. the code space it needs); ``tiny_config`` / ``tiny`` build from them.
    tiny_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: Any = None):
        if codes.layout != self.code_layout:
            raise NarBenchError(f"paradigm '{self.name}' decodes {self.code_layout} codes, but the tokenizer's codes "
                                f"are {codes.layout}; {LAYOUT_FIX.get(self.code_layout, 'change tokenizer.name')}")
        super().__init__()
        self.model_cfg = model
        self.codes = codes
        self.grid = codes.grid
        self.options = options if options is not None else self.Options()

    @property
    def num_tokens(self) -> int:
        """Codes per sample (prod(grid) for raster codes, sum of scale^2 for multi-scale ones)."""
        return self.codes.num_tokens

    @abstractmethod
    def schedule(self) -> list[Tensor]:
        """Raster indices (into the flattened grid) of the tokens produced at each decoding step."""

    @property
    def num_steps(self) -> int:
        return len(self.schedule())

    def token_steps(self, sample: int = 0) -> Tensor:
        """(N,) decoding step at which each raster token of sample ``sample`` of the latest
        ``generate`` call was produced (what the order GIFs draw). Fixed orders: the same for every
        sample, from ``schedule()``; data-dependent orders (MaskGIT) override it with what
        ``generate`` recorded."""
        return step_of_positions(self.schedule(), self.num_tokens)

    @abstractmethod
    def step_logits(self, step: int, fed: Any) -> Tensor:
        """Logits (B', n, V) of the n tokens decoding step ``step`` produces, computed from ``fed``
        (what the decode loop holds at that step, the paradigm's own); B' = 2B under CFG. ``generate``
        calls it exactly once per step, which lets the decoding contract record every step."""

    def step_positions(self, step: int, fed: Any) -> Tensor:
        """Positions (into the flattened codes) that ``step_logits(step, fed)`` predicts, in its order:
        (n,) for a fixed schedule (``schedule()[step]``, all of them produced by the step), (B, n)
        where each sample has its own (MaskGIT: every still-masked position, of which it commits some)."""
        return self.schedule()[step]

    def forward_at_step(self, tokens: Tensor, labels: Tensor, step: int) -> Tensor:
        """Teacher-forced logits (B, N, V) on finished codes (B, N) as decoding step ``step`` of the
        latest ``generate`` saw them. Fixed schedules: ``forward`` (the training mask hides what a step
        cannot see); a paradigm that decides its order while decoding overrides it."""
        return self(tokens, labels)

    @abstractmethod
    def train_mask(self) -> Tensor:
        """Boolean (S, S) attention mask of the training sequence; True = may attend."""

    @abstractmethod
    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits (B, N, V), row n predicting raster token n of ``tokens`` (B, N)."""

    def loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

    def cache_dtype(self) -> torch.dtype:
        """KV-cache dtype: the autocast dtype when decoding runs under autocast, else the weights'."""
        weight = next(self.parameters())
        device = weight.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype

    def compile_decoding(self) -> bool:
        """Hook: compiles what decoding runs per step (the bench's ``bench.compile``, the graph
        engine); returns whether it did. A paradigm without a compiled path keeps eager decoding
        (False) and leaves ``compiled_decoding`` False."""
        return False

    @abstractmethod
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        """Samples codes for ``labels`` (B,) in the code space's layout: (B, *grid) for raster codes,
        (B, num_tokens) for multi-scale ones. Restores train/eval mode on return."""

    def official_guided_steps(self, interval: int) -> list[bool] | None:
        """Per decoding step, whether the paradigm's official sampling script guides it when given
        ``cfg_interval=interval`` (>= 0); None when that script has no interval."""
        return None

    def guided_steps(self, sampling: SamplingConfig) -> list[bool]:
        """Per decoding step, whether CFG applies under ``sampling`` (``nn.sampling.guided_steps``)."""
        return guided_steps(sampling, self.num_steps, self.official_guided_steps)

    # --- test kit ---------------------------------------------------------------------------------
    @classmethod
    def tiny_dotlist(cls) -> list[str]:
        """TINY_SETTINGS, this paradigm by name and its ``tiny_overrides``: the overrides of a tiny run
        (e.g. ``nar-bench train experiments/demo.yaml *tiny_dotlist()``)."""
        return [*TINY_SETTINGS, f"model.paradigm={cls.name}", *cls.tiny_overrides]

    @classmethod
    def tiny_config(cls, *overrides: str, base: str | None = None) -> DictConfig:
        """Experiment config (YAML ``base`` or the defaults) <- ``tiny_dotlist()`` <- ``overrides``.
        The class must be registered."""
        from nar_bench.config import load_config

        return load_config(base, [*cls.tiny_dotlist(), *overrides])

    @classmethod
    def tiny(cls, *overrides: str, num_classes: int = 5, seed: int = 0, std: float = 0.1
             ) -> tuple[Paradigm, Tokenizer]:
        """(paradigm, tokenizer) of ``tiny_config(*overrides)``, built on the CPU in milliseconds;
        every weight matrix and embedding random normal (``std``): zero-initialised output layers
        would make all logits equal."""
        from nar_bench.paradigms.model_config import paradigm_options, transformer_config
        from nar_bench.tokenizers import build_tokenizer

        cfg = cls.tiny_config(*overrides)
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(cfg)
        codes = tokenizer.code_space
        model = cls(transformer_config(cfg.model, codes.vocab_size, num_classes), codes, paradigm_options(cfg.model))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, std)
        return model, tokenizer


def grid_coords(grid: tuple[int, ...]) -> Tensor:
    """(N, D) coordinates of the raster-order tokens of a D-dimensional grid."""
    axes = torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij")
    return torch.stack(axes, -1).reshape(-1, len(grid))


def step_of_positions(schedule: list[Tensor], num_tokens: int) -> Tensor:
    """(N,) decoding step at which each raster position is produced."""
    step = torch.full((num_tokens,), -1, dtype=torch.long)
    for s, idx in enumerate(schedule):
        step[idx] = s
    if (step < 0).any():
        raise ValueError("schedule does not cover every token")
    return step


def visibility_mask(seq_steps: Tensor, cls_token_num: int) -> Tensor:
    """Mask over [condition tokens, sequence] where a token sees every token of an earlier or the
    same step. Condition tokens get steps -cls..-1: causal among themselves, visible to all.

    seq_steps: (N,) step of the token each hidden state *predicts from*, in sequence order.
    Returns (cls + N, cls + N) bool.
    """
    steps = torch.cat([torch.arange(-cls_token_num, 0), seq_steps])
    return steps[None, :] <= steps[:, None]
