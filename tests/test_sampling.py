import torch

from nar_bench.nn.sampling import SamplingConfig, filter_logits, guide, sample, sample_step, with_null_class


def test_guide_formula():
    cond, uncond = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    assert torch.allclose(guide(torch.cat([cond, uncond]), 4.0), uncond + 4.0 * (cond - uncond))


def test_null_class_appended():
    assert torch.equal(with_null_class(torch.tensor([3, 1]), 10), torch.tensor([3, 1, 10, 10]))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.45)).tolist() == [[True, False, False, False]]


def test_sampling_follows_the_distribution_and_is_seeded():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3)
    draws = sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.02)
    assert torch.equal(draws, sample(logits, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(sample(logits[:2], temperature=0), torch.zeros(2, dtype=torch.long))


def test_sample_step_batches_all_tokens_and_drops_guidance_when_told():
    logits = torch.randn(4, 5, 11)  # 2B rows (CFG), 5 tokens in the step
    cfg = SamplingConfig(cfg_scale=3.0, temperature=0)
    assert sample_step(logits, cfg, guided=True).shape == (2, 5)
    assert torch.equal(sample_step(logits, cfg, guided=False), logits[:2].argmax(-1))
