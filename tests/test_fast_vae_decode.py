import copy
import math

import pytest
import torch

from nar_bench.config import load_config
from nar_bench.nn.conv_blocks import ConvDecoder, ResnetBlock, Upsample2x
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.nn.group_norm import GroupNorm
from nar_bench.tokenizers import build_tokenizer
from tests.conftest import reduction_lengths

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_tokenizer(name: str, image_size: int = 16):
    torch.manual_seed(0)
    extra = ["model.paradigm=var", "tokenizer.options.scales=[1,2,4]"] if name == "msvq" else []
    cfg = load_config(None, [f"tokenizer.name={name}", "data.grid_size=4", f"data.image_size={image_size}", *extra])
    return build_tokenizer(cfg).eval()


@pytest.mark.parametrize("name", ["vq", "msvq"])
def test_chunked_decode_equals_one_batch_decode(name):
    """The same function up to fp32 rounding. The two decodes round differently: the fast one runs
    its convolutions channels_last (other oneDNN kernels, so another summation order), upsamples in
    the sub-pixel form (a 2x2 conv with folded weights instead of a 3x3 one over repeated pixels),
    adds deferred biases where they are read and sees other batch shapes (chunks of 2, 2 and 1
    instead of 5)."""
    tok = tiny_tokenizer(name)
    codes = torch.randint(tok.vocab_size, (5, tok.encode(torch.zeros(1, 3, 16, 16)).shape[1]))
    with torch.no_grad(), reduction_lengths(tok) as lengths:
        ref = tok.decode(codes)
    fast = FastDecoder(tok, dtype=torch.float32, chunk=2, compile=False)  # chunks of 2, 2 and 1
    out = fast(codes)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # Tolerance: an fp32 K-term dot product is off by ~ u * sqrt(K) of its scale (u = 2**-24; the
    # roundings of the K adds are unbiased and add up like a random walk). The decoder's layers add
    # theirs the same way, and its GroupNorms keep every layer's relative error at gain ~1, so each
    # decode is within ~ u * sqrt(sum of K over its layers) * max|image| of the exact one, and two
    # decodes within twice that. VQ-16 (59 layers, sum K = 113,800): 4.0e-5; msvq (27, 6,432):
    # 9.6e-6 (the attention blocks' own two products, K = channels and tokens, are not hooked: they
    # would add < 1% to the sums). Measured on a 2-core CPU over 30 code draws, 1 and 2 threads: at
    # most 0.63 (VQ-16) and 0.75 (msvq) of u * sqrt(sum K); each decode alone vs an fp64 one up to
    # 0.5 of it (VQ-16). The former atol = rtol = 1e-5 allowed VQ-16 0.5 of it near 0 (a busy 2-core
    # machine saw 1.1e-5 there).
    atol = 2 * 2**-24 * math.sqrt(sum(lengths)) * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["vq", "msvq"])
