import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import torch

import nar_bench  # noqa: F401  (first: makes torchvision importable before Lightning imports it)
from nar_bench.metrics.cache import CACHE_ENV
from nar_bench.nn.transformer import TransformerConfig
from nar_bench.tokenizers.base import CodeSpace

ROOT = Path(__file__).resolve().parents[1]
# The one time limit of the subprocess tests, and only a hang guard: no outcome depends on how fast
# the machine is (a DDP sweep takes minutes on an idle 2-core box and many more under load).
HANG_GUARD_S = 30 * 60


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg() -> TransformerConfig:
    return TransformerConfig(dim=32, n_layers=2, n_heads=4, vocab_size=24, num_classes=5)


def on_grid(cfg: TransformerConfig, grid: tuple[int, ...]) -> tuple[TransformerConfig, CodeSpace]:
    """(model config, raster code space of its vocabulary over ``grid``): a paradigm's first two
    arguments, e.g. ``NAR(*on_grid(cfg, (4, 4)))``."""
    return cfg, CodeSpace(cfg.vocab_size, tuple(grid))


def randomize_heads(module: torch.nn.Module, std: float = 0.3):
    """Output layers are zero-initialised (all logits equal); equivalence tests need real logits.
    Returns ``module``."""
    for name, p in module.named_parameters():
        if "output" in name:
            torch.nn.init.normal_(p, std=std)
    return module


def train_steps(model: torch.nn.Module, tokens, labels, steps: int, lr: float = 3e-3) -> list[float]:
    """Losses of ``steps`` AdamW steps on one batch; asserts every parameter gets a gradient."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(tokens, labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
    return losses


def tracking_overrides(tmp_path: Path, experiment: str | None = "test") -> list[str]:
    """Dotlist overrides keeping a test's MLflow store, artifacts and run folders under ``tmp_path``
    (and its runs in MLflow experiment ``experiment``; None: the config's own)."""
    overrides = [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_location={tmp_path}/art",
                 f"output_dir={tmp_path}/runs"]
    return overrides + ([f"tracking.experiment={experiment}"] if experiment else [])


@pytest.fixture
def metrics_cache(tmp_path_factory, monkeypatch):
    """One metrics cache (domain classifiers, reference features) per test session, not results/cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "metrics-cache"))


@pytest.fixture
def single_thread():
    """Tiny conv nets run faster on one thread, and much faster on a busy shared CPU (no spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """A weights file for torch-fidelity's InceptionV3 with random weights: the official file is not
    on test machines, and the wiring (layers, hooks, shapes) does not depend on trained weights."""
    from nar_bench.metrics.fidelity import torch_fidelity

    inception = torch_fidelity.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", lambda *args, **kwargs: None)
        patch.setattr(inception, "load_state_dict", lambda self, state_dict: None)
        random_init = inception("inception-v3-compat", ["2048"], feature_extractor_weights_path="not read")
    for module in random_init.modules():  # He init keeps activations O(1) through the 90-odd ReLU layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(random_init.fc.weight, std=2048**-0.5)
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(random_init.state_dict(), path)
    return path


@dataclass
class Child:
    """A Python subprocess of a test (see :func:`start_python`); its output goes to files, so no pipe
    fills up and blocks it while the test waits for another process."""

    args: list[str]
    proc: subprocess.Popen
    stdout: IO[str]
    stderr: IO[str]

    def output(self, close: bool = False) -> tuple[str, str]:
        """(stdout, stderr) so far; ``close``: and close the files."""
        texts = []
        for f in (self.stdout, self.stderr):
            f.seek(0)
            texts.append(f.read())
            if close:
                f.close()
        return texts[0], texts[1]


def start_python(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Child:
    """Starts ``python <args>`` (default: this process's environment, the repository root) in a
    process group of its own, which holds every process it starts (Lightning's DDP ranks), with
    faulthandler on, so that :func:`finish` can show where a hung one was."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)
    return Child(list(args), proc, stdout, stderr)


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone
        os.killpg(proc.pid, signum)


def finish(child: Child, guard_s: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Waits for ``child`` to exit; returns its exit status and output. A child still running after
    ``guard_s`` is taken to hang: every process of its group gets SIGABRT, on which faulthandler
    prints each thread's Python stack to stderr, and the test fails with the tail of that output."""
    try:
        returncode = child.proc.wait(timeout=guard_s)
    except subprocess.TimeoutExpired:
        signal_group(child.proc, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=60)  # writing the stacks
        signal_group(child.proc, signal.SIGKILL)
        child.proc.wait()
        stdout, stderr = child.output(close=True)
        pytest.fail(f"`python {shlex.join(child.args)}` still ran after {guard_s:g} s, so it was stopped with "
                    f"SIGABRT; where each process was (faulthandler, in stderr):\n--- stdout (tail) ---\n"
                    f"{stdout[-3000:]}\n--- stderr (tail) ---\n{stderr[-12000:]}", pytrace=False)
    except BaseException:  # Ctrl-C or a failure while waiting: leave no process behind
        signal_group(child.proc, signal.SIGKILL)
        child.proc.wait()
        raise
    signal_group(child.proc, signal.SIGKILL)  # a DDP rank its parent left behind
    stdout, stderr = child.output(close=True)
    return subprocess.CompletedProcess([sys.executable, *child.args], returncode, stdout, stderr)


def run_python(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python <args>`` run to completion under the hang guard (:func:`start_python`, :func:`finish`)."""
    return finish(start_python(args, env, cwd))


CLI_SCRIPT = """
import os, signal, sys
import nar_bench
{hook}
from nar_bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_cli(argv: list[str], hook: str = "") -> Child:
    """Starts ``nar-bench <argv>`` in a subprocess (one torch thread, as the tests' own process
    under ``single_thread``) after ``hook``: Python source run first, e.g. to patch a function so
    that the process SIGKILLs itself at a fixed point (no race with the clock)."""
    script = CLI_SCRIPT.format(hook=textwrap.dedent(hook).strip())
    return start_python(["-c", script, *argv], {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def run_cli(argv: list[str], hook: str = "") -> subprocess.CompletedProcess:
    """:func:`start_cli` run to completion under the hang guard."""
    return finish(start_cli(argv, hook))


@contextlib.contextmanager
def reduction_lengths(module: torch.nn.Module) -> Iterator[list[int]]:
    """Yields a list that collects, for every Conv / Linear call inside ``module`` while the block
    runs, the length K of its dot products (in_channels / groups x kernel area, or in_features):
    what fp32 rounding error scales with."""
    lengths: list[int] = []
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                                                             torch.nn.Linear))]
    hooks = [m.register_forward_hook(lambda m, args, out: lengths.append(m.weight[0].numel())) for m in layers]
    try:
        yield lengths
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="session")
def shapes_reference(tmp_path_factory, random_inception_weights) -> Path:
    """An ADM reference batch of 16 shapes images at 16 px, with statistics from the random Inception."""
    from nar_bench.run.reference import make_reference

    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    demo = str(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml")
    return make_reference(demo, out, ["data.image_size=16", "data.grid_size=4", "data.num_val=16"],
                          num_images=16, weights_path=random_inception_weights)
