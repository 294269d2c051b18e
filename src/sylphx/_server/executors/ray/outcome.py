"""What the hub tells the control plane of an attempt, and the Ray task options of a tier.

Shared by the hub (:mod:`.hub`), its slots (:mod:`.slots`) and the control plane's side
of the feed (:mod:`.attempts`).
"""

from __future__ import annotations

import time
from typing import Any

from ray.exceptions import NodeDiedError, RayError, RayTaskError, TaskCancelledError

from sylphx._core.machines import MACHINES
from sylphx._server.executors.base import LaunchRequest

__all__ = ["Change", "Launch", "Outcome", "failure", "task_options"]

# What became of an attempt, and when the hub saw it end (epoch): ("result", at, what
# run_shard returned) | ("cancelled", at) | ("error", at, the exception, last line) |
# ("refused", at, why Ray refused its slot: it never started) | ("lost", at, Ray's
# error, whether Ray said the node died, the node it last reported from, when it last
# shipped: epoch)
Outcome = tuple[Any, ...]
# One attempt's record, as the feed tells it: handle, the run id of its gang's placement
# group (None: no gang), when its process started (epoch), its outcome (None: running)
Change = tuple[str, str | None, float | None, Outcome | None]
# A launch handed to the hub: handle, request, its gang's bundle (None: no gang)
Launch = tuple[str, LaunchRequest, int | None]


def task_options(machine: str) -> dict[str, Any]:
    """A tier's task options: its CPU and memory, and no retries (sylphx owns them)."""
    tier = MACHINES[machine]
    return {"num_cpus": tier.vcpu, "memory": tier.memory_bytes, "max_retries": 0}


def failure(exc: BaseException, node: str | None, seen: float | None) -> Outcome:
    """How a task that raised ended: cancelled, failed on its own, or lost with its
    worker or node (told apart by the control plane, which knows the alive nodes)."""
    at = time.time()
    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, TaskCancelledError):
        return ("cancelled", at)
    if isinstance(exc, RayTaskError):
        return ("error", at, str(exc).strip().splitlines()[-1][:300])
    if isinstance(exc, RayError):
        text = f"{type(exc).__name__}: {exc}"[:4000]
        return ("lost", at, text, isinstance(exc, NodeDiedError), node, seen)
    return ("error", at, f"{type(exc).__name__}: {exc}"[:300])
