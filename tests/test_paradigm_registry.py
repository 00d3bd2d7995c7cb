"""What every registered paradigm declares and passes, parametrized over the registry: its test kit
builds, its capability flags say what it does, its official layout round-trips, and its decoding
equals its teacher-forced forward (the contract of ``nar_bench.paradigms.contract``).

The checks are plain functions, so they also run on ``ColumnOrderAR`` below: a paradigm defined,
registered and built from a config in this file alone, which is all adding a paradigm takes (one
library file, here inlined, and one test file)."""

from __future__ import annotations

import pytest
import torch

import nar_bench.paradigms  # noqa: F401  (registers the paradigms)
from nar_bench.checkpoints import load_official, to_official
from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import Attention
from nar_bench.paradigms import build_paradigm
from nar_bench.paradigms.base import Paradigm, step_of_positions
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.model_config import DROPOUTS, check_model
from nar_bench.paradigms.raster_ar import RasterAR
from nar_bench.registry import PARADIGMS
from nar_bench.tokenizers import build_tokenizer
from nar_bench.tokenizers.base import MULTISCALE
from nar_bench.tokenizers.checks import check_tokenizer_inputs

NAMES = sorted(PARADIGMS)
DECODE_ATOL = 1e-5  # fp32 round-off: prefix attention vs masked full attention, gathers vs full heads


# --- the checks every paradigm passes -------------------------------------------------------------------
def check_kit(cls: type[Paradigm]) -> Paradigm:
    """The kit's config is one a training run accepts, and its model generates codes of its code space."""
    cfg = cls.tiny_config()
    check_model(cfg.model)
    check_tokenizer_inputs(cfg)
    model, tokenizer = cls.tiny()
    assert type(model) is cls and model.num_steps >= 1
    codes = model.generate(torch.tensor([0, 4]), SamplingConfig(cfg_scale=2.0, top_k=4))
    shape = (2, model.num_tokens) if cls.code_layout == MULTISCALE else (2, *tokenizer.grid)
    assert codes.shape == shape and codes.min() >= 0 and codes.max() < tokenizer.vocab_size
    assert model.training  # generate restores the mode
    return model


def check_flags(cls: type[Paradigm]) -> None:
    """Each capability flag agrees with what the kit's model does."""
    model, tokenizer = cls.tiny()
    assert model.codes.layout == cls.code_layout
    assert (len(model.grid) == 3) == cls.video
    model.generate(torch.tensor([1]), SamplingConfig())
    if cls.fixed_schedule:
        schedule = model.schedule()
        assert len(schedule) == model.num_steps
        step = step_of_positions(schedule, model.num_tokens)  # every token exactly once (raises otherwise)
        assert torch.equal(model.token_steps(), step)
    else:
        with pytest.raises(NarBenchError, match="no fixed raster schedule"):
            model.schedule()
        assert torch.bincount(model.token_steps(), minlength=model.num_steps).tolist() == model.step_counts()
    llama_attention = any(isinstance(m, Attention) for m in model.modules())
    assert cls.flex_attention_training == (llama_attention and not model.train_mask().all())
    assert set(cls.default_dropouts) == set(DROPOUTS)
    # the graph engine's flag: set exactly where the class has a compiled decode path of its own
    assert cls.compiled_decoding == (cls.compile_decoding is not Paradigm.compile_decoding)


def check_official_layout(cls: type[Paradigm]) -> None:
    """With an official layout, weights written in it load into a fresh model key for key; without
    one, conversion is one error naming the paradigms that have one."""
    source, _ = cls.tiny(seed=1)
    target, _ = cls.tiny(seed=2)
    if cls.official_layout is None:
        with pytest.raises(NarBenchError, match=f"no official checkpoint converter for '{cls.name}'"):
            to_official(source)
        return
    load_official(target, to_official(source))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def check_contract(cls: type[Paradigm], cfg_scale: float) -> None:
    model, _ = cls.tiny()
    sampling = SamplingConfig(cfg_scale=cfg_scale, top_k=8)
    gap = decode_forward_gap(model, torch.tensor([0, 3, 1]), sampling, torch.Generator().manual_seed(0))
    assert gap < DECODE_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_test_kit_builds_a_tiny_model_that_generates(name):
    check_kit(PARADIGMS[name])


