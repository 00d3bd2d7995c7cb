"""The decode engine shared by the paradigms on the LLaMA backbone (raster AR, PAR, NAR): a static
KV cache filled in schedule order, one cached forward per decoding step, every token of a step
sampled in one call."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from nar_bench.nn.fused_decode import enable_fused_decode
from nar_bench.nn.modes import eval_mode
from nar_bench.nn.sampling import SamplingConfig, sample_step, with_null_class
from nar_bench.nn.transformer import Transformer, TransformerConfig, condition_rope, rope_table, setup_kv_caches
from nar_bench.paradigms.base import Paradigm, grid_coords
from nar_bench.tokenizers.base import CodeSpace


class SequenceParadigm(Paradigm):
    """Paradigm on the shared LLaMA backbone whose decoding feeds one group of tokens per step.

    The training sequence is [condition, tokens in raster order] under ``train_mask``. Decoding
    fills a static KV cache in schedule order (``step_feeds``), so each step attends to the filled
    prefix without a mask (ZipAR, whose steps may not see all of it, passes a per-step mask in
    ``feed``). Subclasses define the schedule, the mask, ``forward`` and ``step_logits`` (how hidden
    states become logits for their targets).
    """

    flex_attention_training = True
    compiled_decoding = True

    def __init__(self, model: TransformerConfig, codes: CodeSpace, options: Any = None):
        super().__init__(model, codes, options)
        self.backbone = Transformer(self.backbone_config(model))
        rope = None  # absolute position embeddings live in the backbone instead
        if self.backbone.cfg.position_embedding == "rope":
            rope = condition_rope(rope_table(grid_coords(self.grid), model.head_dim, model.rope_base),
                                  model.cls_token_num)
        self.register_buffer("rope", rope, persistent=False)  # (cls + N, head_dim/2, 2), raster order
        self.register_buffer("mask", self.train_mask(), persistent=False)

    def backbone_config(self, model: TransformerConfig) -> TransformerConfig:
        """Config of ``self.backbone`` (the model config itself unless a paradigm extends the stack)."""
        return model

    def rope_rows(self, positions: Tensor | slice) -> Tensor | None:
        """Rotary rows of sequence ``positions``; None without RoPE."""
        return None if self.rope is None else self.rope[positions]

    def hidden_states(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced backbone output (B, cls + N, dim) for the raster sequence."""
        h = self.backbone.embed(tokens, labels)
        return self.backbone.run_blocks(h, self.rope, self.mask)

    # --- decoding -------------------------------------------------------------------------------
    def feed(self, x: Tensor, rope: Tensor | None, cache_start: int) -> Any:
        """Runs embedded inputs (B, n, dim) through the cached model; returns what
        ``step_logits`` needs (by default the backbone's hidden states)."""
        return self.backbone.run_blocks(x, rope, cache_start=cache_start)

    def decode_inputs(self, step: int, tokens: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs fed after sampling ``step``: embedded tokens (B', m, dim) and their rotary rows
        (m, head_dim/2, 2), from the step's new tokens (B', n) at raster indices ``idx`` (n,).
        By default m = n; paradigms that feed extra inputs (PAR's transition tokens) append them.
        The cache holds cls + N positions and the last step is never fed, so up to
        ``len(schedule()[-1])`` extra inputs fit."""
        positions = self.model_cfg.cls_token_num + idx
        return self.backbone.add_positions(self.backbone.tok_embeddings(tokens), positions), self.rope_rows(positions)

    def prefill_inputs(self, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """The first inputs fed: embedded condition tokens (B', cls, dim) for labels ``cond`` (B',)
        and their rotary rows."""
        cls_n = self.model_cfg.cls_token_num
        x = self.backbone.cls_embedding(cond)[:, None].expand(-1, cls_n, -1)
        return self.backbone.add_positions(x, slice(0, cls_n)), self.rope_rows(slice(0, cls_n))

    @abstractmethod
    def step_logits(self, step: int, fed: Any) -> Tensor:
        """Logits (B, n_step, V) for the tokens of ``step`` from the state fed at step-1 (or the
        condition, for step 0), in the order of ``schedule()[step]``."""

    def compile_decoding(self, attention: str = "auto") -> bool:
        """Routes every cached block step through the fused decode path
        (``nar_bench.nn.fused_decode``): two torch.compile regions per block (norm + QKV;
        wo + norm + SwiGLU + residuals), compiled once for all blocks, steps and batch sizes, and a
        decode attention kernel that applies RoPE, writes the KV cache and reads only its filled prefix.
        Safe to call twice."""
        enable_fused_decode(self, compile=True, attention=attention)
        return True

    def step_feeds(self) -> list[tuple[Tensor, Tensor]]:
        """Per decoding step but the last, what is fed after it: (sources, slots), each (m,): the raster
        indices whose decoded tokens are fed, and the raster positions (rotary rows) they are fed at.
        By default the step's own tokens at their own positions (``schedule()``); ZipAR also feeds a
        copy of an earlier token at another slot (``paradigms.zipar``)."""
        return [(idx, idx) for idx in self.schedule()[:-1]]

    def cache_length(self) -> int:
        """KV-cache rows a generation fills: the condition plus every input ``step_feeds`` plans, and at
        least cls + N (the room ``decode_inputs`` may use for extra inputs, PAR's transition tokens)."""
        planned = sum(len(src) for src, _ in self.step_feeds())
        return self.model_cfg.cls_token_num + max(self.num_tokens, planned)

    def device_schedule(self, device: torch.device) -> list[Tensor]:
        """The schedule's index tensors on ``device``, copied once: the decode loop then does no
        host-to-device copies (required to capture it in a CUDA graph)."""
        cached = getattr(self, "_device_schedule", None)
        if cached is None or cached[0].device != device:
            cached = [idx.to(device) for idx in self.schedule()]
            self._device_schedule = cached
        return cached

    def device_feeds(self, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """``step_feeds`` on ``device``, copied once (as ``device_schedule``)."""
        cached = getattr(self, "_device_feeds", None)
        if cached is None or (cached and cached[0][0].device != device):
            cached = [(src.to(device), slots.to(device)) for src, slots in self.step_feeds()]
            self._device_feeds = cached
        return cached

    @torch.inference_mode()
    def generate(self, labels: Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self):
            cls_n, steps = self.model_cfg.cls_token_num, self.device_schedule(labels.device)
            feeds = self.device_feeds(labels.device)
            cond = with_null_class(labels, self.model_cfg.num_classes) if sampling.uses_cfg else labels
            setup_kv_caches(self, cond.shape[0], self.cache_length(), self.cache_dtype())

            fed = self.feed(*self.prefill_inputs(cond), cache_start=0)
            out = labels.new_empty(labels.shape[0], self.num_tokens)
            pos = cls_n
            guided = self.guided_steps(sampling)
            for s, idx in enumerate(steps):
                new = sample_step(self.step_logits(s, fed), sampling, guided[s], generator)
                out[:, idx] = new
                if s + 1 < len(steps):
                    src, slots = feeds[s]
                    fed_tokens = out[:, src].repeat(2, 1) if sampling.uses_cfg else out[:, src]
                    x, rope = self.decode_inputs(s, fed_tokens, slots)
                    fed = self.feed(x, rope, cache_start=pos)
                    pos += x.shape[1]
        return out.view(labels.shape[0], *self.grid)
