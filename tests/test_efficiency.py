import logging
import statistics

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nar_bench.cli import main
from nar_bench.config import load_config
from nar_bench.errors import NarBenchError
from nar_bench.metrics import efficiency
from nar_bench.metrics.efficiency import (
    find_max_batch,
    kernel_kind,
    measure_generation,
    profile_generation,
)
from nar_bench.nn import cuda_graph
from nar_bench.nn.cuda_graph import GraphedGenerate
from nar_bench.nn.sampling import SamplingConfig
from nar_bench.nn.transformer import TransformerBlock, count_parameters
from nar_bench.paradigms import build_paradigm
from nar_bench.paradigms.nar import NAR
from nar_bench.registry import PARADIGMS
from nar_bench.tracking.names import COMMIT_TAG, DEVICE_TAG
from nar_bench.tracking.provenance import git_commit

GRID = ["data.grid_size=4", "data.image_size=16"]  # 16 tokens: AR 16 steps, NAR 7, PAR-4x 7
SAMPLING = SamplingConfig(cfg_scale=2.0, top_k=5)
# Options without which greedy decoding still draws noise (a CUDA graph's draws differ from eager ones)
GREEDY_OPTIONS = {"maskgit": ["model.options.choice_temperature=0"]}  # MaskGIT's confidence noise


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: threads only slow them down


def tiny_paradigm(paradigm: str, *options: str):
    """(model, tokenizer) of the paradigm's test kit plus ``options``, 5 classes, random weights."""
    return PARADIGMS[paradigm].tiny(*options, num_classes=5, std=0.02)  # randomize_weights' std


