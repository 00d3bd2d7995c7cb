import pytest
import torch

from nar_bench.metrics.cost_model import Ceilings, CostCounter, count_cost, generation_cost, weight_storages
from nar_bench.metrics.efficiency import measure_generation, randomize_weights, reset_device_memory
from nar_bench.metrics.training_throughput import measure_training_step
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.paradigms.nar import NAR
from nar_bench.paradigms.raster_ar import RasterAR
from nar_bench.registry import PARADIGMS
from tests.conftest import on_grid
from tests.test_efficiency import tiny_paradigm

pytestmark = pytest.mark.usefixtures("single_thread")
CFG = TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)
SAMPLING = SamplingConfig(cfg_scale=2.0, top_k=5)


def test_counter_counts_matmul_flops_and_operand_bytes():
    a, w = torch.randn(6, 8), torch.randn(5, 8)
    with CostCounter() as c:
        torch.nn.functional.linear(a, w)
    assert c.flops == 2 * 6 * 8 * 5
    assert c.bytes == 4 * (6 * 8 + 8 * 5 + 6 * 5) and c.fixed_bytes == 0
    with CostCounter(weight_storages(torch.nn.Linear(8, 5))) as fixed:  # another module's weight: not fixed
        torch.nn.functional.linear(a, w)
    assert fixed.fixed_bytes == 0
    layer = torch.nn.Linear(8, 5, bias=False)
    with CostCounter(weight_storages(layer)) as fixed:
        layer(a)
    assert fixed.fixed_bytes == 4 * 8 * 5 and fixed.bytes == 4 * (6 * 8 + 6 * 5)


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_cost_from_one_generation_equals_the_generation_counted_at_other_batch_sizes(paradigm):
    """The split of one batch-1 count into fixed (weights) and per-image parts is exact: it predicts
    what a whole generation counted at batch 2 and 3 costs, for every paradigm (VAR reads its
    tokenizer's weights while generating, so they are fixed operands too)."""
    model, tokenizer = tiny_paradigm(paradigm)
    model.eval()
    cost = generation_cost(model, SAMPLING, decoder=tokenizer)
    fixed = weight_storages(model, tokenizer)
    for batch in (2, 3):
        labels = torch.arange(batch) % 5
        counted = count_cost(lambda labels=labels: model.generate(labels, SAMPLING), torch.device("cpu"), fixed)
        assert cost.flops(batch) == counted.flops and cost.flops_fixed == 0
        assert cost.bytes(batch) == counted.bytes + counted.fixed_bytes
    assert cost.bytes_fixed > 0 and cost.bytes_per_image > 0


def test_weights_are_read_once_per_fed_step():
    torch.manual_seed(0)
    model = RasterAR(*on_grid(CFG, (3, 3))).eval()
    randomize_weights(model)
    cost = generation_cost(model, SAMPLING)
    block_weights = sum(p.numel() * 4 for n, p in model.backbone.layers.named_parameters() if n.endswith("w.weight")
                        or "wqkv" in n or "wo" in n or ".w1" in n or ".w2" in n or ".w3" in n)
    steps_fed = model.num_steps  # condition + every step but the last is fed through the blocks
    assert cost.bytes_fixed >= steps_fed * block_weights


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
    e2e = point_cost(model, SAMPLING, "fp32", decoder.tokenizer, include_decode=True)
    one_image = count_cost(lambda: tok.decode(torch.zeros(1, space.num_tokens, dtype=torch.long)),
                           torch.device("cpu"), weight_storages(tok))
    assert one_image.flops > 0
    assert e2e.flops_per_image == fp32.flops_per_image + one_image.flops and e2e.flops_fixed == 0
    assert e2e.bytes_fixed == fp32.bytes_fixed + one_image.fixed_bytes  # the decoder's weights, once per batch


@pytest.mark.cuda
def test_cost_counted_on_a_gpu_equals_the_cpu_count():
    model, _ = tiny_paradigm("ar")
    model.eval().to(torch.bfloat16)
    on_cpu = generation_cost(model, SAMPLING)
    on_gpu = generation_cost(model.cuda(), SAMPLING)
    assert on_gpu.flops_per_image == on_cpu.flops_per_image and on_gpu.bytes_fixed == on_cpu.bytes_fixed
    # per-image bytes within 1%: attention kernels differ in the fp32 log-sum-exp they return
    assert on_gpu.bytes_per_image == pytest.approx(on_cpu.bytes_per_image, rel=0.01)
