"""SmoothCache-style calibration: one unaccelerated run tells where features barely change.

Recording: while the model samples normally, forward hooks read every
cacheable unit the Schedule can express (the feature each branch depth ``d``
reuses, i.e. the output of :meth:`UNetLayout.cached_feature_block`, and the
whole UNet output that ``reuse`` returns) and, for every step ``s`` and
lookahead ``j = 1..k``, accumulate the relative L1 change

    e_u(s, j) = |F_u(s + j) - F_u(s)|_1 / |F_u(s)|_1

averaged over batch items, calls of a step (cond/uncond, second-order
samplers) and runs (prompts). Only the last ``k`` steps' features are kept, so
memory stays at ``k + 1`` steps whatever the step count.

Scheduling (:func:`schedule_from_calibration`): one threshold ``alpha``. Walking
the steps, each step takes the cheapest action whose feature, reused from the
step that last computed it, stays within ``alpha`` of the fresh one
(``e < alpha``, at most ``k`` steps back): whole-output ``reuse`` first, then
depth 0, 1, ... ; otherwise the step is full. The first and the last step are
always full. ``alpha = 0`` gives an all-full schedule; a large ``alpha`` the
coarsest the lookahead allows (one computed step every ``k + 1``).

Per-block attention/feed-forward reuse (SmoothCache's finer units) is not
recorded: the Schedule reuses whole branches, and a unit it cannot express
would only be noise in the curves.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dato.core.layout import UNetLayout, block_modules, find_unet
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError

__all__ = [
    "Calibration",
    "CalibrationRecorder",
    "calibrate",
    "schedule_from_calibration",
    "alpha_for_speedup",
    "alpha_range",
    "relative_l1",
    "OUTPUT_UNIT",
]

OUTPUT_UNIT = "output"
StepCallback = Callable[[int, int], None]


def relative_l1(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per batch item ``|other - reference|_1 / |reference|_1`` (float64, shape ``[batch]``)."""
    ref = reference.detach().flatten(1).double()
    diff = (other.detach().flatten(1).double() - ref).abs().sum(1)
    return diff / ref.abs().sum(1).clamp_min(1e-12)


