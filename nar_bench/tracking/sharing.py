"""Several processes on one sweep: the same sweep started twice (two shells, two jobs) shares one
parent run (``parent_run(join=True)``) and splits its work instead of running every point twice.

The unit of work is a training group (the points that share one trained model). A process claims a
group with a tag on the parent run (``CLAIM_TAG`` + group hash = ``host pid start``), under the
store's file lock, before running it. A group that a live process holds is skipped and waited for
at the end (its rows are read back from its FINISHED child runs); the group of a process that died
is taken over, its runs marked KILLED and continued as in a resumed sweep. The lock is the SQLite
store's (``lifecycle.store_lock``); with a tracking server two processes could claim a group at the
same instant (then both run it, as before).
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig

from nar_bench.tracking.lifecycle import owner_alive, process_alive, store_lock, this_process
from nar_bench.tracking.mlflow import child_runs, client, tracking_uri
from nar_bench.tracking.names import CLAIM_TAG

POLL_S = 2.0  # how often a process waiting for another's groups looks at the store again


def group_tag(training_key: str) -> str:
    return CLAIM_TAG + hashlib.sha256(training_key.encode()).hexdigest()[:16]


class SharedSweep:
    """Claims on the training groups of the sweep whose parent run is ``parent_run_id``."""

    def __init__(self, tracking: DictConfig, parent_run_id: str):
        self.tracking, self.parent = tracking, parent_run_id
        self.client, self.uri = client(tracking), tracking_uri(tracking)
        self.me = this_process()

    def claim(self, training_key: str) -> str | None:
        """Claims the group; returns None if a live process other than this one holds it, else
        "new", "mine" (claimed before) or "taken over" (from a process that is gone)."""
        tag = group_tag(training_key)
        with store_lock(self.uri):
            holder = self.client.get_run(self.parent).data.tags.get(tag)
            if holder == self.me:
                return "mine"
            if holder and process_alive(holder):
                return None
            self.client.set_tag(self.parent, tag, self.me)
        return "taken over" if holder else "new"

    def next_claim(self, training_keys: list[str]) -> tuple[str | None, str | None]:
        """(the first group of ``training_keys`` this process may run, its ``claim``), or (None, None)
        when live processes hold them all."""
        for key in training_keys:
            claim = self.claim(key)
            if claim is not None:
                return key, claim
        return None, None

    def waiting_line(self, training_keys: list[str]) -> str:
        """What a process says while other processes run the groups it still needs."""
        tags = self.client.get_run(self.parent).data.tags
        pids = sorted({tags.get(group_tag(key), "? ?").split(" ")[1] for key in training_keys})
        return f"nar-bench: waiting for {len(training_keys)} training group(s) running in process(es) {', '.join(pids)}"

    def mark_dead_children_killed(self) -> None:
        """Ends the RUNNING child runs whose process is gone (a process that died while this one ran;
        those of processes dead before this one started were marked when it opened the store)."""
        for run in child_runs(self.tracking, self.parent):
            if run.info.status == "RUNNING" and not owner_alive(run.data.tags):
                self.client.set_terminated(run.info.run_id, status="KILLED")
