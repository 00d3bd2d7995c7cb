"""Where a result came from: command, device, git commit, torch version and date, recorded in
every results file so a table or plot can be traced back to the run that made it."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device``: the GPU model for CUDA, the CPU otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def git_commit() -> str:
    """The commit the running code is: ``NAR_BENCH_COMMIT`` when set (a tree copied to a GPU machine
    may carry a stale or no .git), else HEAD of the checkout nar-bench runs from, suffixed
    ``-dirty`` when tracked files have uncommitted changes; 'unknown' outside a checkout."""
    if os.environ.get("NAR_BENCH_COMMIT"):
        return os.environ["NAR_BENCH_COMMIT"]
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def device_description() -> str:
    """The accelerators this process can use, e.g. '1x NVIDIA H100 80GB HBM3', or the CPU."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(command: str | None = None, device: torch.device | str | None = None, **extra: str) -> dict[str, str]:
    """{command, device, commit, torch, python, date, **extra}. ``command`` defaults to this
    process's argv; ``device`` (the one a result was measured on) to every accelerator it can use."""
    return {
        "command": command or " ".join(sys.argv),
        "device": device_description() if device is None else device_name(device),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def provenance_line(prov: dict[str, str]) -> str:
    """One line for plot footers and Markdown headers."""
    return " | ".join(f"{key}: {value}" for key, value in prov.items())