@dataclass
class Calibration:
    """Error curves of one calibration: ``errors[unit][s][j-1]`` for lookahead ``j`` (NaN past the end).

    Units are ``"output"`` (whole-output reuse) and ``"depth<d>"`` for each branch depth.
    """

    steps: int
    lookahead: int
    max_depth: int
    errors: dict[str, list[list[float]]]
    info: dict[str, Any] = field(default_factory=dict)

    def error(self, unit: str, step: int, ahead: int) -> float:
        """Mean relative L1 between ``unit`` at ``step`` and at ``step + ahead``."""
        if not 1 <= ahead <= self.lookahead:
            return math.inf
        return self.errors[unit][step][ahead - 1]

    def curve(self, unit: str, ahead: int = 1) -> list[float]:
        """``e(s, ahead)`` for every step ``s`` that has a step ``ahead`` later (for plots)."""
        return [row[ahead - 1] for row in self.errors[unit][: self.steps - ahead]]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lookahead": self.lookahead, "max_depth": self.max_depth,
                "errors": {u: [[None if math.isnan(v) else v for v in row] for row in rows]
                           for u, rows in self.errors.items()},
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        errors = {u: [[math.nan if v is None else float(v) for v in row] for row in rows]
                  for u, rows in data["errors"].items()}
        return cls(int(data["steps"]), int(data["lookahead"]), int(data["max_depth"]), errors,
                   dict(data.get("info", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"


def depth_unit(depth: int) -> str:
    return f"depth{depth}"


class CalibrationRecorder:
    """Forward hooks on one UNet that accumulate the error curves while a caller samples.

    The caller says which step the next UNet calls belong to (:meth:`set_step`,
    e.g. from a sampler's step callback or the WebUI's ``on_cfg_denoiser``);
    calls within a step are told apart by their order, so split cond/uncond
    and Heun's second call each compare with their own kind. A new run (step 0
    again) starts a new history; the sums carry across runs.

    The hooks exist only inside ``with recorder:``; leaving and entering again
    resumes recording with the sums kept, so a host can keep other people's
    generations (the WebUI's queue) out of the curves.
    """

    def __init__(self, model: torch.nn.Module, steps: int, lookahead: int = 3) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps = {steps!r}: calibration needs an integer >= 2")
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or not 1 <= lookahead < steps:
            raise ValueError(f"lookahead = {lookahead!r}: expected an integer 1..{steps - 1}")
        self.unet = find_unet(model)
        self.layout = UNetLayout.from_unet(self.unet)
        self.steps, self.lookahead = steps, lookahead
        self.units = [depth_unit(d) for d in range(self.layout.max_depth + 1)] + [OUTPUT_UNIT]
        self._role_units: dict[str, list[str]] = {}
        for d in range(self.layout.max_depth + 1):
            self._role_units.setdefault(self.layout.cached_feature_block(d), []).append(depth_unit(d))
        shape = (steps, lookahead)
        self._sum = {u: torch.zeros(shape, dtype=torch.float64) for u in self.units}
        self._count = {u: torch.zeros(shape, dtype=torch.float64) for u in self.units}
        self._history: deque[tuple[int, dict[tuple[int, str], torch.Tensor]]] = deque(maxlen=lookahead)
        self._current: dict[tuple[int, str], torch.Tensor] = {}
        self._step: int | None = None
        self._ordinal = -1
        self._hooks: list[Any] = []
        self.runs = 0

    def __enter__(self) -> CalibrationRecorder:
        blocks = block_modules(self.unet)
        for role in self._role_units:
            self._hooks.append(blocks[role].register_forward_hook(self._block_hook(role)))
        self._hooks.append(self.unet.register_forward_pre_hook(self._before_call))
        self._hooks.append(self.unet.register_forward_hook(self._after_call))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_step()
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def set_step(self, step: int, total: int | None = None) -> None:
        """The next UNet calls belong to ``step`` (0-based); ``total`` must match the recorder's steps."""
        if total is not None and total != self.steps:
            raise ValueError(f"the run has {total} steps but the recorder was made for {self.steps}")
        if step == self._step:
            return
        self._close_step()
        if self._step is None or step < self._step:
            self._history.clear()
            self.runs += 1
        self._step, self._ordinal = step, -1

    def _close_step(self) -> None:
        if self._step is None or not self._current:
            return
        for past_step, past in self._history:
            ahead = self._step - past_step
            if not 1 <= ahead <= self.lookahead:
                continue
            for key, value in self._current.items():
                before = past.get(key)
                if before is None or before.shape != value.shape:
                    continue
                unit = key[1]
                err = relative_l1(before, value)
                self._sum[unit][past_step, ahead - 1] += float(err.sum())
                self._count[unit][past_step, ahead - 1] += err.numel()
        self._history.append((self._step, self._current))
        self._current = {}

    def _before_call(self, module: torch.nn.Module, args: tuple) -> None:
        if self._step is not None:
            self._ordinal += 1

    def _block_hook(self, role: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._step is None or self._step >= self.steps:
                return
            for unit in self._role_units[role]:
                self._current[(self._ordinal, unit)] = output.detach()

        return hook

    def _after_call(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self._step is not None and self._step < self.steps and torch.is_tensor(output):
            self._current[(self._ordinal, OUTPUT_UNIT)] = output.detach()

    def result(self, **info: Any) -> Calibration:
        """The averaged curves so far (NaN where nothing was measured)."""
        self._close_step()
        errors = {}
        for unit in self.units:
            mean = self._sum[unit] / self._count[unit]
            errors[unit] = [[float(v) for v in row] for row in mean.tolist()]
        if all(c.sum() == 0 for c in self._count.values()):
            raise RuntimeError("calibration recorded nothing: set_step() was never called during sampling, "
                               "or the model never ran")
        return Calibration(self.steps, self.lookahead, self.layout.max_depth, errors,
                           {"runs": self.runs, **info})


def calibrate(
    model: torch.nn.Module,
    run: Callable[[StepCallback], Any],
    steps: int,
    lookahead: int = 3,
    **info: Any,
) -> Calibration:
    """Record a calibration while ``run(on_step)`` samples ``steps`` steps with the unpatched model.

    ``run`` gets a step callback ``on_step(i, n)`` to call before step ``i``
    (``dato.evaluation.sampling.sample`` takes it as ``on_step``); it may sample several
    prompts, in one batch or one run after another.
    """
    with CalibrationRecorder(model, steps, lookahead) as recorder:
        run(recorder.set_step)
    return recorder.result(**info)


def schedule_from_calibration(
    calibration: Calibration,
    alpha: float,
    *,
    allow_reuse: bool = True,
    max_depth: int | None = None,
    method: str = "none",
    name: str | None = None,
) -> Schedule:
    """Turn one error threshold into a Schedule (see the module docstring for the rule).

    ``max_depth`` limits the cached depths tried (default: every depth of the
    model); ``allow_reuse`` off keeps every step computing at least the shallow branch.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ScheduleError(f"alpha = {alpha!r}, expected a finite number >= 0")
    deepest = calibration.max_depth if max_depth is None else max_depth
    if isinstance(deepest, bool) or not isinstance(deepest, int) or not -1 <= deepest <= calibration.max_depth:
        raise ScheduleError(f"max_depth = {max_depth!r}, expected -1..{calibration.max_depth}")
    n, k = calibration.steps, calibration.lookahead
    actions = [FULL] * n
    feature_from = [0] * (calibration.max_depth + 1)  # step that last computed the feature of depth d
    output_from = 0
    for t in range(1, n - 1):
        action = FULL
        if allow_reuse and calibration.error(OUTPUT_UNIT, output_from, t - output_from) < alpha:
            action = REUSE
        else:
            for d in range(deepest + 1):
                if calibration.error(depth_unit(d), feature_from[d], t - feature_from[d]) < alpha:
                    action = d
                    break
        actions[t] = action
        if action == REUSE:
            continue
        output_from = t
        computed_below = calibration.max_depth + 1 if action == FULL else action
        for d in range(computed_below):
            feature_from[d] = t
    label = f"calibrated-a{alpha:.4g}".replace("+", "") if name is None else name
    schedule = Schedule(name=label, cache=tuple(actions), ratio=(0.0,) * n, method=method,
                        description=f"SmoothCache-style calibration, alpha {alpha:g}, lookahead {k}")
    provenance = {**calibration.info, "generator": "calibration", "alpha": float(alpha), "lookahead": k,
                  "allow_reuse": allow_reuse, "max_depth": deepest}
    return schedule.with_provenance(**provenance)


def alpha_for_speedup(calibration, target: float, speedup_of, **rule) -> tuple[float, Schedule]:
    """The alpha (among the measured error values) whose schedule's speed-up is closest to ``target``."""
    values = sorted({v for rows in calibration.errors.values() for row in rows for v in row if v == v})
    candidates = [0.0] + [v * (1 + 1e-9) + 1e-15 for v in values]
    best = None
    for alpha in candidates:
        schedule = schedule_from_calibration(calibration, alpha, **rule)
        gap = abs(speedup_of(schedule) - target)
        if best is None or gap < best[0] - 1e-12:
            best = (gap, alpha, schedule)
    return best[1], best[2]


def alpha_range(calibration: Calibration) -> tuple[float, float]:
    """Smallest and largest finite error: alphas outside this range give all-full / coarsest schedules."""
    values = [v for rows in calibration.errors.values() for row in rows for v in row if math.isfinite(v)]
    if not values:
        return (0.0, 0.0)
    return (min(values), max(values))


class CalibrationGenerator:
    """Calibration as a :class:`~dato.generators.base.ScheduleGenerator`: one unaccelerated run over
    ``prompts`` records the curves (once per backend), then each target gets the alpha that meets it best.

    Args:
        prompts: calibration prompts (seeds 0, 1, ...).
        lookahead: reuse distances recorded (default ``steps - 1``: all).
        allow_reuse: whether whole-output reuse may be chosen.
        max_depth: the deepest cached branch tried (default: every depth of the model).
    """

    name = "calibration"

    def __init__(self, prompts: Sequence[str], *, lookahead: int | None = None, allow_reuse: bool = True,
                 max_depth: int | None = None) -> None:
        self.prompts = list(prompts)
        self.lookahead = lookahead
        self.allow_reuse = allow_reuse
        self.max_depth = max_depth
        self._calibrations: dict[int, Calibration] = {}
        self.calibration_seconds = 0.0

    def variant(self, **rule: Any) -> CalibrationGenerator:
        """The same calibration (measured once) under another rule, e.g. ``variant(allow_reuse=False)``."""
        other = CalibrationGenerator(self.prompts, lookahead=self.lookahead, allow_reuse=self.allow_reuse,
                                     max_depth=self.max_depth)
        for key, value in rule.items():
            setattr(other, key, value)
        other._calibrations = self._calibrations
        other.name = self.name if other.allow_reuse else f"{self.name}-noreuse"
        return other

    def calibration_for(self, backend: Any) -> Calibration:
        key = id(backend.unet)
        if key not in self._calibrations:
            pairs = [(p, i) for i, p in enumerate(self.prompts)]
            steps = backend.steps
            t0 = time.perf_counter()
            with torch.no_grad():
                self._calibrations[key] = calibrate(
                    backend.unet, lambda on_step: backend.sample_latents(pairs, on_step=on_step), steps=steps,
                    lookahead=self.lookahead or steps - 1, prompts=self.prompts, sampler=backend.sampler)
            self.calibration_seconds = time.perf_counter() - t0
        return self._calibrations[key]

    def schedules(self, backend: Any, targets: Sequence[float], log: Callable[[str], None] = print
                  ) -> dict[float, Schedule]:
        from dato.generators.base import speedup_of

        calibration, speedup = self.calibration_for(backend), speedup_of(backend)
        out = {}
        for target in targets:
            alpha, schedule = alpha_for_speedup(calibration, target, speedup, allow_reuse=self.allow_reuse,
                                                max_depth=self.max_depth)
            out[target] = schedule
            log(f"{self.name} {target:g}x: alpha {alpha:.4g} -> {schedule.preview()}")
        return out
