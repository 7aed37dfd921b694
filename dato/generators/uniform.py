"""DeepCache's uniform rule as a generator: a full step every ``n``, depth 0 between, ``n`` nearest the target."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dato.core.schedule import Schedule
from dato.evaluation.backends import SampleBackend
from dato.generators.base import Log, speedup_of

__all__ = ["UniformGenerator", "nearest_uniform"]


def nearest_uniform(speedup: Callable[[Schedule], float], steps: int, target: float, depth: int = 0) -> Schedule:
    """The uniform schedule (full every ``n``, ``depth`` between) whose speed-up is nearest ``target`` on a log
    scale; of equally near ones the more frequent refresh."""
    best, best_gap = None, math.inf
    for interval in range(2, steps + 1):
        candidate = Schedule.uniform(steps, interval, depth)
        gap = abs(math.log(speedup(candidate) / target))
        if gap < best_gap - 1e-12:
            best, best_gap = candidate, gap
    return best


class UniformGenerator:
    """Every interval ``2..steps`` at ``depth``; for each target the one whose MACs speed-up is nearest (log scale).

    Args:
        depth: the branch depth of the cached steps (0 = shallowest, fastest).
    """

    name = "uniform"

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth

    def schedules(self, backend: SampleBackend, targets: Sequence[float], log: Log = print) -> dict[float, Schedule]:
        speedup = speedup_of(backend)
        return {t: nearest_uniform(speedup, backend.steps, t, self.depth).with_provenance(
            generator=self.name, target_speedup=t) for t in targets}
