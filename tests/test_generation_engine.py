"""The one generation engine (nar_bench/paradigms/generation.py) of evaluation and bench: which
engine runs where (one clear error otherwise), its invariance rule (fixed micro-batches from each
shard's first sample, padded with the indices that follow; fixed decode chunks) and, on a GPU, the
graph engine: its tokens equal the eager engine's in fp32, its shards do not depend on how they are
assigned to processes in bf16, and a run killed mid-shard resumes to the same bytes."""

from __future__ import annotations

import copy
import os
import signal
import textwrap
import time

import numpy as np
import pytest
import torch

from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.evaluation.scoring import check_eval_inputs
from nar_bench.nn.noise import RowNoise
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.paradigms.generation import GenerationEngine, resolve_engine
from nar_bench.paradigms.raster_ar import RasterAR
from nar_bench.registry import PARADIGMS
from tests.conftest import ROOT, finish, randomize_heads, run_python, signal_group, start_python

SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=8)

pytestmark = pytest.mark.usefixtures("single_thread")


class EagerOnlyAR(RasterAR):
    """A paradigm without a compiled decode path (the Paradigm default)."""

    compiled_decoding = False
    name = "eager_only_ar"


def test_auto_is_graph_only_where_it_can_run_and_graph_elsewhere_is_one_clear_error():
    nar = PARADIGMS["nar"]
    assert resolve_engine("auto", nar, cuda=False, precision="32-true") == "eager"
    assert resolve_engine("auto", nar, cuda=True, precision="bf16-mixed") == "graph"
    assert resolve_engine("auto", nar, cuda=True, precision="16-mixed") == "eager"  # no fp16 graph engine
    assert resolve_engine("auto", EagerOnlyAR, cuda=True, precision="bf16-mixed") == "eager"
    assert resolve_engine("eager", nar, cuda=True, precision="bf16-mixed") == "eager"
    assert resolve_engine("graph", nar, cuda=True, precision="32-true") == "graph"
    cases = [(("graph", nar, False, "32-true"), "eval.engine=graph replays CUDA graphs and needs a GPU"),
             (("graph", EagerOnlyAR, True, "bf16-mixed"), "paradigm 'eager_only_ar' has no compiled decode path"),
             (("graph", nar, True, "16-mixed"), "trainer.precision='16-mixed' is neither"),
             (("fast", nar, True, "bf16-mixed"), "eval.engine='fast' is not valid; choose one of: auto, eager, graph")]
    for args, message in cases:
        with pytest.raises(NarBenchError, match=message):
            resolve_engine(*args)


def test_an_engine_that_cannot_run_fails_the_evaluation_checks_before_training():
    cfg = load_config(str(ROOT / "experiments" / "demo.yaml"), ["trainer.accelerator=cpu", "eval.engine=graph"])
    with pytest.raises(NarBenchError, match="eval.engine=graph replays CUDA graphs and needs a GPU"):
        check_eval_inputs(cfg)


def test_micro_batches_start_at_the_first_sample_and_the_last_is_filled_with_the_next_indices():
    model, tokenizer = PARADIGMS["nar"].tiny(num_classes=16, std=0.3)
    model.eval()
    calls = []
    generate = model.generate

    def recorded(labels, sampling, generator=None):
        calls.append(labels.tolist())
        return generate(labels, sampling, generator)

    model.generate = recorded
    engine = GenerationEngine(model, SAMPLING, 3, decode=tokenizer.decode, decode_batch=4)
    codes = engine.sample_codes(5, 7, seed=11, num_classes=16)  # samples 5 .. 11
    assert calls == [[5, 6, 7], [8, 9, 10], [11, 12, 13]]  # 12 and 13 fill the last batch, then are dropped
    rows = [torch.arange(s, s + 3) for s in (5, 8, 11)]
    expected = torch.cat([generate(index % 16, SAMPLING, RowNoise.for_samples(11, index)) for index in rows])[:7]
    assert torch.equal(codes, expected)
    stats = engine.stats
    assert (stats.samples, stats.rows, len(stats.batch_s)) == (7, 9, 3) and stats.generate_s > 0
    # the eager engine on a CPU: any micro-batch size gives the same codes
    assert torch.equal(GenerationEngine(model, SAMPLING, 7).sample_codes(5, 7, 11, 16), codes)


