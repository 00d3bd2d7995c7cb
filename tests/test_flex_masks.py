import pytest
import torch

from nar_bench.nn.flex_masks import block_mask_of, disable_flex_training, enable_flex_training
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar import NAR
from nar_bench.paradigms.par import PAR
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid, randomize_heads

CFG = TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)


def test_block_mask_marks_empty_full_and_partial_blocks():
    """8x8 grid NAR proximity mask (65 rows) in 16-blocks: the block mask's dense form is the mask."""
    mask = NAR(*on_grid(CFG, (8, 8))).mask
    bm = block_mask_of(mask, block_size=16)
    dense = bm.to_dense()[0, 0].repeat_interleave(16, 0).repeat_interleave(16, 1)[: mask.shape[0], : mask.shape[1]]
    assert bool(dense[mask].all())  # every visible pair lies in a computed block
    assert bool((~dense).any())  # and some blocks are skipped outright


PARADIGMS = [(RasterAR, None), (NAR, None), (PAR, PAR.Options(regions=4))]


@pytest.mark.parametrize("cls, options", PARADIGMS)
def test_flex_training_forward_equals_dense_mask(cls, options):
    """CPU FlexAttention runs forward only (its eager reference); the mask handling is the same."""
    torch.manual_seed(0)
    model = randomize_heads(cls(*on_grid(CFG, (4, 4)), options)).eval()  # eval: no dropout, same maths
    tokens, labels = torch.randint(24, (2, 16)), torch.tensor([1, 4])
    with torch.no_grad():
        ref = model(tokens, labels)
        assert enable_flex_training(model) >= CFG.n_layers
        out = model(tokens, labels)
    disable_flex_training(model)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("cls, options", PARADIGMS)
def test_flex_training_step_equals_dense_mask_on_gpu(cls, options):
    torch.manual_seed(0)
    big = TransformerConfig(dim=128, n_layers=2, n_heads=2, vocab_size=64, num_classes=5)
    model = randomize_heads(cls(*on_grid(big, (16, 16)), options)).cuda().eval()
    tokens, labels = torch.randint(64, (4, 256), device="cuda"), torch.tensor([1, 4, 0, 2], device="cuda")
    weight = model.backbone.layers[0].attention.wqkv.weight
    ref = model(tokens, labels)
    ref_grad = torch.autograd.grad(ref.square().sum(), weight)[0]
    enable_flex_training(model)
    out = model(tokens, labels)
    grad = torch.autograd.grad(out.square().sum(), weight)[0]
    disable_flex_training(model)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)  # fp32 (tf32 off by default)
    # The gradient of a sum of squares reaches ~1e5 here; two fp32 kernels summing such terms in a
    # different order differ by ~1e-6 of that (H200: 0.07 and 0.1 of 1e5 for NAR and AR), so the
    # absolute tolerance is relative to the gradient's scale. A wrong mask is off by O(scale).
    torch.testing.assert_close(grad, ref_grad, rtol=2e-3, atol=1e-5 * ref_grad.abs().max().item())
