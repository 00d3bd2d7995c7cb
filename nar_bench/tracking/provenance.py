"""Where a result came from: command, device, git commit, torch version and date, recorded in
every results file so a table or plot can be traced back to the run that made it.

torch is imported by the functions that ask it (devices, version), not here: the output guard runs
before a verb imports torch, so a refused folder costs no start-up time."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nar_bench.errors import NarBenchError

if TYPE_CHECKING:
    import torch


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device``: the GPU model for CUDA, the CPU otherwise."""
    import torch

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
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(command: str | None = None, device: torch.device | str | None = None, **extra: str) -> dict[str, str]:
    """{command, device, commit, torch, python, date, **extra}. ``command`` defaults to this
    process's argv; ``device`` (the one a result was measured on) to every accelerator it can use."""
    import torch

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


# --- never overwrite committed results -----------------------------------------------------------
PROVENANCE_FILE = "provenance.json"
SCRATCH_ROOT = Path("results") / "runs"  # git-ignored: where verbs write unless told otherwise


def _tracked_files(path: Path) -> list[str]:
    """Files under ``path`` (a folder or one file) that git tracks; [] outside a checkout."""
    anchor = path if path.is_dir() else path.parent
    while not anchor.exists():
        anchor = anchor.parent
    try:
        listed = subprocess.run(["git", "ls-files", "--", str(path.resolve())], cwd=anchor, capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return listed.split()


def recorded_commit(folder: Path) -> str | None:
    """The commit in ``folder``'s provenance.json (older files call it git_commit), if any."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unreadable"
    return str(info.get("commit") or info.get("git_commit") or "not recorded") if isinstance(info, dict) else None


def committed_results(path: str | Path) -> str | None:
    """Why writing to ``path`` (a results folder, or one output file) would replace results that are
    committed or came from another commit; None when it is safe."""
    path = Path(path)
    folder = path if path.is_dir() or not path.suffix else path.parent
    tracked = _tracked_files(path)
    if tracked:
        return f"'{path}' holds files committed to git ({tracked[0]}{', ...' if len(tracked) > 1 else ''})"
    recorded = recorded_commit(folder)
    if recorded is not None and recorded.removesuffix("-dirty") != git_commit().removesuffix("-dirty"):
        return f"'{folder}' holds results of commit {recorded[:12]} ({folder / PROVENANCE_FILE})"
    return None


def check_writable(path: str | Path, what: str = "--out") -> None:
    """NarBenchError unless files can be created where ``path`` (a folder or a file) will be written:
    a probe file is created and removed in its nearest existing folder, which is what tells (also for
    root, on a read-only file system). Nothing is left behind; ``what`` names the setting to change."""
    path = Path(path)
    anchor = path if path.is_dir() else path.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise NarBenchError(f"cannot write '{path}': '{anchor}' is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=anchor, prefix=".nar-bench-probe-"):
            pass
    except OSError as err:
        raise NarBenchError(f"cannot write '{path}': {err.strerror} in '{anchor}'; choose another {what} or make "
                            "it writable") from None


def guard_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` if a verb may write there, else NarBenchError (before any work is done): a folder
    (or file) holding files committed to git, or a provenance.json of another commit, is only
    written over with ``overwrite``; a place that cannot be written is refused. Call it first in
    every verb that writes results."""
    reason = None if overwrite else committed_results(path)
    if reason:
        raise NarBenchError(f"refusing to overwrite: {reason}; write elsewhere (--out {SCRATCH_ROOT}/...) "
                            "or pass --overwrite to replace them")
    check_writable(path)
    return Path(path)


def write_provenance(folder: str | Path, info: dict) -> Path:
    """``folder``/provenance.json (what :func:`guard_output` reads back)."""
    path = Path(folder) / PROVENANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
