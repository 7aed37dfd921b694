"""The speed target's rule family as a generator, so ``compare`` scores it beside the others.

"Make it N x faster" (:func:`dato.core.speed.target_schedule`) picks, from a fixed
family of rules, the one with the best expected quality that meets N at the run's
step count; here it is priced on the backend's own UNet and size, as the WebUI
prices it on the loaded model. No sampling is needed to produce it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dato.core.clock import PassClock
from dato.core.schedule import Schedule
from dato.core.speed import max_target, target_schedule
from dato.evaluation.backends import StandaloneBackend
from dato.generators.base import Log

__all__ = ["SpeedTargetGenerator"]


class SpeedTargetGenerator:
    """For each target, the rule :func:`~dato.core.speed.target_schedule` chooses; where the step count cannot
    reach a target, the fastest rule of the family (and the log says so).

    Args:
        method: the token method the rules use (``prune``, as the accordion's default; ``none``: caching only).
    """

    name = "speed-target"

    def __init__(self, method: str = "prune") -> None:
        self.method = method

    def schedules(self, backend: StandaloneBackend, targets: Sequence[float],
                  log: Log = print) -> dict[float, Schedule]:
        cost = backend.unet_cost()
        height, width = backend.latent_shape[-2:]
        levels = backend.max_downsample
        clock = PassClock.counting_steps(backend.steps, backend.sampler == "heun")  # the headless samplers' clock
        top = max_target(cost, clock, height, width, method=self.method, max_downsample=levels)
        out = {}
        for target in targets:
            reachable = min(target, math.floor(top * 100) / 100)
            if reachable < target:
                log(f"speed-target: {target:g}x is not reachable at {backend.steps} steps; using the fastest "
                    f"rule ({reachable:g}x)")
            schedule = target_schedule(cost, reachable, clock, height, width, method=self.method,
                                       max_downsample=levels)
            out[target] = schedule.with_provenance(generator=self.name, target_speedup=target)
        return out
