import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nar_bench.nn.group_norm import GroupNorm


def test_group_norm_is_nn_group_norm_plus_optional_silu_with_the_same_state_dict():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 3)
    plain = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(plain.weight)
    torch.nn.init.normal_(plain.bias)
    for silu in (False, True):
        norm = GroupNorm(4, 8, eps=1e-6, silu=silu)
        norm.load_state_dict(plain.state_dict())  # strict: the same keys
        expected = F.silu(plain(x)) if silu else plain(x)
        torch.testing.assert_close(norm(x), expected)
        norm.fused = True  # off CUDA the fused flag falls back to the same maths
        torch.testing.assert_close(norm(x), expected)


def moments_reference(x: Tensor, rows_per_program: int) -> tuple[Tensor, Tensor, Tensor]:
    """What the moments kernel computes, in torch: x (B, C, H, W) -> mean, m2 (B, P, C)
    over runs of ``rows_per_program`` pixels in row-major pixel order, and the counts (P,)."""
    b, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 1).reshape(b, -1, c).float()
    parts = rows.split(rows_per_program, dim=1)
    mean = torch.stack([part.mean(1) for part in parts], 1)
    m2 = torch.stack([(part - part.mean(1, keepdim=True)).square().sum(1) for part in parts], 1)
    return mean, m2, torch.tensor([part.shape[1] for part in parts])


@pytest.mark.cuda
@pytest.mark.parametrize("rows_per_program", [1, 7, 16, 100])
def test_merged_per_program_moments_give_the_group_statistics(rows_per_program):
    """The affine kernel's merge of the per-program, per-channel (mean, sum of squared deviations)
    over programs and the group's channels gives the two-pass mean and biased variance, also for
    channels with a mean far from zero (where E[x^2] - E[x]^2 would cancel). Read back from its
    scale = 1 / sqrt(var) and shift = -mean * scale (weight 1, bias 0, eps 0)."""
    from nar_bench.nn.group_norm import group_affine

    torch.manual_seed(rows_per_program)
    x = torch.randn(3, 12, 6, 10) + 50.0 * torch.randn(1, 12, 1, 1)
    mean, m2, counts = moments_reference(x, rows_per_program)
    assert mean.shape == m2.shape == (3, len(counts), 12) and counts.sum() == 60
    scale, shift = group_affine(mean.cuda(), m2.cuda(), 60, rows_per_program, torch.ones(12, device="cuda"),
                                torch.zeros(12, device="cuda"), None, 4, 0.0)
    scale, shift = scale[:, ::3].cpu().double(), shift[:, ::3].cpu().double()  # one channel per group
    grouped = x.view(3, 4, -1).double()
    torch.testing.assert_close(-shift / scale, grouped.mean(-1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(1 / scale.square(), grouped.var(-1, unbiased=False), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("channels,groups,rows_per_program,with_input_bias",
                         [(12, 4, 1, False), (12, 4, 7, True), (12, 4, 100, False), (160, 32, 16, True),
                          (640, 32, 9, False)])
def test_scale_and_shift_from_per_program_moments_normalise_the_input_plus_its_bias(channels, groups,
                                                                                   rows_per_program, with_input_bias):
    """The affine kernel: from each program's per-channel (mean, sum of squared deviations) of x, the
    (image, channel) scale and shift with x * scale + shift = GroupNorm(x + input_bias): merged over
    programs and the group's channels, also for channel means far from zero (where E[x^2] - E[x]^2
    would cancel) and groups of a non-power-of-two width (VAR's 160 / 640 channels)."""
    from nar_bench.nn.group_norm import group_affine

    torch.manual_seed(channels + rows_per_program)
    x = torch.randn(3, channels, 6, 10) + 50.0 * torch.randn(1, channels, 1, 1)
    input_bias = torch.randn(channels) * 100 if with_input_bias else None
    weight, bias = torch.randn(channels), torch.randn(channels)
    mean, m2, counts = moments_reference(x, rows_per_program)
    assert counts.sum() == 60
    cuda = [t.cuda() if t is not None else None for t in (mean, m2, weight, bias, input_bias)]
    scale, shift = group_affine(*cuda[:2], 60, rows_per_program, *cuda[2:], groups, 1e-6)
    assert scale.shape == shift.shape == (3, channels) and scale.dtype == shift.dtype == torch.float32
    out = x.double() * scale.cpu().double()[:, :, None, None] + shift.cpu().double()[:, :, None, None]
    inputs = x.double() + (0 if input_bias is None else input_bias.double()[:, None, None])
    expected = F.group_norm(inputs, groups, weight.double(), bias.double(), 1e-6)
    # fp32: the merged means (inputs up to ~|x + input_bias|) are off by a few units of their last
    # place, the output by that over the group's std, times the weight; 4 such units (this kernel under
    # Triton's interpreter on a CPU, these cases with 5 seeds each: at most 0.87 of them)
    scale_of_inputs = inputs.abs().max() / inputs.view(3, groups, -1).std(-1, unbiased=False).min()
    atol = 4 * 2**-24 * weight.abs().max().item() * scale_of_inputs.item()
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)


def test_a_norm_given_an_input_bias_normalises_the_input_plus_the_bias():
    torch.manual_seed(2)
    x, input_bias = torch.randn(2, 8, 3, 3), torch.randn(8)
    norm = GroupNorm(4, 8, silu=True)
    expected = norm(x + input_bias[:, None, None])
    keys = list(norm.state_dict())
    norm.take_input_bias(torch.zeros(8))  # taking two biases adds them
    norm.take_input_bias(input_bias)
    assert list(norm.state_dict()) == keys  # checkpoints load and save as before
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("shape,groups", [((64, 128, 256, 256), 32), ((3, 160, 17, 9), 32), ((2, 512, 16, 16), 32),
                                          ((5, 640, 1, 1), 32)])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("input_bias", [False, True])
def test_triton_channels_last_group_norm_matches_pytorch_on_gpu(shape, groups, silu, input_bias):
    """bf16 in and out: each output within one bf16 rounding of the fp32 result (the kernels keep
    fp32 until the single rounding; PyTorch's bf16 GroupNorm + SiLU rounds twice); also as one op
    inside a compiled graph; also with a deferred input bias (normalising x + bias, x as passed)."""
    torch.manual_seed(0)
    x = (torch.randn(shape, device="cuda") * 2 + torch.randn(1, shape[1], 1, 1, device="cuda") * 4)
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)
    norm = GroupNorm(groups, shape[1], eps=1e-6, silu=silu).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    if input_bias:
        norm.take_input_bias(torch.randn(shape[1], device="cuda") * 4)
    norm.bfloat16()  # the reference uses the same bf16-rounded weight and biases, in fp32
    with torch.no_grad():
        exact = copy.deepcopy(norm).float()(x.float())
        norm.fused = True
        fused = norm(x)
        compiled = torch.compile(norm)(x)
    assert fused.dtype == torch.bfloat16 and fused.is_contiguous(memory_format=torch.channels_last)
    # half a bf16 step is at most 2^-8 of the value; 1e-4 of it and 1e-5 absolute for fp32 statistics
    err = (fused.float() - exact).abs()
    assert (err <= exact.abs() * (2**-8 + 1e-4) + 1e-5).all(), err.max()
    assert torch.equal(compiled, fused)
