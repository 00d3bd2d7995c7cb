import pytest
import torch

from nar_bench.config import load_config
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.tokenizers import build_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_tokenizer(name: str, image_size: int = 16):
    torch.manual_seed(0)
    extra = ["model.paradigm=var", "tokenizer.options.scales=[1,2,4]"] if name == "msvq" else []
    cfg = load_config(None, [f"tokenizer.name={name}", "data.grid_size=4", f"data.image_size={image_size}", *extra])
    return build_tokenizer(cfg).eval()


@pytest.mark.parametrize("name", ["vq", "msvq"])
def test_chunked_decode_equals_one_batch_decode(name):
    tok = tiny_tokenizer(name)
    codes = torch.randint(tok.vocab_size, (5, tok.encode(torch.zeros(1, 3, 16, 16)).shape[1]))
    with torch.no_grad():
        ref = tok.decode(codes)
    fast = FastDecoder(tok, dtype=torch.float32, chunk=2, compile=False)  # chunks of 2, 2 and 1
    out = fast(codes)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["vq", "msvq"])
def test_compiled_bf16_decode_is_as_close_to_fp32_as_eager_bf16_on_gpu(name):
    """Stated tolerance: the compiled bf16 decode is within twice the eager bf16 decode's own error
    against the fp32 decoder (max and mean abs), i.e. compiling loses no accuracy beyond bf16's."""
    # VQ-16 at 64 px: a 4x4 latent (at 16 px its 1x1 latent gives token strides of 1 in channels_last,
    # which bf16 SDPA rejects in the eager reference)
    size = 64 if name == "vq" else 16
    tok = tiny_tokenizer(name, size).cuda()
    codes = torch.randint(tok.vocab_size, (9, tok.encode(torch.zeros(1, 3, size, size, device="cuda")).shape[1]),
                          device="cuda")
    with torch.no_grad():
        ref = tok.decode(codes).float()
    eager = FastDecoder(tok, chunk=4, compile=False)(codes).float()  # casts tok to bf16, channels_last
    fast = FastDecoder(tok, chunk=4)(codes).float()
    eager_err, fast_err = (eager - ref).abs(), (fast - ref).abs()
    # bf16 really ran (on random weights eager bf16 itself is off by up to 0.13 on [-1, 1] images: H200)
    assert eager_err.max() > 0
    assert fast_err.max() <= 2 * eager_err.max() and fast_err.mean() <= 2 * eager_err.mean()
