"""Nodes a job loses while it runs on a cluster: one line each, Ray's own account only with -v.

When a node goes (a machine preempted, a raylet killed), Ray retries the tasks that ran there on
the other nodes and restarts actors; the job goes on. What Ray prints meanwhile (the death notices
of the node and its workers, the raylet's state dump) is about 40 lines in the middle of the
progress display. In quiet mode those lines are held back (`quieting.is_node_loss_noise`) and `NodeWatch`
says, per lost node:

    lost node 10.0.3.7 (node 1a2b3c4d): 5 tasks there failed and are retried on the other nodes

With -v every line of Ray's is printed as it comes, and the watch's line as well.
"""
from __future__ import annotations

import logging
import threading
import time

from jobs.output import say

log = logging.getLogger("unet")

SETTLE_SECONDS = 5.0  # after a loss is seen, the time allowed for Ray to record the failed tasks


class NodeWatch:
    """Polls the cluster's node table every `every` seconds in a daemon thread for the life of the
    process (a job attached to a cluster); says one line per node that was alive and is not."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.alive: dict[str, dict] = {}
        self.lost: dict[str, str] = {}  # node id -> the line said
        self._thread = threading.Thread(target=self._run, daemon=True, name="unet-node-watch")
        self._lock = threading.Lock()

    def start(self) -> NodeWatch:
        global _CURRENT
        self._poll()
        self._thread.start()
        _CURRENT = self
        return self

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                self._poll()
            except Exception:  # Ray shut down, or the head is gone: the job says so itself
                log.debug("node watch stopped", exc_info=True)
                return

    def _poll(self) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised")
        with self._lock:
            self._poll_locked(ray)

    def _poll_locked(self, ray) -> None:
        for node in ray.nodes():
            node_id = node["NodeID"]
            if node.get("Alive"):
                self.alive[node_id] = node
            elif node_id in self.alive and node_id not in self.lost:
                self.lost[node_id] = ""
                time.sleep(SETTLE_SECONDS)
                self.lost[node_id] = line = lost_node_line(self.alive[node_id], failed_tasks(node_id))
                say(line)

    @property
    def lines(self) -> list[str]:
        return [v for v in self.lost.values() if v]


def failed_tasks(node_id: str) -> int | None:
    """Task attempts that failed on the node (Ray retries tasks and restarts actors elsewhere), from
    Ray's state API; None where it does not answer."""
    try:
        import ray
        from ray.util.state import list_tasks

        # the job's own cluster by its address: without one, the state API refuses to choose when
        # another Ray instance runs on this machine ("Found multiple active Ray instances")
        tasks = list_tasks(address=ray.get_runtime_context().gcs_address,
                           filters=[("node_id", "=", node_id), ("state", "=", "FAILED")], limit=10_000,
                           raise_on_missing_output=False, timeout=10)
        return len(tasks)
    except Exception:  # the count is a courtesy; the line is said without it
        log.debug("could not count the failed tasks of node %s", node_id, exc_info=True)
        return None


def lost_node_line(node: dict, failed: int | None) -> str:
    where = f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:8]})"
    if failed is None:
        return f"lost node {where}: its tasks are retried on the other nodes"
    if failed == 0:
        return f"lost node {where}: no task of this job failed there; the job goes on without it"
    return f"lost node {where}: {failed} task{'s' if failed != 1 else ''} there failed and are retried on the other nodes"


_CURRENT: NodeWatch | None = None


def check_before_the_summary() -> None:
    """One last look at the node table before a job prints its summary: a node lost in the last
    seconds of a run is still said."""
    if _CURRENT is None:
        return
    try:
        _CURRENT._poll()
    except Exception:  # the summary goes on without it
        log.debug("the last node check failed", exc_info=True)
