"""Branch levels: what a (step, level) gate costs, and logits turned into a Schedule at an exact MACs budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dato.core.macs import UNetCost
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError
from dato.generators.uniform import nearest_uniform


# --------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class LevelCosts:
    """MACs of one UNet call split by nested level (per image): ``base`` runs at every step, even reuse."""

    base: float
    levels: tuple[float, ...]

    @classmethod
    def from_cost(cls, cost: UNetCost, height: int, width: int) -> LevelCosts:
        layout = cost.layout
        n = layout.max_depth + 1
        marks = [cost.call_macs(height, width, REUSE)]
        marks += [cost.call_macs(height, width, d) for d in range(n)]
        marks.append(cost.call_macs(height, width, FULL))
        return cls(marks[0], tuple(b - a for a, b in zip(marks, marks[1:], strict=False)))

    @property
    def full(self) -> float:
        return self.base + sum(self.levels)

    def step_macs(self, extent: int) -> float:
        return self.base + sum(self.levels[:extent])

    def schedule_macs(self, extents: Sequence[int]) -> float:
        return sum(self.step_macs(e) for e in extents)


def action_from_extent(extent: int, num_levels: int) -> int:
    """Open levels ``0..extent-1`` -> Schedule action (``REUSE``, depth, ``FULL``)."""
    if extent <= 0:
        return REUSE
    if extent >= num_levels:
        return FULL
    return extent - 1


def extent_from_action(action: int, num_levels: int) -> int:
    if action == FULL:
        return num_levels
    if action == REUSE:
        return 0
    return action + 1


def uniform_start(costs: LevelCosts, steps: int, target_speedup: float) -> Schedule:
    """DeepCache's uniform schedule (a full step every ``n``, depth 0 between) closest to the target speed-up."""
    n_levels = len(costs.levels)

    def speedup(schedule: Schedule) -> float:
        return costs.full * steps / costs.schedule_macs([extent_from_action(a, n_levels) for a in schedule.cache])

    return nearest_uniform(speedup, steps, target_speedup)


# --------------------------------------------------------------------------- post-processing
def schedule_from_gates(logits: Sequence[Sequence[float]], costs: LevelCosts, target_speedup: float, *,
                        name: str | None = None, info: dict[str, Any] | None = None) -> Schedule:
    """The Schedule with MACs at most ``full / target_speedup``, within one level's cost of it.

    Start from the learned hard gates (open where ``logit > 0``, nested, step 0
    full). Over budget: close, least needed first (lowest logit), each step's
    deepest open level. Then fill the slack: open, most needed first, each
    step's shallowest closed level whose cost still fits. What is left of the
    budget is smaller than any level that could still be opened.
    """
    steps = len(logits)
    num_levels = len(costs.levels)
    if steps < 2 or any(len(row) != num_levels for row in logits):
        raise ScheduleError(f"gate logits must be [steps >= 2][{num_levels}], got {steps} rows")
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) \
            or not math.isfinite(target_speedup) or target_speedup < 1:
        raise ScheduleError(f"target_speedup = {target_speedup!r}, expected a number >= 1")
    budget = costs.full * steps / target_speedup * (1 + 1e-12)
    floor = costs.full + (steps - 1) * costs.base
    if floor > budget:
        reachable = math.floor(costs.full * steps / floor * 100) / 100  # rounded down: never promise more
        raise ScheduleError(f"target_speedup = {target_speedup:g} is out of reach: at most {reachable:.2f}x "
                            "with step 0 full and every other step reused")
    extents = [num_levels] + [_leading_open(row) for row in logits[1:]]
    total = costs.schedule_macs(extents)
    while total > budget:
        t = min((t for t in range(1, steps) if extents[t] > 0), key=lambda t: (logits[t][extents[t] - 1], t))
        extents[t] -= 1
        total -= costs.levels[extents[t]]
    while True:
        fits = [t for t in range(1, steps) if extents[t] < num_levels and total + costs.levels[extents[t]] <= budget]
        if not fits:
            break
        t = max(fits, key=lambda t: (logits[t][extents[t]], -t))
        total += costs.levels[extents[t]]
        extents[t] += 1
    actions = tuple(action_from_extent(e, num_levels) for e in extents)
    label = name or f"gates-x{target_speedup:g}"
    schedule = Schedule(name=label, cache=actions, ratio=(0.0,) * steps, method="none",
                        description=f"DiP-GO-style gradient gates at {target_speedup:g}x fewer UNet MACs")
    provenance = {**(info or {}), "generator": "gates", "target_speedup": float(target_speedup),
                  "macs_speedup": costs.full * steps / total}
    return schedule.with_provenance(**provenance)


def _leading_open(row: Sequence[float]) -> int:
    extent = 0
    while extent < len(row) and row[extent] > 0:
        extent += 1
    return extent