def test_codes_are_decoded_in_chunks_of_exactly_decode_batch():
    model, tokenizer = PARADIGMS["nar"].tiny(num_classes=16, std=0.3)
    shapes = []
    engine = GenerationEngine(model, SAMPLING, 4, decode=lambda c: shapes.append(len(c)) or tokenizer.decode(c),
                              decode_batch=4)
    codes = engine.sample_codes(0, 6, seed=0, num_classes=16)
    images = engine.decode(codes)
    assert shapes == [4, 4] and images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images[4:], engine.decode(codes[4:]))  # padding never changes the kept images
    speed = engine.stats.speed()
    assert speed["decode_img_s"] > 0 and speed["generate_img_s"] > 0 and speed["setup_s"] == 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_images_decoded_to_the_host_are_the_decoded_images_in_adm_layout(device):
    """decode_to_host (what the shards are written from; from a GPU copied chunk by chunk while the
    next chunk decodes) gives decode's images exactly, as (n, H, W, 3), and counts the same decode."""
    model, tokenizer = PARADIGMS["nar"].tiny(num_classes=16, std=0.3)
    engine = GenerationEngine(model.to(device), SAMPLING, 4, decode=tokenizer.to(device).decode, decode_batch=4)
    codes = engine.sample_codes(0, 10, seed=0, num_classes=16)  # chunks of 4, 4 and 2 (padded)
    host = engine.decode_to_host(codes)
    assert isinstance(host, np.ndarray) and host.shape == (10, 16, 16, 3) and host.dtype == np.uint8
    assert np.array_equal(host, engine.decode(codes).permute(0, 2, 3, 1).cpu().numpy())
    assert engine.stats.decoded == 20


# --- the graph engine (GPU) -------------------------------------------------------------------------
COMPILED = sorted(name for name, cls in PARADIGMS.items() if cls.compiled_decoding)


@pytest.mark.cuda
@pytest.mark.parametrize("paradigm", COMPILED)
def test_the_graph_engine_samples_the_eager_engines_tokens_in_fp32(paradigm):
    """Sampled (not greedy) tokens: top-k 8 with per-sample noise, CFG on, every paradigm."""
    model, tokenizer = PARADIGMS[paradigm].tiny(num_classes=16, std=0.3)
    model, tokenizer = model.cuda(), tokenizer.cuda()
    with torch.inference_mode():
        eager = GenerationEngine(model, SAMPLING, 8).sample_codes(0, 20, seed=3, num_classes=16)
        graph = GenerationEngine.for_evaluation(model, tokenizer, SAMPLING, 8, 8, "graph", "fp32")
        assert torch.equal(graph.sample_codes(0, 20, seed=3, num_classes=16), eager)
        assert graph.graphed is not None and graph.stats.setup_s > 0 and graph.stats.rows == 24
    assert next(model.parameters()).dtype == torch.float32 and all(  # the model itself is untouched
        getattr(m, "fused_decode", None) is None for m in model.modules())


@pytest.mark.cuda
def test_the_decoders_compilation_is_setup_and_compile_time_not_decode_time():
    """decode img/s is the steady state: the graph engine's first decode compiles and captures the
    VQ decoder for its chunk shape inside setup, and every second torch.compile spends in it is
    reported as compile."""
    from nar_bench.paradigms.generation import compile_seconds

    model, tokenizer = PARADIGMS["nar"].tiny("tokenizer.name=vq", "data.image_size=64", num_classes=16, std=0.3)
    # start from an empty compile cache, as a fresh process does: Dynamo reuses a decoder of this shape
    # that an earlier test compiled (it guards on the modules' structure, not their identity), and past
    # its recompile limit (8 entries for VQTokenizer.decode, which test_fast_vae_decode compiles for
    # several shapes and settings) it runs the function uncompiled
    torch._dynamo.reset()
    with torch.inference_mode():
        engine = GenerationEngine.for_evaluation(model.cuda(), tokenizer.cuda(), SAMPLING, 8, 8, "graph", "bf16")
        codes = engine.sample_codes(0, 20, seed=3, num_classes=16)
        stats, compiled = copy.deepcopy(engine.stats), compile_seconds()
        images = engine.decode(codes)
        assert compile_seconds() > compiled  # the decoder was compiled in this first decode
        assert engine.stats.compile_s - stats.compile_s == pytest.approx(compile_seconds() - compiled, rel=1e-9)
        assert engine.stats.setup_s - stats.setup_s > engine.stats.compile_s - stats.compile_s
        again = compile_seconds()
        assert torch.equal(engine.decode(codes), images) and compile_seconds() == again  # compiled once
    assert images.shape == (20, 3, 64, 64) and engine.stats.decoded == 40


