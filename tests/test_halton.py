"""MaskGIT with the Halton order (``model.options.order=halton``): the positions each step commits follow
a fixed 2D Halton sequence (bases 2, 3) over the grid, as valeoai/Maskgit-pytorch ``Sampler/halton_sampler.py``
builds it (``build_halton_mask``); how many a step commits stays MaskGIT's mask schedule."""

from __future__ import annotations

import pytest
import torch

from nar_bench.errors import NarBenchError
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.contract import decode_forward_gap
from nar_bench.paradigms.maskgit import MaskGITOptions, masked_counts
from nar_bench.paradigms.orders import halton_order, halton_points
from tests.test_maskgit import CFG, NO_CFG, make_maskgit

# 4 x 4 by hand from the official construction: rows floor(4 x) of 1/2, 1/4, 3/4, 1/8, 5/8, 3/8, 7/8, 1/16
# (base 2) = 2, 1, 3, 0, 2, 1, 3, 0; columns floor(4 y) of 1/3, 2/3, 1/9, 4/9, 7/9, 2/9, 5/9, 8/9 (base 3)
# = 1, 2, 0, 1, 3, 0, 2, 3; cells (2,1) (1,2) (3,0) (0,1) (2,3) (1,0) (3,2) (0,3), none repeated yet.
FIRST_CELLS_4X4 = [9, 6, 12, 1, 11, 4, 14, 3]


def test_halton_points_are_the_radical_inverses_from_index_1():
    assert halton_points(7, 2) == [1 / 2, 1 / 4, 3 / 4, 1 / 8, 5 / 8, 3 / 8, 7 / 8]
    assert halton_points(6, 3) == [1 / 3, 2 / 3, 1 / 9, 4 / 9, 7 / 9, 2 / 9]


def test_first_cells_match_the_official_construction_on_4x4():
    assert halton_order((4, 4))[:8].tolist() == FIRST_CELLS_4X4


@pytest.mark.parametrize("grid", [(4, 4), (16, 16), (32, 32), (5, 7)])
def test_halton_order_covers_every_cell_exactly_once(grid):
    order = halton_order(grid)
    assert sorted(order.tolist()) == list(range(grid[0] * grid[1]))


@pytest.mark.parametrize("sampling", [NO_CFG, CFG], ids=["no_cfg", "cfg"])
@pytest.mark.parametrize("steps, schedule", [(8, "cosine"), (5, "linear"), (16, "cosine")])
def test_steps_commit_the_next_halton_cells_in_maskgits_counts(sampling, steps, schedule):
    model = make_maskgit(order="halton", steps=steps, schedule=schedule)
    after = masked_counts(16, steps, schedule)  # MaskGIT's schedule: tokens still masked after each step
    assert model.step_counts() == [a - b for a, b in zip([16, *after[:-1]], after, strict=True)]
    codes = model.generate(torch.tensor([0, 3, 4]), sampling, torch.Generator().manual_seed(0))
    assert codes.shape == (3, 4, 4)
    order, ends = halton_order((4, 4)), torch.tensor([0, *model.step_counts()]).cumsum(0).tolist()
    expected = torch.empty(16, dtype=torch.long)
    for s in range(steps):
        expected[order[ends[s] : ends[s + 1]]] = s
    for i in range(3):  # every sample: the same cells, each committed once, at its Halton rank's step
        assert torch.equal(model.token_steps(i), expected)


def test_decoding_matches_the_teacher_forced_forward_under_halton():
    model = make_maskgit(order="halton")
    assert decode_forward_gap(model, torch.tensor([0, 3, 4]), CFG, torch.Generator().manual_seed(0)) < 1e-5


def test_values_stay_sampled_but_the_order_ignores_the_confidence():
    """The choice temperature (Gumbel noise on the confidence) plays no part: same seed, same codes."""
    labels, sampling = torch.tensor([1, 2]), SamplingConfig(cfg_scale=2.0, top_k=8)
    models = [make_maskgit(order="halton", choice_temperature=t) for t in (0.0, 9.0)]
    codes = [m.generate(labels, sampling, torch.Generator().manual_seed(5)) for m in models]
    assert torch.equal(*codes)


def test_unknown_order_lists_the_valid_ones():
    with pytest.raises(NarBenchError, match="choose one of: confidence, halton"):
        MaskGITOptions(order="zipar")
