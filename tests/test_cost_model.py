import pytest
import torch

from nar_bench.metrics.cost_model import Ceilings, CostCounter, count_cost, generation_cost
from nar_bench.metrics.efficiency import measure_generation, randomize_weights, reset_device_memory
from nar_bench.metrics.training_throughput import measure_training_step
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar import NAR
from nar_bench.paradigms.raster_ar import RasterAR
from tests.conftest import on_grid

pytestmark = pytest.mark.usefixtures("single_thread")
CFG = TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)
SAMPLING = SamplingConfig(cfg_scale=2.0, top_k=5)


def test_counter_counts_matmul_flops_and_operand_bytes():
    a, w = torch.randn(6, 8), torch.randn(5, 8)
    with CostCounter() as c:
        torch.nn.functional.linear(a, w)
    assert c.flops == 2 * 6 * 8 * 5
    assert c.bytes == 4 * (6 * 8 + 8 * 5 + 6 * 5)


def test_generation_cost_is_affine_in_the_batch_and_counts_weights_once_per_step():
    torch.manual_seed(0)
    model = RasterAR(*on_grid(CFG, (3, 3))).eval()
    randomize_weights(model)
    cost = generation_cost(model, SAMPLING)
    flops3, bytes3 = count_cost(lambda: model.generate(torch.arange(3) % 5, SAMPLING), torch.device("cpu"))
    assert cost.flops(3) == pytest.approx(flops3, rel=1e-9)
    assert cost.bytes(3) == pytest.approx(bytes3, rel=1e-9)
    assert abs(cost.flops_fixed) < 1e-6 * cost.flops_per_image  # FLOPs scale with rows only
    block_weights = sum(p.numel() * 4 for n, p in model.backbone.layers.named_parameters() if n.endswith("w.weight")
                        or "wqkv" in n or "wo" in n or ".w1" in n or ".w2" in n or ".w3" in n)
    steps_fed = model.num_steps  # condition + every step but the last is fed through the blocks
    assert cost.bytes_fixed >= steps_fed * block_weights  # weights are read at every fed step


def test_measure_generation_fills_roofline_columns_and_compile_time():
    torch.manual_seed(0)
    model = NAR(*on_grid(CFG, (3, 3)))
    randomize_weights(model)
    cost = generation_cost(model, SAMPLING)
    r = measure_generation(model, 2, SAMPLING, dtype="fp32", warmup=1, repeats=1, device="cpu", cost=cost,
                           ceilings=Ceilings(matmul_tflops=1.0, copy_gbps=1.0))
    assert r.gflop_per_image == pytest.approx(cost.flops(2) / 2 / 1e9)
    assert r.tflops_s == pytest.approx(cost.flops(2) / r.latency_s / 1e12)
    assert r.gbps == pytest.approx(cost.bytes(2) / r.latency_s / 1e9)
    assert r.floor_pct == pytest.approx(100 * cost.flops(2) / 1e12 / r.latency_s)
    assert r.setup_s > 0 and r.compile_s is None  # not compiled


def test_reset_device_memory_runs_anywhere():
    reset_device_memory("cpu")


def test_training_step_throughput_on_cpu():
    torch.manual_seed(0)
    model = NAR(*on_grid(CFG, (3, 3)))
    before = model.backbone.layers[0].attention.wqkv.weight.detach().clone()
    r = measure_training_step(model, 4, warmup=1, repeats=2, device="cpu")
    assert r.status == "ok" and r.images_s == pytest.approx(4 / r.step_s) and r.attention == "dense"
    assert not torch.equal(before, model.backbone.layers[0].attention.wqkv.weight)  # optimizer stepped
    with pytest.raises(ValueError):
        measure_training_step(model, 4, attention="sparse", device="cpu")


def test_point_cost_counts_bytes_at_the_points_dtype_and_the_decode_once_per_image():
    """bf16 operands are half the fp32 bytes (same FLOPs); an end-to-end point adds the eager
    decode of each image to the per-image cost (the fast decoder's padding of a one-image chunk
    once made the decode look like a fixed cost)."""
    from dataclasses import replace

    from nar_bench.bench.runner import point_cost
    from nar_bench.nn.fast_vae_decode import FastDecoder
    from tests.test_vq import tiny_tokenizer

    tok = tiny_tokenizer()
    space = tok.code_space
    torch.manual_seed(0)
    model = RasterAR(replace(CFG, vocab_size=space.vocab_size), space).eval()
    randomize_weights(model)
    fp32 = point_cost(model, SAMPLING, "fp32")
    bf16 = point_cost(model, SAMPLING, "bf16")
    # within 0.1%: the attention kernel's log-sum-exp output is fp32 at either dtype
    assert bf16.flops(2) == fp32.flops(2) and bf16.bytes(2) == pytest.approx(fp32.bytes(2) / 2, rel=1e-3)

    decoder = FastDecoder(tok, torch.float32, compile=False)  # what the bench times at fp32
    e2e = point_cost(model, SAMPLING, "fp32", tokenizer=decoder.tokenizer)
    one_image, _ = count_cost(lambda: tok.decode(torch.zeros(1, space.num_tokens, dtype=torch.long)),
                              torch.device("cpu"))
    assert one_image > 0
    assert e2e.flops_per_image == pytest.approx(fp32.flops_per_image + one_image, rel=1e-9)
    assert abs(e2e.flops_fixed) < 1e-6 * e2e.flops_per_image