GPU_CONFIG = ["model.size=small", "model.paradigm=nar", "data.image_size=64", "data.grid_size=16",
              "tokenizer.name=vq", "tokenizer.options.preset=synthetic", "tokenizer.untrained=true",
              "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed", "eval.engine=graph",
              "eval.batch_size=48", "eval.shard_size=64", "eval.decode_batch=16", "eval.sampling.top_k=64"]
GPU_SAMPLES = 320  # 5 shards of 64, each generated as 48 + (16 + 32 padding rows)


def gpu_module(*overrides: str):
    from nar_bench.lit.module import GeneratorModule

    cfg = load_config(str(ROOT / "experiments" / "demo.yaml"), [*GPU_CONFIG, *overrides])
    torch.manual_seed(0)
    module = GeneratorModule(cfg, num_classes=16)
    randomize_heads(module.paradigm, std=1.0)
    return cfg, module


@pytest.mark.cuda
def test_graph_engine_shards_do_not_depend_on_which_process_generates_them_in_bf16(tmp_path):
    """One Trainer.predict over every shard vs two 'ranks' (each its own engine: copies, compile,
    capture) taking the shards in another order: the same .npz, byte for byte."""
    from nar_bench.evaluation.samples import engine_settings, generate_samples, sample_settings
    from nar_bench.lit.shard_sampling import ShardSampler
    from nar_bench.metrics.sample_store import SampleStore

    cfg, module = gpu_module()
    settings = sample_settings(cfg, 16)
    whole = generate_samples(module, cfg, GPU_SAMPLES, tmp_path / "whole.npz", 48, settings)
    store = SampleStore(tmp_path / "split.npz", GPU_SAMPLES, 64, {**settings, **engine_settings(module, cfg, 48)})
    store.open()
    module.cuda()
    for shards in ([4, 2, 0], [3, 1]):
        rank = ShardSampler(module, store, SamplingConfig(**cfg.eval.sampling), cfg.seed, 16, 48, 16,
                            engine="graph", dtype="bf16")
        for shard in shards:
            store.write_shard(shard, *rank.shard_images(shard))
    assert store.assemble().read_bytes() == whole.read_bytes()


KILL_SCRIPT = """
import sys
import time
from pathlib import Path
import torch
import nar_bench
from nar_bench.evaluation.samples import generate_samples, sample_settings
from nar_bench.metrics.sample_store import SampleStore
from tests.test_generation_engine import GPU_SAMPLES, gpu_module

if len(sys.argv) > 2:  # stall: the second shard is generated, then the process waits to be killed
    write = SampleStore.write_shard

    def stalled(self, shard, images, labels):
        if shard == 1:
            Path(sys.argv[2]).touch()
            time.sleep(3600)
        return write(self, shard, images, labels)

    SampleStore.write_shard = stalled
cfg, module = gpu_module()
generate_samples(module, cfg, GPU_SAMPLES, sys.argv[1], cfg.eval.batch_size, sample_settings(cfg, 16))
"""


@pytest.mark.cuda
def test_graph_engine_run_killed_mid_shard_resumes_to_the_same_bytes(tmp_path):
    from nar_bench.evaluation.samples import generate_samples, sample_settings

    cfg, module = gpu_module()  # the uninterrupted run, in this process
    whole = generate_samples(module, cfg, GPU_SAMPLES, tmp_path / "whole.npz", cfg.eval.batch_size,
                             sample_settings(cfg, 16))
    script = tmp_path / "generate.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, stalled = tmp_path / "killed.npz", tmp_path / "stalled"
    child = start_python([str(script), str(out), str(stalled)], env)
    while not stalled.exists() and child.proc.poll() is None:
        time.sleep(0.05)
    signal_group(child.proc, signal.SIGKILL)  # shard 0 written, shard 1 generated but not yet written
    killed = finish(child)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists() and [p.name for p in out.with_name(out.name + ".shards").glob("*.npz")] == [
        "shard_00000.npz"]
    resumed = run_python([str(script), str(out)], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.read_bytes() == whole.read_bytes()
