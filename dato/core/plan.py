"""The pass planner: what each pass of a generation will run, decided in one place.

Every surface asks :func:`plan_run` and shows or applies its answer, so they
cannot disagree: the run (the WebUI glue applies ``plan.first`` / ``plan.hires``
and writes ``plan.infotext()``), the accordion's preview (``plan.preview()``),
the API's argument check (a plan that raises is a 422), ``python -m dato target``
and the WebUI timing tool. The inputs are plain facts:

* the validated arguments (:class:`~dato.core.arguments.DatoArgs`);
* the :class:`Geometry` as the host will run it (sampler steps and order, size,
  img2img strength and the fix-steps setting, the hires pass's steps, size and sampler);
* the :class:`HostFacts`: the loaded UNet's cost model (shapes only, so its layout too),
  how the host's step clock counts, and the host's own Token Merging ratio;
* ``load``: how a schedule name becomes a :class:`~dato.core.schedule.Schedule`.

Nothing here runs a model or imports the WebUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dato.core.arguments import (
    ARG_BY_NAME,
    FROM_SCHEDULE,
    SCHEDULE_NONE,
    SCHEDULE_UNIFORM,
    ArgsError,
    DatoArgs,
    PassSettings,
)
from dato.core.clock import PassClock, PassSteps, webui_clock
from dato.core.infotext import infotext_params
from dato.core.layout import UNetLayout
from dato.core.macs import UNetCost
from dato.core.schedule import METHODS, RATIO_LIMIT, Schedule, ratio_allowed, short_repr
from dato.core.speed import expected_speedup, max_target, target_schedule

__all__ = ["DEFAULT_DENOISING", "Geometry", "HostFacts", "PassPlan", "RunPlan", "build_schedule", "pass_summary",
           "plan_run"]

#: what a speed target's rule uses when the arguments name no token method of their own ("As scheduled")
TARGET_FALLBACK_METHOD = ARG_BY_NAME["method"].default


#: the WebUI API's ``denoising_strength`` when a request leaves it out (img2img, and txt2img's hires pass)
DEFAULT_DENOISING = 0.75


@dataclass(frozen=True)
class Geometry:
    """A generation as the host will run it. Sizes in pixels; ``steps`` as the user set them.

    ``img2img_strength`` is ``None`` for txt2img. ``hr_width``/``hr_height`` are the hires pass's sampling size
    (0 = the first pass's), ``hr_steps`` its steps (0 = the first pass's), ``hr_sampler`` its sampler (``None`` =
    the first pass's), ``hr_denoising`` txt2img's denoising strength (it sets the hires pass's timesteps).
    """

    steps: int = 20
    width: int = 512
    height: int = 512
    sampler: str = "Euler"
    img2img_strength: float | None = None
    img2img_fix_steps: bool = False
    hires: bool = False
    hr_steps: int = 0
    hr_width: int = 0
    hr_height: int = 0
    hr_sampler: str | None = None
    hr_denoising: float = DEFAULT_DENOISING

    def first_steps(self) -> PassSteps:
        """The first pass: txt2img runs ``steps``; img2img runs ``int(min(strength, 0.999) * steps) + 1`` unless
        the fix-steps setting is on (then ``steps``, over a longer schedule), as the WebUI's
        ``setup_img2img_steps`` (strength 0 runs one step)."""
        steps = max(1, int(self.steps))
        if self.img2img_strength is None:
            return PassSteps(steps, steps)
        return _img2img_steps(steps, float(self.img2img_strength), self.img2img_fix_steps)

    def hires_steps(self) -> PassSteps:
        """The hires pass runs its own step count (or the first pass's) whatever the denoising strength (the
        WebUI hands the step count to ``sample_img2img``, which then counts as fix-steps)."""
        return _img2img_steps(max(1, int(self.hr_steps or self.steps)), float(self.hr_denoising), True)


def _img2img_steps(requested: int, strength: float, fixed: bool) -> PassSteps:
    strength = min(max(strength, 0.0), 0.999)
    if fixed:
        return PassSteps(requested, int(requested / strength) if strength > 0 else 0, requested - 1)
    t_enc = int(strength * requested)
    return PassSteps(t_enc + 1, requested, t_enc)


@dataclass(frozen=True)
class HostFacts:
    """What the host adds: the loaded UNet's cost model (and so its layout), how its step clock counts
    (``webui``: :func:`webui_clock`; ``steps``: the headless samplers, one clock step per sampler step), which
    samplers are second order there, and its own Token Merging ratio per pass (the WebUI's tomesd setting: a
    token method cannot share its blocks)."""

    cost: UNetCost
    clock: str = "webui"
    token_merging: float = 0.0
    hr_token_merging: float = 0.0
    second_order: Callable[[str], bool] | None = None

    @property
    def layout(self) -> UNetLayout:
        return self.cost.layout

    def pass_clock(self, sampler: str, steps: PassSteps) -> PassClock:
        """Raises ``ValueError`` when the sampler makes no model call at all (img2img at strength 0 with DDIM)."""
        if self.clock == "webui":
            return webui_clock(sampler, steps, self.second_order)
        is_second = self.second_order(sampler) if self.second_order else sampler.lower() == "heun"
        return PassClock.counting_steps(steps.launch, is_second)


@dataclass(frozen=True)
class PassPlan:
    """One pass: what the patch gets, what it will apply, and what the user is told.

    ``schedule`` goes to the patch, which lays it over the host's clock (``schedule.resample(clock.total)``,
    :attr:`applied`); ``source`` is the named schedule file it came from (its hash goes into the infotext);
    ``asked`` the settings before a speed target chose its rule, ``settings`` after. ``off`` says why the pass
    runs unaccelerated (then ``schedule`` is ``None``); ``speedup`` is the expected MACs speed-up (for adaptive
    caching, the most it can reach).
    """

    label: str
    steps: int
    clock: PassClock
    height: int
    width: int
    settings: PassSettings | None
    asked: PassSettings | None
    schedule: Schedule | None
    source: Schedule | None
    speedup: float = 1.0
    off: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def applied(self) -> Schedule | None:
        """The per-step schedule the patch will apply on this pass's clock."""
        return None if self.schedule is None else self.schedule.resample(self.clock.total)

    def summary(self) -> dict[str, Any]:
        """What the accordion's preview draws (``javascript/dato.js``) and the API's answers carry."""
        head = {"label": self.label, "steps": self.steps, "calls": self.clock.total}
        if self.off is not None or self.settings is None:
            return {**head, "off": True, "reason": self.off}
        out = {**head, **pass_summary(self.applied, self.clock.total), "name": self.schedule.name,
               "speedup": round(self.speedup, 2)}
        out["steps"] = self.steps
        if self.settings.adaptive:
            out["adaptive"] = {"threshold": self.settings.adaptive, "cap": self.settings.adaptive_cap}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class RunPlan:
    """Both passes of one generation (``hires`` is ``None`` without a hires pass)."""

    args: DatoArgs
    first: PassPlan | None
    hires: PassPlan | None
    has_hires: bool
    _replan: Callable[..., RunPlan] | None = field(default=None, repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return bool(self.args.enabled)

    def pass_plan(self, hires: bool) -> PassPlan | None:
        return self.hires if hires else self.first

    @property
    def notes(self) -> list[str]:
        """Everything the user should be told, in pass order (each pass's notes, then why a pass is off)."""
        out: list[str] = []
        for plan in (self.first, self.hires):
            if plan is None:
                continue
            out.extend(plan.notes)
            if plan.off is not None and not (plan is self.hires and self.args.hr_mode == "off"):
                out.append(f"{plan.label} not accelerated: {plan.off}")
        return out

    def effective_args(self) -> DatoArgs:
        """The arguments that describe what runs (what the infotext must say): a pass's token method after the
        Token Merging fallback, a speed target's chosen ratio; a hires pass with "same" settings stays "same"
        while it asked for what the first pass asked."""
        out = self.args
        first = self.first
        if first is not None and first.settings is not None:
            out = replace(out, method=first.settings.method, ratio=first.settings.ratio)
        hires = self.hires
        if not self.has_hires or out.hr_mode == "off" or hires is None or hires.settings is None:
            return out
        first_asked = first.asked if first is not None else None
        if out.hr_mode == "own" or hires.asked != first_asked:
            h = hires.settings
            out = replace(out, hr_mode="own", hr_method=h.method, hr_ratio=h.ratio, hr_schedule=h.schedule,
                          hr_interval=h.interval, hr_depth=h.depth)
        return out

    def infotext(self) -> dict[str, Any]:
        """The PNG-parameter entries of this run (empty when disabled): the arguments that describe what runs,
        the hashes of the schedules, and a note for each pass that runs unaccelerated."""
        if not self.enabled:
            return {}
        notes = {}
        if self.first is not None and self.first.off is not None:
            notes["first"] = self.first.off
        if self.hires is not None and self.hires.off is not None and self.args.hr_mode != "off":
            notes["hires"] = self.hires.off
        first_source = self.first.source if self.first is not None else None
        hires_source = self.hires.source if self.hires is not None else None
        return infotext_params(self.effective_args(), first_source, hires_source, self.has_hires, notes)

    def preview(self) -> dict[str, Any]:
        """The preview's data: one summary per pass (labelled "steps" when there is no hires pass)."""
        passes = [plan.summary() for plan in (self.first, self.hires) if plan is not None]
        if not self.has_hires and passes:
            passes[0]["label"] = "steps"
        return {"passes": passes}

    def with_pass_off(self, hires: bool, reason: str) -> RunPlan:
        """This plan with one pass unaccelerated (found out when the patch goes on: another accelerator)."""
        plan = self.pass_plan(hires)
        if plan is None:
            return self
        off = replace(plan, settings=None, schedule=None, source=None, speedup=1.0, off=reason)
        return replace(self, **{"hires" if hires else "first": off})

    def without_tokens(self, hires: bool, reason: str) -> RunPlan:
        """This plan re-planned with the token method off for one pass (its blocks belong to another extension)."""
        if self._replan is None:
            raise RuntimeError("this plan was not made by plan_run")
        fresh = self._replan(**{"hr_tokens_off" if hires else "tokens_off": reason})
        return replace(self, _replan=fresh._replan, **{"hires" if hires else "first": fresh.pass_plan(hires)})


# ------------------------------------------------------------------ schedules
def build_schedule(settings: PassSettings, load: Callable[[str], Schedule]) -> tuple[Schedule, Schedule | None]:
    """``(schedule to apply, the named schedule file it came from or None)`` for one pass.

    The token method and ratio replace the schedule's unless ``method`` is
    ``"schedule"``; a ratio a method cannot take raises :class:`ArgsError`.
    """
    source: Schedule | None = None
    if settings.schedule == SCHEDULE_NONE:
        base = Schedule.full(1, 0.0, "none", name="none")
    elif settings.schedule == SCHEDULE_UNIFORM:
        base = Schedule.uniform(max(50, settings.interval), settings.interval, settings.depth, 0.0, "none")
    else:
        source = base = load(settings.schedule)
    if settings.method == FROM_SCHEDULE:
        return base, source
    method, ratio = settings.method, float(settings.ratio)
    if method not in METHODS:
        raise ArgsError(f"method = {short_repr(method)}, expected one of {', '.join(METHODS)}")
    if method == "none":
        ratio = 0.0
    if not ratio_allowed(method, ratio):
        raise ArgsError(
            f"ratio = {ratio:g} is too large for {short_repr(method)}: prune and merge keep one token per 2x2 patch, "
            f"so they need ratio < {RATIO_LIMIT}; use 0.7 or the ToDo downsample method"
        )
    rule = dict(base.rule) if base.rule else None
    if rule is not None:
        rule["ratio"] = ratio
    return replace(base, method=method, ratio=(ratio,) * base.steps, rule=rule), source


def pass_summary(schedule: Schedule, steps: int) -> dict[str, Any]:
    """Per-step view of ``schedule`` at ``steps`` steps (for previews): actions, ratios, counts."""
    resampled = schedule.resample(steps)
    uses_tokens = resampled.method != "none" and any(r > 0 for r in resampled.ratio)
    return {
        "steps": steps,
        "method": resampled.method if uses_tokens else "none",
        "cache": [int(a) for a in resampled.cache],
        "ratio": [round(r, 4) if uses_tokens else 0.0 for r in resampled.ratio],
        "preview": resampled.preview(),
        "full": resampled.full_steps,
        "cached": steps - resampled.full_steps,
        "ratio_limit": RATIO_LIMIT,  # the page script scales its ratio bars to it
    }


# ------------------------------------------------------------------ the planner
def plan_run(args: DatoArgs, geometry: Geometry, host: HostFacts, load: Callable[[str], Schedule], *,
             tokens_off: str | None = None, hr_tokens_off: str | None = None) -> RunPlan:
    """Plan both passes. Raises :class:`ArgsError` / :class:`~dato.core.schedule.ScheduleError` for what no run
    can do (an unknown schedule, a ratio the method cannot take, a depth the loaded UNet lacks); what only this
    run cannot do (a speed target out of reach, the host's Token Merging) is in the plan's notes and ``off``.
    ``tokens_off`` / ``hr_tokens_off``: the token method must stay off for that pass, and why."""

    def replan(**why: str | None) -> RunPlan:
        merged = {"tokens_off": tokens_off, "hr_tokens_off": hr_tokens_off}
        merged.update({k: v for k, v in why.items() if v})
        return plan_run(args, geometry, host, load, **merged)

    if not args.enabled:
        return RunPlan(args, None, None, geometry.hires, replan)
    first = _plan_pass("first pass", args.first_pass(), geometry.first_steps(), geometry.sampler, geometry.width,
                       geometry.height, host.token_merging, tokens_off, host, load)
    hires = None
    if geometry.hires:
        sampler = geometry.hr_sampler or geometry.sampler
        settings = args.hires_pass()
        steps, width, height = geometry.hires_steps(), geometry.hr_width or geometry.width, \
            geometry.hr_height or geometry.height
        if settings is None:
            clock = _clock(host, sampler, steps) or PassClock(steps.launch, (1,) * steps.launch)
            hires = PassPlan("hires pass", steps.launch, clock, height // 8, width // 8, None, None, None, None,
                             off="off for the hires pass (hr_mode = off)")
        else:
            hires = _plan_pass("hires pass", settings, steps, sampler, width, height, host.hr_token_merging,
                               hr_tokens_off, host, load, prefix="hr_" if args.hr_mode == "own" else "")
    return RunPlan(args, first, hires, geometry.hires, replan)


def _clock(host: HostFacts, sampler: str, steps: PassSteps) -> PassClock | None:
    """The pass's clock, or ``None`` when its sampler makes no model call at all (img2img at denoising strength 0
    with the fix-steps setting; DDIM at one step)."""
    if steps.n < 1:
        return None
    try:
        return host.pass_clock(sampler, steps)
    except ValueError:
        return None


def _plan_pass(label: str, settings: PassSettings, pass_steps: PassSteps, sampler: str, width: int, height: int,
               token_merging: float, tokens_off: str | None, host: HostFacts, load: Callable[[str], Schedule],
               prefix: str = "") -> PassPlan:
    clock, steps = _clock(host, sampler, pass_steps), pass_steps.launch
    if clock is None:
        idle = PassClock(max(1, steps), (0,) * (max(1, steps) - 1) + (1,))
        return PassPlan(label, steps, idle, max(1, height // 8), max(1, width // 8), None, settings, None, None,
                        off=f"{sampler} makes no model call here ({steps} steps)")
    h, w = max(1, height // 8), max(1, width // 8)
    notes: list[str] = []
    if tokens_off is None and token_merging > 0 and _uses_tokens(settings, load):
        tokens_off = (f"the WebUI's Token Merging (ratio {token_merging:g}) is on, so the {label} uses caching only "
                      f"(token method {settings.method!r} is off). Set Settings > Optimizations > Token merging "
                      "ratio to 0 to use it.")
    if tokens_off is not None and _uses_tokens(settings, load):
        notes.append(tokens_off)
        settings = replace(settings, method="none")
    asked = settings
    if settings.speed_target:
        method = settings.method if settings.method in METHODS else TARGET_FALLBACK_METHOD
        levels = settings.max_downsample
        reachable = max_target(host.cost, clock, h, w, method=method, max_downsample=levels)
        if reachable < settings.speed_target - 1e-9:
            off = (f"speed target {settings.speed_target:g}x unreachable at {steps} steps; nearest reachable "
                   f"{math.floor(reachable * 100) / 100:.2f}x")
            return PassPlan(label, steps, clock, h, w, None, asked, None, None, off=off, notes=tuple(notes))
        schedule = target_schedule(host.cost, settings.speed_target, clock, h, w, method=method,
                                   max_downsample=levels, field=f"{prefix}speed_target", steps_label=steps)
        settings = replace(settings, method=method, ratio=schedule.ratio[0])
        source: Schedule | None = schedule
    else:
        schedule, source = build_schedule(settings, load)
    origin = (f"{prefix}depth = {settings.depth} (the uniform rule)" if settings.schedule == SCHEDULE_UNIFORM
              and not settings.speed_target else None)
    host.layout.check_schedule_fits(schedule, origin)
    speedup = _expected(host.cost, schedule, clock, h, w, settings)
    return PassPlan(label, steps, clock, h, w, settings, asked, schedule, source, speedup=speedup, notes=tuple(notes))


def _uses_tokens(settings: PassSettings, load: Callable[[str], Schedule]) -> bool:
    """Whether the pass would reduce tokens (a speed target may choose to; 'As scheduled' if its file does)."""
    if settings.method == "none":
        return False
    if settings.speed_target:
        return True
    schedule, _ = build_schedule(settings, load)
    return schedule.method != "none" and any(r > 0 for r in schedule.ratio)


def _expected(cost: UNetCost, schedule: Schedule, clock: PassClock, h: int, w: int, settings: PassSettings) -> float:
    """The expected MACs speed-up; adaptive caching decides during the run, so it is priced at its bound: ``cap``
    cached steps at depth 0, then a full one, with the schedule's token ratios."""
    laid = schedule.resample(clock.total)
    if settings.adaptive:
        bound = Schedule.uniform(clock.total, settings.adaptive_cap + 1, 0, 0.0, laid.method)
        laid = replace(bound, ratio=laid.ratio, rule=None)
    return expected_speedup(cost, laid, h, w, max_downsample=settings.max_downsample, clock=clock)
