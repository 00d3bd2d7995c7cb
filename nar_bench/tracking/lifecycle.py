"""Runs that end honestly: every run nar-bench opens records the host and process that own it, so a
later start can mark the runs of a dead process (OOM-killed, SIGKILL) as KILLED instead of leaving
them RUNNING forever (a run several processes share, a sweep's parent, also names its workers);
SIGINT / SIGTERM end the open runs as KILLED; the SQLite store is created once under a file lock,
so that two sweeps started at once on a fresh store do not race on its schema.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from nar_bench.errors import NarBenchError
from nar_bench.tracking.names import HOST_TAG, PID_TAG, PROCESS_START_TAG, WORKER_TAG

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"

_interrupted: list[int] = []  # the signal that interrupts this process, once one arrived
_swept: set[str] = set()  # stores whose stale runs this process has already marked


def _process_start(pid: int) -> str:
    """When process ``pid`` started (seconds since the epoch, as text), '' if it does not exist or has
    exited (a zombie its parent has not reaped yet: a SIGKILLed sweep must not look alive to the other
    sweep waiting for its points); with the pid it names one process (a pid is reused after its process ends)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return "" if process.status() == psutil.STATUS_ZOMBIE else f"{process.create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run: host, pid and the process's start time."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PROCESS_START_TAG: _process_start(os.getpid())}


def owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's owner tags still runs (True for another host's runs:
    they cannot be checked from here)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return True
    started = _process_start(int(tags[PID_TAG]))
    return bool(started) and started == tags.get(PROCESS_START_TAG, started)


def this_process() -> str:
    """This process as one string, ``host pid start`` (what a claim or a worker tag holds)."""
    tags = owner_tags()
    return f"{tags[HOST_TAG]} {tags[PID_TAG]} {tags[PROCESS_START_TAG]}"


def process_alive(process: str) -> bool:
    """Whether the process a :func:`this_process` string names still runs (True on another host)."""
    host, pid, start = (process.split(" ") + ["", "", ""])[:3]
    return owner_alive({HOST_TAG: host, PID_TAG: pid, PROCESS_START_TAG: start})


def worker_tag() -> str:
    """The tag by which this process says it works on a run that several processes share (a sweep's
    parent run); its value is :func:`this_process`."""
    return f"{WORKER_TAG}{socket.gethostname()}.{os.getpid()}"


def live_workers(tags: dict[str, str]) -> list[str]:
    """The processes other than this one that say (worker tags) they work on a run and still run."""
    me = this_process()
    return [v for k, v in tags.items() if k.startswith(WORKER_TAG) and v != me and process_alive(v)]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite store URI, also of SQLite's URI form ``sqlite:///file:<path>?mode=ro``
    (a store opened read-only); None for a tracking server."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE):]
    return Path(path.removeprefix("file:").split("?", 1)[0]) if path.startswith("file:") else Path(path)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialises store creation (schema migration, first experiment) across processes; a no-op for
    tracking servers, which serialise themselves."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NarBenchError(f"cannot create the MLflow store '{path}': {err.strerror} ('{err.filename}'); set "
                            "tracking.tracking_uri to a writable place") from None
    # no time limit: the OS drops the lock when its holder dies, so waiting ends unless the holder
    # hangs, while a limit would fail a second process on a slow or busy machine (creating a store
    # runs MLflow's ~70 schema migrations)
    with FileLock(str(path) + ".lock"):
        yield


def mark_dead_runs_killed(client, uri: str) -> list[str]:
    """Marks every RUNNING run of this host whose owning process is gone as KILLED, once per store
    and process; returns their ids. Runs of other hosts are left alone (their processes cannot be
    seen from here)."""
    if uri in _swept:
        return []
    _swept.add(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    host = socket.gethostname()
    stale = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
                               max_results=5000)
    killed = []
    for run in stale:
        if not owner_alive(run.data.tags) and not live_workers(run.data.tags):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    if killed:
        log.warning("marked %d run(s) of dead processes as KILLED: %s", len(killed), ", ".join(killed))
    return killed


def interrupted() -> int | None:
    """The signal (SIGINT / SIGTERM) that interrupted this process, None if none did."""
    return _interrupted[0] if _interrupted else None


def check_interrupted() -> None:
    """Raises KeyboardInterrupt if a signal arrived whose KeyboardInterrupt was lost: Python drops an
    exception raised inside a finalizer (``__del__``, a weakref callback, garbage collection) with
    an "Exception ignored" line, so a Ctrl-C landing there would let the work go on. Long loops (a
    sweep's points) call this between their steps."""
    if _interrupted:
        raise KeyboardInterrupt(signal.Signals(_interrupted[0]).name)


def run_end_status(error: BaseException | None) -> str:
    """MLflow status of a run that ended with ``error``: KILLED when a signal or Ctrl-C ended it."""
    if error is None:
        return "FINISHED"
    return "KILLED" if interrupted() or isinstance(error, KeyboardInterrupt) else "FAILED"


# Code a KeyboardInterrupt must not land in: raised inside a store write, it can leave that write's
# connection holding SQLite's write lock, so that ending the runs as KILLED then fails on "database is
# locked" (seen on a busy machine: the signal reached the main thread while it logged progress).
STORE_WRITERS = ("sqlalchemy", "sqlite3", "mlflow.store")


def _is_store(frame) -> bool:
    return frame.f_globals.get("__name__", "").startswith(STORE_WRITERS)


def _in_store_write(frame) -> bool:
    while frame is not None:
        if _is_store(frame):
            return True
        frame = frame.f_back
    return False


def _interrupt_after_store_write(signum: int) -> None:
    """Raises the KeyboardInterrupt as the outermost store frame on this thread's stack returns (an
    exception raised by a profile function comes out of the frame it watches): the interrupt lands
    right after the write, at the same point of the work on any machine."""

    def on_return(frame, event, arg) -> None:
        if event == "return" and _is_store(frame) and not _in_store_write(frame.f_back):
            sys.setprofile(None)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    sys.setprofile(on_return)


def _raise_interrupt(signum: int, frame) -> None:
    if not _interrupted:
        _interrupted.append(signum)
    if _in_store_write(frame):
        _interrupt_after_store_write(signum)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


class _NoLightningInterruptLine(logging.Filter):
    """Drops Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown" line: the
    interrupted verb says so itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in str(record.msg)


LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def _quiet_lost_interrupts(previous):
    """An unraisable-exception hook that prints nothing for a KeyboardInterrupt lost in a finalizer
    (the signal is recorded: ``check_interrupted`` raises it again) and defers to ``previous`` otherwise."""

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted):
            previous(unraisable)

    return hook


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, which every open run turns into KILLED on its way
    out (Lightning also catches it and exits); the process then prints one line and exits with 128 +
    the signal (130 for Ctrl-C, 143 for SIGTERM), also when the KeyboardInterrupt itself was lost
    (``check_interrupted``). Restores the previous handlers (Lightning ignores SIGINT after its
    first one)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    quiet, unraisable_hook = _NoLightningInterruptLine(), sys.unraisablehook
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    sys.unraisablehook = _quiet_lost_interrupts(unraisable_hook)
    _interrupted.clear()
    try:
        yield
        check_interrupted()
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and not interrupted():
            raise
        signum = interrupted() or signal.SIGINT
        print(f"nar-bench: interrupted by {signal.Signals(signum).name}; open runs marked KILLED", flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for name in LIGHTNING_RANK_ZERO_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        sys.unraisablehook = unraisable_hook
        _interrupted.clear()