def test_deferred_biases_leave_the_decoder_the_same_function(name):
    """Every res block's conv1, the decoder's conv_in and each upsampling conv lose their bias to the
    layers that read their output, and the decode is the same up to fp32 rounding (tolerance as in
    test_chunked_decode_equals_one_batch_decode). A second call changes nothing."""
    tok = tiny_tokenizer(name)
    codes = torch.randint(tok.vocab_size, (3, tok.encode(torch.zeros(1, 3, 16, 16)).shape[1]))
    decoder = next(m for m in tok.modules() if isinstance(m, ConvDecoder))
    with torch.no_grad(), reduction_lengths(tok) as lengths:
        ref = tok.decode(codes)
        decoder.defer_biases()
        once = tok.decode(codes)
        decoder.defer_biases()
        twice = tok.decode(codes)
    handed = [conv for conv, _ in decoder.bias_handoffs()]
    handed += [m.conv1 for m in decoder.modules() if isinstance(m, ResnetBlock)]
    assert len(handed) > 3 and all(conv.bias is None for conv in handed)
    assert any(m.bias is not None for m in decoder.modules() if isinstance(m, torch.nn.Conv2d))  # not every bias
    atol = 2**-24 * math.sqrt(sum(lengths[: len(lengths) // 3])) * ref.abs().max().item()  # of one decode
    torch.testing.assert_close(once, ref, rtol=0, atol=2 * atol)
    assert torch.equal(twice, once)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["vq", "msvq"])
def test_fast_bf16_decodes_are_as_close_to_fp32_as_eager_bf16_on_gpu(name):
    """Stated tolerance: the compiled bf16 decode and the uncompiled fast one (Triton GroupNorm,
    sub-pixel upsampling) are within twice the plain eager bf16 decode's own error against the fp32
    decoder (max and mean abs), i.e. they lose no accuracy beyond bf16's."""
    # VQ-16 at 64 px: a 4x4 latent (at 16 px its 1x1 latent gives token strides of 1 in channels_last,
    # which bf16 SDPA rejects in the eager reference)
    size = 64 if name == "vq" else 16
    tok = tiny_tokenizer(name, size).cuda()
    codes = torch.randint(tok.vocab_size, (9, tok.encode(torch.zeros(1, 3, size, size, device="cuda")).shape[1]),
                          device="cuda")
    with torch.no_grad():
        ref = tok.decode(codes).float()
    # eager bf16 as the checkpoint defines it (GroupNorm, interpolate + 3x3 conv)
    eager_tok = copy.deepcopy(tok).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    with torch.no_grad():
        eager_err = (eager_tok.decode(codes).float() - ref).abs()
    # bf16 really ran (on random weights eager bf16 itself is off by up to 0.13 on [-1, 1] images: H200)
    assert eager_err.max() > 0
    for compile in (True, False):
        fast_tok = copy.deepcopy(tok)
        fast_err = (FastDecoder(fast_tok, chunk=4, compile=compile)(codes).float() - ref).abs()
        assert fast_err.max() <= 2 * eager_err.max() and fast_err.mean() <= 2 * eager_err.mean(), compile
    assert any(m.fused for m in fast_tok.modules() if isinstance(m, GroupNorm))  # the Triton path was on
    if name != "vq":  # only VQ-16 is decoded graphed by the evaluation (Tokenizer.graphed_decode)
        return
    # the evaluation's decoder: compiled with the Triton norms inside, one CUDA graph per chunk shape
    graphed = FastDecoder(copy.deepcopy(tok), chunk=4, compile=True, autotune=False, fused_norms=True, graph=True)
    graphed_err = (graphed(codes).float() - ref).abs()
    assert graphed_err.max() <= 2 * eager_err.max() and graphed_err.mean() <= 2 * eager_err.mean()
    assert sorted(graphed.graphs) == [(2, codes.shape[1]), (4, codes.shape[1])]  # chunks 4, 4 and 1 (as 2)
    uncaptured = FastDecoder(copy.deepcopy(tok), chunk=4, compile=True, autotune=False, fused_norms=True)
    assert torch.equal(graphed(codes), uncaptured(codes))  # a replay runs the captured kernels: same bytes


def test_sub_pixel_upsample_is_the_same_function_and_keeps_the_state_dict():
    torch.manual_seed(0)
    up = Upsample2x(6)
    x = torch.randn(2, 6, 5, 7)  # odd, non-square: every border phase is exercised
    with torch.no_grad():
        ref = up(x)
        keys = list(up.state_dict())
        up.fold_phases()
        out = up(x)
    assert out.shape == ref.shape == (2, 6, 10, 14)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert list(up.state_dict()) == keys  # checkpoints load and save as before
    assert up.phase_weight.shape == (4 * 6, 6, 2, 2)  # 4 taps per output instead of 9
    up.to(dtype=torch.bfloat16, memory_format=torch.channels_last)  # the folded weights follow the cast
    assert up.phase_weight.dtype == torch.bfloat16 and up.phase_weight.is_contiguous(memory_format=torch.channels_last)


def test_folded_weights_do_not_depend_on_the_callers_autocast():
    """A Trainer's bf16-mixed predict wraps the evaluation engine's construction in autocast; the folded
    (summed) upsampling weights must still be fp32 sums rounded once, as outside it (this made shards
    generated under a Trainer differ from the same shards generated without one)."""
    torch.manual_seed(0)
    plain, under_autocast = Upsample2x(6), Upsample2x(6)
    under_autocast.load_state_dict(plain.state_dict())
    plain.fold_phases()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast.fold_phases()
    assert torch.equal(plain.phase_weight, under_autocast.phase_weight)
