"""The one interface every schedule generator offers: a model backend and speed-ups in, Schedules out.

Each generator (uniform DeepCache rule, SmoothCache-style calibration, NSGA-II
search, DiP-GO-style gates) is configured with its own settings, then asked
for schedules at MACs speed-up targets on a backend
(:class:`~dato.evaluation.backends.SampleBackend`). Each returned Schedule
carries its provenance (``schedule.info``: generator, settings, model), so a
saved file says where it came from. The comparison study and the speed target
ask any generator the same way; the WebUI's tab sections drive the same
engines interactively.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from dato.core.schedule import Schedule
from dato.evaluation.backends import SampleBackend

__all__ = ["ScheduleGenerator", "closest_to_target", "speedup_of"]

Log = Callable[[str], None]


class ScheduleGenerator(Protocol):
    """``schedules(backend, targets)`` -> ``{target: Schedule}``, the schedule nearest each MACs speed-up."""

    name: str

    def schedules(self, backend: SampleBackend, targets: Sequence[float], log: Log = print) -> dict[float, Schedule]:
        ...


def speedup_of(backend: SampleBackend) -> Callable[[Schedule], float]:
    """Analytic MACs speed-up of a schedule over every step full, on ``backend``'s model, size and steps."""
    full = backend.macs(Schedule.full(backend.steps))
    return lambda schedule: full / backend.macs(schedule)


def closest_to_target(candidates: Sequence[Schedule], target: float,
                      speedup: Callable[[Schedule], float]) -> Schedule:
    """The candidate whose speed-up is nearest ``target`` on a log scale (ties: the first preview in order)."""
    return min(candidates, key=lambda s: (abs(math.log(speedup(s) / target)), s.preview()))
