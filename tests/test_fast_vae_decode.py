import pytest
import torch

from nar_bench.config import load_config
from nar_bench.nn.fast_vae_decode import FastDecoder
from nar_bench.tokenizers import build_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_tokenizer(name: str):
    torch.manual_seed(0)
    extra = ["model.paradigm=var", "tokenizer.options.scales=[1,2,4]"] if name == "msvq" else []
    cfg = load_config(None, [f"tokenizer.name={name}", "data.grid_size=4", "data.image_size=16", *extra])
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
def test_compiled_bf16_decode_is_close_to_eager_fp32_on_gpu(name):
    tok = tiny_tokenizer(name).cuda()
    codes = torch.randint(tok.vocab_size, (9, tok.encode(torch.zeros(1, 3, 16, 16, device="cuda")).shape[1]),
                          device="cuda")
    with torch.no_grad():
        ref = tok.decode(codes).float()
    out = FastDecoder(tok, chunk=4)(codes).float()
    assert (out - ref).abs().max() < 0.05 and (out - ref).abs().mean() < 0.01
