"""What every Ray driver of the project does the same way: join (or start) Ray, and size a set of
actors, one model copy each: one per GPU when the work runs on cuda, else one per
`cpus_per_worker` cores (or `workers` when given), never more than there are items."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def ray_session(address: str | None = None):
    """Ray for the duration of the block: a local instance (or the cluster at `address`) that is
    shut down afterwards, or the one the caller already started (left running)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}})
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def actor_class(cls, n_items: int, workers: int | None, gpu: bool, cpus_per_worker: float, **options):
    """(the Ray actor class of cls with its resources, how many actors to start)."""
    import ray

    resources = ray.cluster_resources()
    capacity = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1) // cpus_per_worker)
    n = max(1, min(workers or capacity, n_items))
    return ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else cpus_per_worker, **options)(cls), n
