"""ZipAR on the ``ar`` paradigm (``model.options.order=zipar``): a decode-only order of a raster checkpoint.

The official numbers below come from replaying the bookkeeping of ThisisBillhe/ZipAR
``LlamaGen-ZipAR/autoregressive/models/generate_zipar.py`` (``generate`` + ``decode_n_tokens_zipar``) with
token ids standing for their raster index: the steps it takes, the raster indices each model forward samples,
and the auxiliary (token, slot) inputs it feeds to start a row.
"""

from __future__ import annotations

import pytest
import torch

from nar_bench.errors import NarBenchError
from nar_bench.nn.fused_decode import disable_fused_decode, enable_fused_decode
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.base import step_of_positions
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.raster_ar import RasterAR, RasterAROptions
from nar_bench.paradigms.zipar import decode_visibility, zipar_num_steps, zipar_plan
from tests.conftest import on_grid, randomize_heads

# 16 x 16 grid (LlamaGen at 256 px): official model forwards (its printed 'Model forward times') per window.
OFFICIAL_STEPS_16 = {2: 60, 3: 74, 4: 88, 6: 116, 8: 144, 12: 200, 15: 242}
# 6 x 6 grid, window 2: the raster indices sampled at each official forward, and the auxiliary inputs.
OFFICIAL_STEPS_6_W2 = [[0], [1], [2], [3], [4], [5], [6], [7], [8, 12], [9, 13], [10, 14, 18], [11, 15, 19],
                       [16, 20, 24], [17, 21, 25], [22, 26, 30], [23, 27, 31], [28, 32], [29, 33], [34], [35]]
OFFICIAL_AUX_6_W2 = [(5, 11), (9, 17), (15, 23), (21, 29)]  # (copied token, raster slot it is fed at)


def zipar(cfg, grid, window, seed=0) -> RasterAR:
    torch.manual_seed(seed)
    return randomize_heads(RasterAR(*on_grid(cfg, grid), RasterAROptions("zipar", window)).eval())


@pytest.mark.parametrize("window, steps", sorted(OFFICIAL_STEPS_16.items()))
def test_step_count_matches_official_on_16x16(tiny_cfg, window, steps):
    assert zipar_num_steps((16, 16), window) == steps == 2 * 16 + 14 * window
    assert RasterAR(*on_grid(tiny_cfg, (16, 16)), RasterAROptions("zipar", window)).num_steps == steps


def test_steps_and_row_starts_match_official_on_6x6():
    plan = zipar_plan((6, 6), 2)
    assert plan.steps == OFFICIAL_STEPS_6_W2
    assert [(src, slot) for fed in plan.feeds for src, slot in fed if src != slot] == OFFICIAL_AUX_6_W2


@pytest.mark.parametrize("grid, window", [((16, 16), 8), ((6, 6), 1), ((5, 7), 3), ((4, 4), 4), ((1, 5), 2)])
def test_every_token_produced_once_and_fed_once(tiny_cfg, grid, window):
    model = RasterAR(*on_grid(tiny_cfg, grid), RasterAROptions("zipar", window))
    schedule = model.schedule()
    step_of_positions(schedule, model.num_tokens)  # raises unless every position is covered
    assert sum(len(idx) for idx in schedule) == model.num_tokens == grid[0] * grid[1]
    sources, slots = (torch.cat(t) for t in zip(*model.step_feeds(), strict=True))
    real = sources[sources == slots]
    assert sorted(int(p) for p in real) == list(range(model.num_tokens - len(schedule[-1])))


@pytest.mark.parametrize("grid, window", [((6, 6), 2), ((6, 6), 3), ((5, 7), 1)])
def test_visibility_is_a_raster_causal_prefix_in_feed_order(grid, window):
    """A real token only sees the condition, real tokens at earlier raster slots fed no later than it, and
    itself; a row-start copy is seen by its own query alone."""
    plan = zipar_plan(grid, window)
    fed = [(k, src, slot) for k, step in enumerate(plan.feeds) for src, slot in step]
    mask = decode_visibility(plan, cls_token_num=1)
    assert mask[1:, 0].all() and not mask[0, 1:].any()
    for i, (k, _, slot) in enumerate(fed):
        seen = {j for j in range(len(fed)) if mask[1 + i, 1 + j]}
        expected = {j for j, (k2, src2, slot2) in enumerate(fed) if src2 == slot2 and slot2 < slot and k2 <= k}
        assert seen == expected | {i}