@pytest.mark.parametrize("name", NAMES)
def test_capability_flags_say_what_the_paradigm_does(name):
    check_flags(PARADIGMS[name])


@pytest.mark.parametrize("name", NAMES)
def test_official_layout_round_trip(name):
    check_official_layout(PARADIGMS[name])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["cfg_off", "cfg_on"])
def test_decoding_equals_teacher_forced_forward(name, cfg_scale):
    check_contract(PARADIGMS[name], cfg_scale)


def test_a_paradigm_refuses_a_code_space_of_another_layout():
    raster_cfg = PARADIGMS["ar"].tiny_config()
    multiscale = build_tokenizer(PARADIGMS["var"].tiny_config()).code_space
    with pytest.raises(NarBenchError, match="paradigm 'ar' decodes raster codes, but the tokenizer's codes are "
                                            "multiscale; use a raster tokenizer"):
        build_paradigm(raster_cfg, multiscale, 5)


# --- a paradigm added by one file: column-order raster AR -------------------------------------------------
class ColumnOrderAR(RasterAR):
    """LlamaGen's next-token prediction in column order (top to bottom, then left to right). The
    training sequence is [condition, tokens in decoding order] under the causal mask, each token at
    the rotary row of its own cell; ``forward`` permutes the logits back to raster order. Decoding is
    the shared engine's (one token per step, KV cache filled in schedule order)."""

    def __init__(self, model, codes, options=None):
        super().__init__(model, codes, options)
        order = torch.cat(self.schedule())  # decoding order -> raster index
        cls_n = model.cls_token_num
        self.register_buffer("input_order", order, persistent=False)
        self.register_buffer("raster_rank", torch.argsort(order), persistent=False)
        self.register_buffer("sequence_rope", torch.cat([self.rope[:cls_n], self.rope[cls_n + order]]),
                             persistent=False)

    def schedule(self) -> list[torch.Tensor]:
        h, w = self.grid
        return list(torch.arange(h * w).view(h, w).T.reshape(-1, 1))

    def forward(self, tokens, labels):
        h = self.backbone.embed(tokens[:, self.input_order], labels)
        h = self.backbone.run_blocks(h, self.sequence_rope, self.mask)
        start = self.model_cfg.cls_token_num - 1
        return self.backbone.head(h[:, start : start + self.num_tokens])[:, self.raster_rank]


@pytest.fixture
def column_ar():
    """ColumnOrderAR registered as 'column_ar' for one test, then removed again."""
    cls = PARADIGMS.register("column_ar")(ColumnOrderAR)
    yield cls
    del PARADIGMS["column_ar"]


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["cfg_off", "cfg_on"])
def test_a_new_paradigm_passes_every_registry_check(column_ar, cfg_scale):
    model = check_kit(column_ar)
    assert model.num_steps == 16 and [idx.item() for idx in model.schedule()[:5]] == [0, 4, 8, 12, 1]
    check_flags(column_ar)
    check_official_layout(column_ar)  # LlamaGen's layout, inherited with the architecture
    check_contract(column_ar, cfg_scale)


def test_a_new_paradigm_is_built_from_a_config_and_trains(column_ar):
    from nar_bench.lit.module import GeneratorModule

    cfg = column_ar.tiny_config("eval.samples_per_class=1")
    assert cfg.model.paradigm == "column_ar"
    module = GeneratorModule(cfg, num_classes=5)
    assert type(module.paradigm) is ColumnOrderAR
    tokens, labels = torch.randint(0, module.tokenizer.vocab_size, (4, 16)), torch.arange(4)
    loss = module.paradigm.loss(tokens, labels)
    loss.backward()
    assert all(p.grad is not None for p in module.paradigm.parameters())


def test_the_example_paradigm_is_registered_only_inside_its_tests():
    assert "column_ar" not in PARADIGMS and not any(cls is ColumnOrderAR for cls in PARADIGMS.values())
