"""Speed you can count on: the expected MACs speed-up of a schedule, and "make it N x faster".

One clock model prices every schedule: a :class:`~dato.core.clock.PassClock` says how many
steps the pass's step clock reports (the schedule is resampled to that many)
and how many UNet calls fall on each clock step. The WebUI's denoiser counts
model calls, so a second-order sampler such as Heun reports ``2 n`` clock steps
for ``n`` sampler steps and calls the UNet on the first ``2 n - 1`` of them (the
last sampler step has one evaluation); the headless samplers count sampler steps,
so both calls of a step share its action. ``expected_speedup`` and
``target_schedule`` take the clock, so the accordion's preview, the run, the
API check and ``python -m dato target`` price one model.

``target_schedule`` turns a speed target into the schedule of a fixed rule family
that meets it with the best expected quality; the family and its quality order
are stated in ``docs/results.md`` (measured on the trained fixture): more full
steps first, then no whole-output reuse, then a deeper cached branch, then less
token reduction, then the smallest overshoot. Every candidate is a rule
(``uniform`` or ``cycle``), so the chosen schedule regenerates exactly at any step count.
"""

from __future__ import annotations

import math
from typing import Any

from dato.core.clock import PassClock
from dato.core.macs import UNetCost
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError, short_repr

__all__ = ["TARGET_LIMIT", "PassClock", "TargetError", "check_target", "expected_speedup", "target_family",
           "target_schedule", "max_target"]

TARGET_LIMIT = 100.0  # no step count reaches this; a larger value is refused as a typo before any pricing
_DEPTHS = (0, 1, 2, 3)
_RATIOS = (0.0, 0.3, 0.5)


class TargetError(ScheduleError):
    """A speed target is not a number >= 1, or no schedule of the family reaches it; the message says why."""


def check_target(value: Any, field: str = "target") -> float:
    """``value`` as a speed-up factor >= 1 (1 = every step full), else a :class:`TargetError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetError(f"{field} = {short_repr(value)}: expected a speed-up factor like 2 or 4.5 (>= 1)")
    value = float(value)
    if not math.isfinite(value) or value < 1.0 or value > TARGET_LIMIT:
        raise TargetError(f"{field} = {short_repr(value)}: expected a speed-up factor 1 <= N <= {TARGET_LIMIT:g} "
                          "(1 = every step full)")
    return value


class _Pricer:
    """Per-call MACs of each (action, ratio), priced once; a schedule is then a sum of lookups."""

    def __init__(self, cost: UNetCost, height: int, width: int, method: str, max_downsample: int) -> None:
        self.cost, self.height, self.width = cost, height, width
        self.method, self.max_downsample = method, max_downsample
        self._memo: dict[tuple[int, float], float] = {}

    def call(self, action: int, ratio: float) -> float:
        key = (action, ratio)
        if key not in self._memo:
            self._memo[key] = self.cost.call_macs(self.height, self.width, action, ratio, self.method,
                                                  self.max_downsample)
        return self._memo[key]

    def speedup(self, schedule: Schedule, clock: PassClock) -> float:
        laid = schedule.resample(clock.total)
        full = self.call(FULL, 0.0)
        actions = [*zip(laid.cache, laid.ratio, strict=True), *[(FULL, 0.0)] * (len(clock.calls) - clock.total)]
        spent = sum(n * self.call(a, r) for n, (a, r) in zip(clock.calls, actions, strict=True) if n)
        return sum(clock.calls) * full / spent


def expected_speedup(cost: UNetCost, schedule: Schedule, height: int, width: int, *, max_downsample: int = 1,
                     clock: PassClock | None = None) -> float:
    """Analytic MACs speed-up of ``schedule`` over every call full (no token reduction), per image, with the
    schedule laid over ``clock`` (default: one call per step of the schedule)."""
    clock = clock or PassClock.counting_steps(schedule.steps)
    return _Pricer(cost, height, width, schedule.method, max_downsample).speedup(schedule, clock)


def target_family(steps: int, method: str = "prune") -> list[Schedule]:
    """Every candidate at ``steps``: uniform (interval 1..steps, depth 0..3) and 0/reuse-alternating cycles,
    each at token ratios 0, 0.3, 0.5 (0 only for method 'none')."""
    ratios = (0.0,) if method == "none" else _RATIOS
    family = []
    for ratio in ratios:
        for depth in _DEPTHS:
            for interval in range(1 if depth == 0 else 2, steps + 1):
                family.append(Schedule.uniform(steps, interval, depth, ratio, method, name="target"))
        for length in range(3, max(3, steps) + 1):
            cycle = ["full"] + [0 if i % 2 else "reuse" for i in range(1, length)]
            family.append(Schedule.cycle(steps, cycle, ratio, method, name="target"))
    return family


def _quality_key(schedule: Schedule) -> tuple:
    """Larger is better expected quality (the order stated in the module docstring)."""
    reuse = sum(a == REUSE for a in schedule.cache)
    depth = min((a for a in schedule.cache if a >= 0), default=99)
    return (schedule.full_steps, -reuse, depth, -schedule.ratio[0])


def _candidates(cost: UNetCost, clock: PassClock, height: int, width: int, method: str,
                max_downsample: int) -> list[tuple[Schedule, float]]:
    pricer = _Pricer(cost, height, width, method, max_downsample)
    return [(s, pricer.speedup(s, clock)) for s in target_family(clock.total, method)]


def max_target(cost: UNetCost, clock: PassClock, height: int, width: int, *, method: str = "prune",
               max_downsample: int = 1) -> float:
    """The largest speed-up the family reaches on this clock, size and token levels."""
    return max(sp for _, sp in _candidates(cost, clock, height, width, method, max_downsample))


def target_schedule(cost: UNetCost, target: Any, clock: PassClock, height: int, width: int, *,
                    method: str = "prune", max_downsample: int = 1, field: str = "target",
                    steps_label: int | None = None) -> Schedule:
    """The schedule (of ``clock.total`` steps) with the best expected quality whose speed-up is at least ``target``.

    Raises :class:`TargetError` naming ``field`` for a bad value, or saying the nearest reachable speed-up when
    none of the family reaches ``target`` (at ``steps_label`` sampler steps; default: the clock's total).
    """
    target = check_target(target, field)
    candidates = _candidates(cost, clock, height, width, method, max_downsample)
    meeting = [(s, sp) for s, sp in candidates if sp >= target - 1e-9]
    steps = clock.total if steps_label is None else steps_label
    if not meeting:
        best = max(sp for _, sp in candidates)
        raise TargetError(f"{field} = {target:g}: not reachable at {steps} steps; the nearest reachable is "
                          f"{math.floor(best * 100) / 100:.2f}x (more steps allow more)")
    chosen, speed = max(meeting, key=lambda c: (_quality_key(c[0]), -c[1]))
    rule = dict(chosen.rule) if chosen.rule else None
    name = f"target-{target:g}x"
    return Schedule(name, chosen.cache, chosen.ratio, method, description=f"speed target {target:g}x at {steps} "
                    f"steps: expected {speed:.2f}x", rule=rule,
                    provenance={"generator": "target", "target_speedup": target, "expected_speedup": round(speed, 4),
                                "clock_steps": clock.total})