@pytest.mark.parametrize("grid, window", [((4, 4), 2), ((6, 6), 2), ((5, 7), 3), ((6, 6), 1)])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_decoding_matches_teacher_forced_forward(tiny_cfg, grid, window, cfg_scale):
    model = zipar(tiny_cfg, grid, window)
    gap = decode_forward_gap(model, torch.tensor([0, 3, 4]), SamplingConfig(cfg_scale=cfg_scale, top_k=8),
                             torch.Generator().manual_seed(0))
    assert gap < 1e-5


def test_tokens_with_a_complete_raster_prefix_get_raster_logits(tiny_cfg):
    """Rows 0 and 1 see exactly their raster prefix under ZipAR (row 1 starts after row 0 ends), so their
    logits equal the raster model's; later rows see less (the window) and differ."""
    model = zipar(tiny_cfg, (6, 6), 2)
    tokens, labels = torch.randint(0, tiny_cfg.vocab_size, (2, 36)), torch.tensor([1, 2])
    with torch.no_grad():
        ours, raster = model(tokens, labels), model.raster_logits(tokens, labels)
    assert torch.allclose(ours[:, :12], raster[:, :12], atol=1e-5)
    assert not torch.allclose(ours[:, 12:], raster[:, 12:], atol=1e-3)


def test_same_weights_as_raster_and_full_window_decodes_raster_token_for_token(tiny_cfg):
    raster = randomize_heads(RasterAR(*on_grid(tiny_cfg, (4, 4))).eval())
    full = RasterAR(*on_grid(tiny_cfg, (4, 4)), RasterAROptions("zipar", 4)).eval()
    assert list(full.state_dict()) == list(raster.state_dict())
    full.load_state_dict(raster.state_dict())  # strict: a raster checkpoint loads unchanged
    assert full.num_steps == 16 and [idx.tolist() for idx in full.schedule()] == [[i] for i in range(16)]
    labels, sampling = torch.tensor([0, 2, 4]), SamplingConfig(cfg_scale=2.0, top_k=8)
    expected = raster.generate(labels, sampling, torch.Generator().manual_seed(3))
    assert torch.equal(full.generate(labels, sampling, torch.Generator().manual_seed(3)), expected)
    half = RasterAR(*on_grid(tiny_cfg, (4, 4)), RasterAROptions("zipar", 2)).eval()
    half.load_state_dict(raster.state_dict())
    tokens, labels = torch.randint(0, tiny_cfg.vocab_size, (3, 16)), torch.tensor([0, 1, 2])
    assert torch.equal(half.loss(tokens, labels), raster.loss(tokens, labels))  # training stays raster


def test_fused_decode_path_honours_the_step_masks(tiny_cfg):
    """The fused step (uncompiled here: the same region functions) takes the masks; equal to eager."""
    model = zipar(tiny_cfg, (6, 6), 2)
    labels, sampling = torch.tensor([0, 3]), SamplingConfig(cfg_scale=2.0, top_k=8)
    eager = model.generate(labels, sampling, torch.Generator().manual_seed(1))
    enable_fused_decode(model, compile=False)
    try:
        fused = model.generate(labels, sampling, torch.Generator().manual_seed(1))
    finally:
        disable_fused_decode(model)
    assert torch.equal(fused, eager)


def test_official_guidance_restarts_its_count_after_row_0(tiny_cfg):
    model = RasterAR(*on_grid(tiny_cfg, (6, 6)), RasterAROptions("zipar", 2))
    flags = model.official_guided_steps(3)
    # row 0: steps 0 .. 4 (interval + 1); the ZipAR loop: while at most 3 of its own tokens came before
    assert flags == [True] * 5 + [False] + [True] * 3 + [False] * 11
    assert len(flags) == model.num_steps


@pytest.mark.parametrize("options, match", [
    (RasterAROptions("zipar", 7), "zipar_window=7 cannot be realised on rows of 6 tokens"),
    (RasterAROptions("zipar", 0), "between 1 and 6"),
])
def test_unrealisable_window_is_one_clear_error(tiny_cfg, options, match):
    with pytest.raises(NarBenchError, match=match):
        RasterAR(*on_grid(tiny_cfg, (6, 6)), options)


def test_unknown_order_lists_the_valid_ones():
    with pytest.raises(NarBenchError, match="choose one of: raster, zipar"):
        RasterAROptions("spiral")