class FakeClock:
    """Stands in for time.perf_counter: moves only when a fake generate() says it took time, so
    timings are exact whatever the machine's load."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fake_generate(model, calls, slow_calls=0, oom_above=None, clock=None):
    """Stands in for generate(): records (batch, weight dtype); on ``clock`` the first
    ``slow_calls`` calls take 1000 s and the others 1 s; raises CUDA OOM for batches above ``oom_above``."""

    def generate(labels, sampling, generator=None):
        calls.append((labels.shape[0], model.backbone.output.weight.dtype))
        if oom_above is not None and labels.shape[0] > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if clock is not None:
            clock.now += 1000.0 if len(calls) <= slow_calls else 1.0
        return torch.zeros(labels.shape[0], *model.grid, dtype=torch.long)

    return generate


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_protocol_returns_sane_fields_for_real_generation(paradigm):
    model, _ = tiny_paradigm(paradigm)
    r = measure_generation(model, 3, SAMPLING, dtype="fp32", warmup=1, repeats=3, device="cpu", size="tiny")
    assert r.status == "ok" and r.paradigm == paradigm and r.size == "tiny"
    assert r.steps == model.num_steps and r.params == count_parameters(model)
    assert r.batch_size == 3 and r.dtype == "fp32" and r.cfg and not r.tokenizer_decode and not r.cuda_graph
    assert len(r.latency_all) == 3 and all(t > 0 for t in r.latency_all)
    assert r.latency_s == statistics.median(r.latency_all)
    assert r.throughput_img_s == pytest.approx(3 / r.latency_s)
    assert r.peak_mem_gb is None and r.device.startswith("cpu") and r.torch == torch.__version__


def test_random_weights_leave_no_zero_initialised_matrix():
    model, _ = tiny_paradigm("nar")  # NAR zero-initialises both output heads
    matrices = {name: p for name, p in model.named_parameters() if p.dim() >= 2}
    assert {"backbone.output.weight", "vertical_output.weight"} <= set(matrices)
    assert all(p.std() > 0.01 for p in matrices.values())


def test_warmup_is_not_timed_and_flags_are_real(monkeypatch):
    model, tokenizer = tiny_paradigm("ar")
    calls, decoded, clock = [], [], FakeClock()
    monkeypatch.setattr(efficiency, "time", clock)
    monkeypatch.setattr(model, "generate", fake_generate(model, calls, slow_calls=2, clock=clock))
    decode = lambda codes: decoded.append(codes.shape) or tokenizer.decode(codes)
    r = measure_generation(model, 4, SamplingConfig(cfg_scale=1.0), dtype="bf16", warmup=2, repeats=3,
                           decode_fn=decode, device="cpu")
    assert len(calls) == 5 and len(r.latency_all) == 3  # 2 warm-up + 3 timed
    assert r.latency_all == [1.0, 1.0, 1.0]  # exactly the timed calls: the slow warm-up calls are not in them
    assert all(batch == 4 and dtype == torch.bfloat16 for batch, dtype in calls)
    assert decoded == [(4, 4, 4)] * 5 and r.tokenizer_decode and r.dtype == "bf16" and not r.cfg


def test_out_of_memory_is_recorded_and_ends_the_batch_sizes(monkeypatch):
    model, _ = tiny_paradigm("nar")
    calls = []
    monkeypatch.setattr(model, "generate", fake_generate(model, calls, oom_above=4))
    max_batch, results = find_max_batch(model, [16, 1, 8, 2, 4], SAMPLING, dtype="fp32", warmup=1, repeats=1,
                                        device="cpu")
    assert max_batch == 4
    assert [(r.batch_size, r.status) for r in results] == [(1, "ok"), (2, "ok"), (4, "ok"), (8, "oom")]
    assert results[-1].latency_s is None and results[-1].throughput_img_s is None
    assert 16 not in {batch for batch, _ in calls}


def test_cuda_graph_needs_a_gpu_and_says_so():
    model, _ = tiny_paradigm("ar")
    with pytest.raises(NarBenchError, match="cuda_graph needs a CUDA device"):
        measure_generation(model, 1, SAMPLING, dtype="fp32", repeats=1, device="cpu", cuda_graph=True)


def test_a_capture_that_needs_its_warm_up_pass_falls_back_to_one(monkeypatch, caplog):
    made = []

    class FakeGraph:
        def __init__(self, paradigm, batch_size, sampling, warmup=1):
            made.append(warmup)
            if warmup == 0 and batch_size == 3:
                raise RuntimeError("operation not permitted when stream is capturing\nmore")
            if batch_size == 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(cuda_graph, "GraphedGenerate", FakeGraph)
    model, _ = tiny_paradigm("ar")
    efficiency.capture_generation(model, 2, SAMPLING, warm=True)
    assert made == [0]  # warm: captured straight away
    with caplog.at_level(logging.WARNING):
        efficiency.capture_generation(model, 3, SAMPLING, warm=True)
    assert made == [0, 0, 1] and "needs an eager pass before its capture (operation not permitted" in caplog.text
    with pytest.raises(torch.cuda.OutOfMemoryError):  # out of memory is the point's result, not retried
        efficiency.capture_generation(model, 4, SAMPLING, warm=True)
    efficiency.capture_generation(model, 5, SAMPLING)
    assert made == [0, 0, 1, 0, 1]


@pytest.mark.cuda
@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_a_warm_compiled_paradigm_captures_a_new_batch_size_without_an_eager_pass(paradigm, caplog):
    from nar_bench.metrics.efficiency import capture_generation

    model, tokenizer = tiny_paradigm(paradigm, *GREEDY_OPTIONS.get(paradigm, []))
    model = model.cuda().to(torch.bfloat16)
    tokenizer.cuda()  # VAR's next-scale inputs come from its tokenizer, kept fp32 as in the bench
    greedy = SamplingConfig(cfg_scale=2.0, temperature=0)
    if not model.compile_decoding():
        pytest.skip(f"'{paradigm}' has no compiled decode path")
    with torch.inference_mode():
        model.generate(torch.tensor([0, 1], device="cuda"), greedy)  # compiles at batch 2
        labels = torch.tensor([0, 3, 1, 2, 4], device="cuda")
        with caplog.at_level(logging.WARNING):
            graphed = capture_generation(model, 5, greedy, warm=True)
        assert "eager pass" not in caplog.text  # no recompile or other capture-refused work at the new size
        assert torch.equal(graphed(labels), model.generate(labels, greedy))


@pytest.mark.cuda
def test_a_warm_capture_that_needs_a_compile_falls_back_and_leaves_no_memory_behind(caplog):
    import gc

    from nar_bench.metrics.efficiency import capture_generation, release_decode_state

    model, _ = tiny_paradigm("ar")
    model = model.cuda().to(torch.bfloat16)
    greedy = SamplingConfig(cfg_scale=2.0, temperature=0)
    assert model.compile_decoding()
    labels = torch.tensor([0, 3, 1], device="cuda")
    with torch.inference_mode():
        model.generate(labels[:2], greedy)  # compiled for bf16
        model.float()  # fp32 weights: the fused step needs new graphs
        release_decode_state(model)  # as the bench does between points (it also drops cuBLAS's workspaces)
        baseline = torch.cuda.memory_allocated()
        with caplog.at_level(logging.WARNING):
            graphed = capture_generation(model, 3, greedy, warm=True)
        assert "needs an eager pass before its capture" in caplog.text
        assert torch.equal(graphed(labels), model.generate(labels, greedy))
    del graphed
    release_decode_state(model)
    gc.collect()
    assert torch.cuda.memory_allocated() <= baseline + 2**20  # the refused capture's pool was freed


@pytest.mark.cuda
@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_cuda_graph_replay_equals_eager_generation(paradigm):
    model, tokenizer = tiny_paradigm(paradigm, *GREEDY_OPTIONS.get(paradigm, []))
    model, _ = model.cuda(), tokenizer.cuda()
    greedy = SamplingConfig(cfg_scale=2.0, temperature=0)
    labels = torch.tensor([0, 3, 1], device="cuda")
    graphed = GraphedGenerate(model, 3, greedy)
    assert torch.equal(graphed(labels), model.generate(labels, greedy))
    r = measure_generation(model, 3, SAMPLING, dtype="bf16", repeats=2, cuda_graph=True)
    assert r.status == "ok" and r.cuda_graph and r.peak_mem_gb > 0


def test_profile_lists_the_top_ops():
    model, _ = tiny_paradigm("par", "model.options.regions=4")
    table = profile_generation(model, 2, SAMPLING, "fp32", row_limit=5)
    op_rows = [line for line in table.splitlines() if "aten::" in line]
    assert 0 < len(op_rows) <= 5 and "CPU total" in table
    by_kind = table.split("\n\n")[0].splitlines()
    assert by_kind[0].split() == ["kind", "ms", "%", "calls"]
    shares = {line[:24].strip(): float(line.split()[-2]) for line in by_kind[1:]}
    assert "GEMM" in shares and abs(sum(shares.values()) - 100) < 0.5


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "GEMM"),
    ("nvjet_tst_128x64_64x8_1x2_h_bz_coopA_NTN", "GEMM"),
    ("aten::addmm", "GEMM"),
    ("_decode_attention_kernel", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("void at::native::sbtopk::gatherTopK<c10::BFloat16, unsigned int, 2, false>", "top-k / sort"),
    ("triton_red_fused__to_copy_rms_norm_0", "norm"),
    ("Memcpy DtoD (Device -> Device)", "copy / cast"),
    ("triton_poi_fused_mul_silu_3", "elementwise / reduction"),
    ("triton_red_fused_add_clone_convolution_native_group_norm_12", "norm"),
    ("triton_poi_fused_add_convolution_silu_44", "elementwise / reduction"),  # a conv's bias add, fused
    ("triton_poi_fused__to_copy_add_clone_convolution_expand_mean_mul_pow_rsqrt_silu_unsqueeze_view_65", "norm"),
    ("triton_poi_fused__to_copy__unsafe_index_add_arange_clone_convolution_mul_silu_unsqueeze_68",
     "elementwise / reduction"),
    ("triton_tem_fused_mm_0", "GEMM"),
    ("_swiglu_gemm_kernel", "GEMM"),  # the fused decode step's SwiGLU: a GEMM with its gate inside
    ("_group_norm_moments_kernel", "norm"),  # the fast decoder's channels_last GroupNorm
    ("_group_norm_apply_kernel", "norm"),
])
def test_profiled_kernels_are_grouped_by_kind(name, kind):
    assert kernel_kind(name) == kind


@pytest.mark.cuda
def test_profile_on_a_gpu_lists_the_top_kernels():
    model, _ = tiny_paradigm("par", "model.options.regions=4")
    table = profile_generation(model.cuda(), 2, SAMPLING, "bf16", row_limit=5)
    assert "CUDA total" in table and "aten::" not in table  # kernels only, no CPU-side ops


def bench_args(tmp_path, *extra):
    points = "[{name: AR-t, paradigm: ar, size: tiny}, {paradigm: nar, size: tiny}]"
    return ["bench", "experiments/throughput_sweep.yaml", f"bench.points={points}", "bench.batch_sizes=[1,2,4]",
            "bench.device=cpu", "bench.cuda_graph=false", "bench.compile=false",
            "bench.dtype=fp32", "bench.warmup=1", "bench.repeats=1", "bench.vocab_size=24",
            "bench.num_classes=5", "bench.profile_batch=1", *GRID, f"bench.output_dir={tmp_path}/out",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_location={tmp_path}/art",
            *extra]


def test_sweep_runs_points_as_child_runs_records_oom_and_writes_tables_and_plots(tmp_path, monkeypatch, caplog):
    import nar_bench.bench.runner as runner

    original, original_cost = NAR.generate, runner.generation_cost

    def nar_generate(self, labels, sampling, generator=None):
        if labels.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, labels, sampling, generator)

    def generation_cost(paradigm, *args, **kwargs):
        if isinstance(paradigm, NAR):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory while counting (simulated)")
        return original_cost(paradigm, *args, **kwargs)

    monkeypatch.setattr(NAR, "generate", nar_generate)
    monkeypatch.setattr(runner, "generation_cost", generation_cost)
    with caplog.at_level(logging.WARNING):
        assert main(bench_args(tmp_path, "bench.train_batch=2", "bench.profile_best=true")) == 0

    out = tmp_path / "out"
    points = pd.read_csv(out / "points.csv")
    assert list(zip(points.model, points.batch_size, points.status, strict=True)) == [
        ("AR-t", 1, "ok"), ("AR-t", 2, "ok"), ("AR-t", 4, "ok"), ("nar-tiny", 1, "ok"), ("nar-tiny", 2, "oom")]
    assert (points.top_k == 2000).all() and (points.steps == [16, 16, 16, 7, 7]).all()
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    assert summary.loc["nar-tiny", "max_batch"] == 1 and summary.loc["nar-tiny", "oom_at"] == 2
    assert summary.loc["AR-t", "best_batch"] in (1, 2, 4) and pd.isna(summary.loc["AR-t", "oom_at"])

    command = points.command.iloc[0]
    assert command.startswith("nar-bench bench experiments/throughput_sweep.yaml") and "bench.batch_sizes" in command
    assert {"commit", "date", "device", "torch"} <= set(points.columns) and points.commit.iloc[0]
    md = (out / "throughput.md").read_text()
    assert command in md and points.commit.iloc[0] in md and "| nar-tiny" in md
    for name in ("figure6", "latency_s_vs_batch", "peak_mem_gb_vs_batch", "throughput_img_s_vs_batch"):
        assert command in Image.open(out / f"{name}.png").text["Description"]
    # profiles at bench.profile_batch and at the best-throughput batch (one section when they coincide)
    best = int(summary.loc["AR-t", "best_batch"])
    ar_profile = (out / "profile_AR-t.txt").read_text()
    assert ar_profile.count("aten::") >= 1 and "## batch 1\n" in ar_profile and f"## batch {best}\n" in ar_profile
    assert ar_profile.count("## batch") == (1 if best == 1 else 2)
    assert "aten::" in (out / "profile_nar-tiny.txt").read_text()
    ar = points[points.model == "AR-t"]  # roofline columns from the cost counted on the eager engine
    assert (ar.gflop_per_image > 0).all() and (ar.tflops_s > 0).all() and (ar.gbps > 0).all()
    assert points[points.model == "nar-tiny"].gflop_per_image.isna().all()  # its counting run hit the OOM
    assert "no roofline columns for 'nar-tiny'" in caplog.text
    training = pd.read_csv(out / "training.csv")  # dense only on a CPU (FlexAttention trains on GPUs)
    assert list(zip(training.model, training.attention, training.status, strict=True)) == [
        ("AR-t", "dense", "ok"), ("nar-tiny", "dense", "ok")]
    assert (training.images_s > 0).all() and (training.batch_size == 2).all()
    assert "## Training step" in (out / "throughput.md").read_text()
    timeline = pd.read_csv(out / "timeline.csv")  # what each model's wall time went on
    phases = ["build_s", "cost_s", "points_s", "profile_s", "training_s"]
    assert list(timeline.model) == ["AR-t", "nar-tiny"] and not timeline.kept.any()
    assert (timeline[phases] > 0).all().all()
    assert timeline.total_s.to_numpy() == pytest.approx(timeline[phases].sum(axis=1).to_numpy())
    assert "## Where the sweep's time went" in md and "This call: " in md

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("throughput").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "throughput-sweep"]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and len(children) == 5 + 2  # a run per point + each model's rows
    assert sorted(r.info.run_name for r in children if r.info.run_name.endswith("/rows")) == ["AR-t/rows",
                                                                                                  "nar-tiny/rows"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.data.tags[COMMIT_TAG] == git_commit() and r.data.tags[DEVICE_TAG] for r in runs)
    by_name = {r.info.run_name: r for r in children}
    ok, oom = by_name["AR-t/bs=4"].data, by_name["nar-tiny/bs=2"].data
    assert ok.params["paradigm"] == "ar" and ok.params["batch_size"] == "4" and ok.params["steps"] == "16"
    assert {"latency_s", "throughput_img_s"} <= set(ok.metrics) and "peak_mem_gb" not in ok.metrics
    assert oom.params["status"] == "oom" and not oom.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"points.csv", "summary.csv", "throughput.md", "figure6.png", "profile_AR-t.txt"} <= artifacts


def test_a_stopped_bench_resumes_keeping_the_models_it_measured(tmp_path, monkeypatch):
    """The first run dies in NAR's cost counting (after AR was measured); the re-run measures only
    NAR and reports both from one parent run; --fresh measures both again."""
    import nar_bench.bench.runner as runner

    measured = []
    original = runner.bench_model

    def bench_model(label, *args, **kwargs):
        measured.append(label)
        if label == "nar-tiny" and measured.count("nar-tiny") == 1:
            raise KeyboardInterrupt("SIGTERM")  # what a time limit's signal becomes (lifecycle.interruptible)
        yield from original(label, *args, **kwargs)

    monkeypatch.setattr(runner, "bench_model", bench_model)
    args = bench_args(tmp_path, "bench.points=[{name: AR-t, paradigm: ar, size: tiny}, {paradigm: nar, size: tiny}]")
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 130 and not (tmp_path / "out" / "points.csv").exists()
    assert main(args) == 0 and measured == ["AR-t", "nar-tiny", "nar-tiny"]
    points = pd.read_csv(tmp_path / "out" / "points.csv")
    assert list(zip(points.model, points.batch_size, strict=True)) == [
        ("AR-t", 1), ("AR-t", 2), ("AR-t", 4), ("nar-tiny", 1), ("nar-tiny", 2), ("nar-tiny", 4)]
    assert "aten::" in (tmp_path / "out" / "profile_AR-t.txt").read_text()  # the kept model's profile too
    timeline = pd.read_csv(tmp_path / "out" / "timeline.csv")  # the kept model's times are the first call's
    assert list(zip(timeline.model, timeline.kept, strict=True)) == [("AR-t", True), ("nar-tiny", False)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("throughput").experiment_id])
    parents = [r for r in runs if r.info.run_name == "throughput-sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert main([*args, "--fresh"]) == 0 and measured[3:] == ["AR-t", "nar-tiny"]


def test_end_to_end_points_are_split_into_tokens_and_decode():
    from nar_bench.bench.report import decode_split

    gen = {"paradigm": "nar", "size": "B", "params": 1, "steps": 31, "dtype": "bf16", "cfg_scale": 2.0,
           "top_k": 2000, "top_p": 1.0, "status": "ok"}
    points = pd.DataFrame([
        {**gen, "model": "NAR-B", "batch_size": 8, "tokenizer_decode": False, "latency_s": 0.02},
        {**gen, "model": "NAR-B", "batch_size": 64, "tokenizer_decode": False, "latency_s": 0.05},
        {**gen, "model": "NAR-B+VQ", "batch_size": 64, "tokenizer_decode": True, "latency_s": 0.15},
        {**gen, "model": "NAR-B+VQ", "batch_size": 256, "tokenizer_decode": True, "latency_s": 0.5},  # no pair
        {**gen, "model": "NAR-B-k5", "top_k": 5, "batch_size": 64, "tokenizer_decode": False, "latency_s": 0.01}])
    split = decode_split(points)
    assert split[["model", "tokens_model", "batch_size"]].values.tolist() == [["NAR-B+VQ", "NAR-B", 64]]
    row = split.iloc[0]
    assert row.decode_s == pytest.approx(0.10) and row.decode_img_s == pytest.approx(640)
    assert row.decode_share_pct == pytest.approx(100 * 0.10 / 0.15)
    assert decode_split(points[~points.tokenizer_decode]).empty


@pytest.mark.parametrize("override, message", [
    ("bench.dtype=fp16", "unknown bench.dtype 'fp16'"),
    ("bench.include_decode=true", "bench.include_decode"),
    ("bench.points=[{paradigm: par, size: tiny, options: {regionz: 4}}]", "regionz"),
])
def test_bad_bench_settings_fail_before_any_run(tmp_path, capsys, override, message):
    assert main(bench_args(tmp_path, override)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "out").exists()


def test_compiled_decoding_generates_the_same_tokens_as_eager():
    model, _ = tiny_paradigm("nar")
    greedy = SamplingConfig(cfg_scale=2.0, temperature=0)
    labels = torch.tensor([0, 3])
    eager = model.generate(labels, greedy)
    r = measure_generation(model, 2, greedy, dtype="fp32", warmup=1, repeats=1, device="cpu", compile=True)
    assert r.compiled and r.status == "ok"
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert blocks and all(b.fused_decode is not None and b.fused_decode.compile for b in blocks)  # fused step on
    assert torch.equal(model.generate(labels, greedy), eager)


@pytest.mark.parametrize("paradigm", ["ar", "nar"])
def test_compile_time_is_counted_once_not_at_every_batch_size(paradigm):
    """compile_s is torch.compile's own time: the second batch size reuses every graph (rows are
    the one dynamic dim), so it compiles nothing."""
    model, _ = tiny_paradigm(paradigm)
    first, second = (measure_generation(model, b, SAMPLING, dtype="fp32", warmup=1, repeats=1, device="cpu",
                                        compile=True) for b in (2, 3))
    assert first.compile_s >= 0 and second.compile_s == 0 and second.setup_s > 0


def test_a_paradigm_without_a_compiled_path_is_recorded_as_eager(monkeypatch):
    model, _ = tiny_paradigm("ar")
    monkeypatch.setattr(type(model), "compile_decoding", lambda self: False)  # the Paradigm hook's default
    r = measure_generation(model, 2, SAMPLING, dtype="fp32", warmup=0, repeats=1, device="cpu", compile=True)
    assert r.status == "ok" and not r.compiled and r.compile_s is None


def test_inference_decoder_casts_to_bf16_channels_last_and_decodes_like_fp32():
    from nar_bench.metrics.efficiency import inference_decoder
    from tests.test_vq import tiny_tokenizer

    tok = tiny_tokenizer()
    codes = tok.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    reference = tok.decode(codes)
    decode = inference_decoder(tok, "bf16")
    convs = [m.weight for m in tok.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.dtype == torch.bfloat16 for w in convs)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    images = decode(codes)
    assert images.shape == reference.shape
    assert (images.float() - reference).abs().mean() < 0.05  # bf16 rounding, not a different decoder


def test_nar_l_video_point_times_the_4x16x16_code_space_in_34_steps():
    from omegaconf import OmegaConf

    from nar_bench.bench.runner import bench_points, bench_tokenizer
    from nar_bench.config import merge

    points = dict(bench_points(load_config("experiments/throughput_sweep.yaml")))
    point = points["NAR-L-video"]
    _, space = bench_tokenizer(point)
    assert space.grid == (4, 16, 16) and space.vocab_size == 8192 and point.bench.num_classes == 101
    assert (point.model.paradigm, point.model.size) == ("nar_video", "L")
    tiny = merge(point, OmegaConf.from_dotlist(["model.size=tiny"]))  # same code space, CPU-sized weights
    model = build_paradigm(tiny, space, point.bench.num_classes)
    assert model.num_steps == 34 and model.grid == (4, 16, 16)
    r = measure_generation(model, 1, SAMPLING, dtype="fp32", warmup=0, repeats=1, device="cpu", size="tiny")
    assert r.status == "ok" and r.steps == 34 and r.paradigm == "nar_video"
