"""Runs the test command (default ``make test``, what .ci/run calls) while 2 x cores busy processes
compete for the CPU, as on a shared machine; prints pass / fail and the elapsed time, and exits with
the command's status. ``make test-under-load ARGS=tests/test_x.py`` selects tests as ``make test``
does (make hands ARGS on to the inner ``make test``).

    python scripts/test_under_load.py [--busy N] [-- command ...]

The busy processes end with this script whatever happens: they are killed on its way out
(including Ctrl-C and SIGTERM), and each one also exits by itself once its parent is gone (SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

# a pure-Python spin; it checks every few ms whether the script that started it is still there
BUSY = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    for _ in range(100_000): pass\n"


def start_busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(os.getpid())]) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--busy", type=int, default=2 * cores, help=f"busy processes (default 2 x {cores} cores)")
    parser.add_argument("command", nargs="*", default=["make", "test"], help="test command (default: make test)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # runs the finally below
    busy, start, status = start_busy(args.busy), time.monotonic(), None
    print(f"test-under-load: {args.busy} busy processes on {cores} cores; running {' '.join(args.command)}",
          flush=True)
    try:
        status = subprocess.run(args.command).returncode
    finally:
        stop(busy)
        elapsed = time.monotonic() - start
        outcome = "interrupted" if status is None else "PASSED" if status == 0 else f"FAILED (exit status {status})"
        print(f"test-under-load: {outcome} in {elapsed / 60:.1f} min ({elapsed:.0f} s) with {args.busy} busy "
              f"processes on {cores} cores", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
