"""The shared decoding-order vocabulary (``nar_bench.paradigms.orders``): each order defined once,
the same names on randar and lpd, MaskGIT's Halton order the same function; what the any-order paradigms share."""

from __future__ import annotations

import pytest
import torch

from nar_bench.errors import NarBenchError
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms import maskgit
from nar_bench.paradigms.lpd import LPD, LPDOptions
from nar_bench.paradigms.orders import ORDERS, check_order, decode_orders, diagonal_order, fixed_order, halton_order
from nar_bench.paradigms.randar import RandAR, RandAROptions
from nar_bench.tokenizers.base import CodeSpace


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (16, 16)])
def test_diagonal_order_goes_by_manhattan_distance_then_raster(grid):
    h, w = grid
    order = diagonal_order(grid).tolist()
    assert sorted(order) == list(range(h * w))
    keys = [(i // w + i % w, i) for i in order]  # (anti-diagonal, raster index) ascends
    assert keys == sorted(keys)
    assert diagonal_order((3, 5))[:6].tolist() == [0, 1, 5, 2, 6, 10]


def test_one_halton_construction_for_every_paradigm():
    assert maskgit.halton_order is halton_order
    assert halton_order((4, 4))[:4].tolist() == [9, 6, 12, 1]


def test_randar_and_lpd_accept_the_same_order_names():
    for order in ORDERS:
        assert RandAROptions(order=order).order == LPDOptions(order=order).order == order


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_is_a_permutation_per_sample(order):
    counts = [1, 2, 2, 3, 4, 4]
    orders = decode_orders(order, (4, 4), counts, 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert orders.shape == (3, 16)
    for row in orders:
        assert row.sort().values.equal(torch.arange(16))
    fixed = fixed_order(order, (4, 4))
    assert (fixed is None) == (order in ("random", "locality"))


def test_an_unknown_order_lists_the_valid_ones_in_one_line():
    with pytest.raises(NarBenchError, match=r"^model.options.order='spiral' is not valid; choose one of: raster, "
                                            r"diagonal, random, halton, locality$"):
        check_order("spiral")
    with pytest.raises(NarBenchError, match="orders a 2D grid"):
        diagonal_order((2, 4, 4))


@pytest.mark.parametrize("paradigm", [RandAR, LPD])
def test_any_order_paradigms_refuse_a_grid_that_is_not_2d_before_building(paradigm):
    model = TransformerConfig(dim=32, n_layers=1, n_heads=2, vocab_size=8, num_classes=4)
    with pytest.raises(NarBenchError, match=rf"^paradigm '{paradigm.name}' decodes 2D token grids \(H, W\); got grid "
                                            r"\(2, 4, 4\)$"):
        paradigm(model, CodeSpace(vocab_size=8, grid=(2, 4, 4)))


@pytest.mark.parametrize("paradigm", [RandAR, LPD])
def test_any_order_paradigms_build_from_their_tiny_config_and_train_in_the_lightning_module(paradigm):
    from nar_bench.lit.module import GeneratorModule

    module = GeneratorModule(paradigm.tiny_config("eval.samples_per_class=1"), num_classes=5)
    assert type(module.paradigm) is paradigm
    assert f"model.options.steps={module.paradigm.num_steps}" in paradigm.tiny_overrides
    tokens, labels = torch.randint(0, module.tokenizer.vocab_size, (4, 16)), torch.arange(4)
    module.paradigm.loss(tokens, labels).backward()
    assert all(p.grad is not None for p in module.paradigm.parameters())
