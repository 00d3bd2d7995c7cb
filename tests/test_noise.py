"""Per-sample noise (RowNoise): splitmix64 bits, distributions, and samples that do not depend on
the batch they are drawn in (every paradigm, batch sizes 7 vs 32)."""

import pytest
import torch

import nar_bench.paradigms  # noqa: F401  (registers the paradigms)
from nar_bench.nn.noise import MASK64, RowNoise, mix64, mix64_int
from nar_bench.nn.sampling import SamplingConfig, sample, sample_step
from nar_bench.registry import PARADIGMS


def splitmix64_finalizer(x: int) -> int:
    """Reference in unbounded Python ints (Vigna's splitmix64 output function)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_mix64_matches_the_python_reference_bit_for_bit():
    values = [0, 1, 2, 12345, -1, -(2**63), 2**63 - 1, 0x9E3779B97F4A7C15 - 2**64]
    values += torch.randint(-(2**63), 2**63 - 1, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    got = mix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert [g & MASK64 for g in got] == [splitmix64_finalizer(v) for v in values]
    assert [mix64_int(v) for v in values] == got
    # splitmix64 seeded with 0 starts 0xe220a8397b1dcdaf (its state advances by the golden gamma, then is mixed)
    assert splitmix64_finalizer(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_uniforms_and_exponentials_have_the_right_distribution():
    noise = RowNoise.for_samples(0, torch.arange(64))
    u = noise.uniform((64, 4096))
    assert 0 < u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=0.005) and u.var().item() == pytest.approx(1 / 12, rel=0.02)
    e = noise.exponential((64, 4096))
    assert e.mean().item() == pytest.approx(1.0, abs=0.01) and e.var().item() == pytest.approx(1.0, rel=0.03)
    # consecutive draws and different seeds give different numbers
    assert not torch.equal(noise.uniform((64, 8)), noise.uniform((64, 8)))
    assert not torch.equal(RowNoise.for_samples(1, torch.arange(4)).uniform((4, 8)),
                           RowNoise.for_samples(0, torch.arange(4)).uniform((4, 8)))


def test_a_row_gets_the_same_noise_in_any_batch():
    full = RowNoise.for_samples(7, torch.arange(32))
    part = RowNoise.for_samples(7, torch.tensor([30, 3, 17]))
    for _ in range(3):  # three draws (decoding steps)
        a, b = full.bits((32, 5, 11)), part.bits((3, 5, 11))
        assert torch.equal(a[[30, 3, 17]], b)


def test_sample_with_row_noise_draws_from_the_distribution_per_row():
    probs = torch.tensor([0.7, 0.2, 0.1])
    draws = sample(probs.log().expand(20000, 3), generator=RowNoise.for_samples(0, torch.arange(20000)))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.02)
    logits = torch.randn(32, 6, 50)
    cfg = SamplingConfig(cfg_scale=1.0, temperature=0.9, top_k=10, top_p=0.9)
    rows = torch.tensor([5, 0, 31])
    whole = sample_step(logits, cfg, 0, RowNoise.for_samples(3, torch.arange(32)))
    assert torch.equal(whole[rows], sample_step(logits[rows], cfg, 0, RowNoise.for_samples(3, rows)))


def test_torch_generator_path_is_unchanged():
    """Training-time sample grids keep drawing exactly what they drew before RowNoise existed."""
    logits = torch.randn(4, 3, 20)
    probs = logits.softmax(-1)
    race = torch.empty_like(probs).exponential_(1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample(logits, generator=torch.Generator().manual_seed(5)), (probs / race).argmax(-1))


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_codes_are_bit_exact_for_any_eval_batch_size(paradigm, single_thread):
    # random weights everywhere (large enough that samples of a class differ; VAR's init would gate
    # its blocks to ~identity)
    model, _ = PARADIGMS[paradigm].tiny(num_classes=16, std=0.3)
    model.eval()
    sampling = SamplingConfig(cfg_scale=2.0, cfg_interval=2, temperature=1.0, top_k=32, top_p=0.95)
    index = torch.arange(32)
    labels = index % 16

    def codes(batch_size: int) -> torch.Tensor:
        return torch.cat([model.generate(labels[s:s + batch_size], sampling,
                                         RowNoise.for_samples(11, index[s:s + batch_size]))
                          for s in range(0, 32, batch_size)])

    by32 = codes(32)
    assert torch.equal(codes(7), by32)
    assert len(by32.flatten(1).unique(dim=0)) > 16  # real draws: samples of a class differ


@pytest.mark.cuda
def test_row_noise_is_the_same_on_cuda_and_captures_in_a_cuda_graph():
    index = torch.arange(8)
    assert torch.equal(RowNoise.for_samples(3, index.cuda()).bits((8, 4, 9)).cpu(),
                       RowNoise.for_samples(3, index).bits((8, 4, 9)))
    logits = torch.randn(8, 4, 64, device="cuda")
    eager = sample(logits, top_k=16, generator=RowNoise.for_samples(3, index.cuda()))
    keys = RowNoise.for_samples(0, index.cuda()).keys.clone()  # static input of the graph
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sample(logits, top_k=16, generator=RowNoise(keys))  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        captured = sample(logits, top_k=16, generator=RowNoise(keys))
    keys.copy_(RowNoise.for_samples(3, index.cuda()).keys)
    graph.replay()
    assert torch.equal(captured, eager)
