import pytest
import torch

from nar_bench.nn.swiglu_gemm import swiglu, swiglu_reference, tile_config


def test_swiglu_off_cuda_is_the_plain_form():
    x, w13 = torch.randn(5, 8), torch.randn(12, 8)
    gate, up = (x @ w13.T).chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(x, w13), gate * torch.sigmoid(gate) * up)


def test_tile_config_covers_every_row_count():
    """Tiles grow with the row count, and every shape fits the kernel's constraints (tl.dot needs 16)."""
    shapes = [tile_config(m) for m in (1, 16, 64, 65, 512, 513, 1 << 20)]
    assert all(bm >= 16 and bn >= 16 and bk >= 16 for bm, bn, bk, _, _ in shapes)
    assert [s[0] for s in shapes] == sorted(s[0] for s in shapes)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 16, 100, 700, 5000])
def test_fused_swiglu_kernel_matches_fp32_reference(m):
    """bf16 in and out: within what rounding the (M, hidden) output to bf16 allows, and no worse
    than the unfused bf16 form (which also rounds gate and up)."""
    torch.manual_seed(m)
    x = torch.randn(m, 768, device="cuda").bfloat16()
    w13 = (torch.randn(4096, 768, device="cuda") * 0.02).bfloat16()
    exact = swiglu_reference(x.float(), w13.float())
    fused = swiglu(x, w13)
    assert fused.dtype == torch.bfloat16 and fused.shape == (m, 2048)
    torch.testing.assert_close(fused.float(), exact, rtol=1.6e-2, atol=1e-3)
    unfused_err = (swiglu_reference(x, w13).float() - exact).abs().max()
    assert (fused.float() - exact).abs().max() <= unfused_err
    compiled = torch.compile(swiglu, dynamic=True)
    assert torch.equal(compiled(x, w13), fused)
