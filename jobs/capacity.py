"""Whether the Ray instance a job runs on can give it the CPUs it needs, said before it waits.

    require_cpus(need)   after init_ray: returns when the cluster has need.cpus CPUs, or has an
                         autoscaler that may add them (said once); raises ConfigError otherwise

Ray schedules a task or an actor that no node can hold by waiting for one that can: on a cluster
without an autoscaler that is forever, and nothing is printed (a `unet segment` attached to a
1-CPU head gave its only CPU to the predictor actor, and its header-scan tasks waited for a CPU
that never came). A cluster with an autoscaler is different: a KubeRay segment cluster starts with
a 0-CPU head and adds nodes on demand (cluster/rayjob-segment.yaml), so waiting is right there.

Private API: whether an autoscaler runs is read from the GCS's internal key-value store, as
`ray status` and the dashboard read it (`ray.experimental.internal_kv`, autoscaler v1's
`__autoscaling_status` report with its node types, autoscaler v2's enabled flag). tests/test_capacity.py checks these
names against the pinned Ray version.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from jobs.output import say
from unet_core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuNeed:
    """The CPUs a job's actors and tasks hold at once at the least, and what holds them (said in the
    error: "1 for each predictor actor (--min-predictors 1) and 1 for reading and decoding")."""

    cpus: float
    why: str


def autoscaling() -> bool:
    """Whether an autoscaler that can add nodes serves the attached cluster: v2 enabled, or a v1
    monitor reporting node types of a cluster config. A `ray start` head (and a job's own local
    instance) runs the v1 monitor too, with Ray's read-only provider, which only reports the nodes
    there are, each under an anonymous type "node_<node id>": that is no autoscaler."""
    import ray._private.ray_constants as ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        return True
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        report = json.loads(status).get("autoscaler_report") if status else None
    except ValueError:
        report = None
    types = (report or {}).get("node_type_mapping") or {}
    return any(kind != format_readonly_node_type(node) for node, kind in types.items())


def require_cpus(need: CpuNeed) -> None:
    """Before the job starts anything that holds CPUs: a cluster that has fewer than need.cpus CPUs
    and no autoscaler can never run it, so say so now (ConfigError: exit 2) instead of waiting."""
    import ray

    have = float(ray.cluster_resources().get("CPU", 0))
    if have >= need.cpus:
        return
    if autoscaling():
        say(f"waiting for the cluster's autoscaler: this job needs {need.cpus:g} CPUs ({need.why}); "
            f"the cluster has {have:g} now")
        return
    raise ConfigError(
        f"the Ray cluster has {have:g} CPU{'s' if have != 1 else ''} and no autoscaler; this job needs at least "
        f"{need.cpus:g} at once ({need.why}), so it would wait forever. Give the cluster more CPUs "
        "(`ray start --num-cpus N` on its nodes, or another node), or ask for fewer")
