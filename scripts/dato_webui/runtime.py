"""When the patch goes on and off, and which step the UNet is at.

The WebUI calls, for every generation (``modules/processing.py``, v1.10.1)::

    process_images: before_process -> apply_token_merging -> process_images_inner:
        process -> [per batch: process_batch -> sample:
            process_before_every_sampling -> sampler (on_cfg_denoiser each call)
            [hires: apply_token_merging(hr) -> before_hr -> process_before_every_sampling -> sampler]]
        -> postprocess                       (skipped when sampling raises)

:class:`Runtime` follows it:

* ``begin`` (``process``): take any patch of ours off, wherever it is (a
  previous run that raised never reached ``postprocess``), validate the
  arguments, decide what each pass runs and write the infotext keys;
* ``before_sampling`` (``process_before_every_sampling``): put the patch for
  this pass on the current model's UNet with the engine's ``manual`` clock,
  which keeps it inert until the first ``set_step``;
* ``on_cfg_denoiser``: ``set_step(denoiser.step, denoiser.total_steps,
  p.is_hr_pass)`` for the run that armed the patch, never counting UNet calls;
* ``end`` (``postprocess``), ``on_model_loaded``, ``on_script_unloaded``: take it off.

A guard hook on the UNet makes a stale patch harmless: a UNet call outside
the WebUI job that armed it (another job started, or the job ended) removes
the patch before the engine sees the call.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import dato
from dato.core.macs import trace_unet_cost
from dato.core.options import ArgsError, DatoArgs, PassSettings, build_schedule, infotext_params
from dato.core.schedule import Schedule, ScheduleError
from dato.core.speed import clock_steps, target_schedule

from . import store
from .host import TAG, _shared, denoiser_step, is_second_order, other_accelerator, pass_geometry, tell

log = logging.getLogger("sd-webui-dato")
@dataclass
class PassPlan:
    settings: PassSettings
    schedule: Schedule
    source: Schedule | None


@dataclass
class Run:
    """One armed generation: the processing object and what each pass runs."""

    p: Any
    args: DatoArgs
    first: PassPlan | None
    hires: PassPlan | None
    job_start: float | None
    job_bound: bool
    stats: list[dict] = field(default_factory=list)


class Runtime:
    def __init__(self) -> None:
        self.run: Run | None = None
        self._unet_ref: weakref.ReferenceType | None = None
        self._patch: Any = None
        self._patch_label = ""
        self._guard_handles: list[Any] = []
        self._stale = False
        # job threads (search renders, gate turns) call remove() too: one lock over the patch state
        self.lock = threading.RLock()
        self._last_clock: tuple[int, int, int] | None = None  # the step the pass is at (for a mid-run model switch)

    # ----------------------------------------------------------------- state
    def job_key(self) -> tuple[float | None, bool]:
        state = getattr(_shared(), "state", None)
        return getattr(state, "time_start", None), bool(getattr(state, "job", ""))

    def remove(self, reason: str = "") -> bool:
        """Take our patch off, wherever it is; ``True`` if there was one."""
        with self.lock:
            return self._remove(reason)

    def _remove(self, reason: str) -> bool:
        removed = False
        for handle in self._guard_handles:
            handle.remove()
        self._guard_handles.clear()
        self._stale = False
        unet = self._unet_ref() if self._unet_ref is not None else None
        if unet is not None and self._patch is not None and dato.get_patch(unet) is self._patch:
            if self._patch.stats.get("calls") and self.run is not None:
                self.run.stats.append({**self._patch.stats, "label": self._patch_label})
            dato.remove_patch(unet)
            removed = True
            if reason:
                log.info("%s: patch removed (%s)", TAG, reason)
        self._unet_ref = None
        self._patch = None
        return removed

    def reset(self, reason: str) -> None:
        """Forget everything (model switch, script reload)."""
        if self.remove(reason):
            print(f"[{TAG}] removed the acceleration patch ({reason})")
        self.run = None

    # ------------------------------------------------------------- lifecycle
    def begin(self, p: Any, raw_args: tuple, defaults: DatoArgs, overrides: dict | None = None) -> None:
        """``process``: clean up, validate, plan the passes, write the infotext."""
        # X/Y/Z cells share one extra_generation_params: a cell must never carry an earlier cell's DaTo keys
        params = getattr(p, "extra_generation_params", None)
        if isinstance(params, dict):
            for key in [k for k in params if isinstance(k, str) and k.startswith("DaTo")]:
                del params[key]
        if self.remove("stale patch from an earlier run"):
            print(f"[{TAG}] an earlier generation ended without cleaning up (error or interrupt); "
                  "its patch was removed before this one")
        self.run = None
        try:
            args = DatoArgs.from_args(list(raw_args), defaults)
            if overrides:
                args = args.with_overrides(overrides)
        except ArgsError as exc:
            tell(p, f"not applied: {exc}")
            return
        if not args.enabled:
            return
        shared = _shared()
        try:
            dato.find_unet(shared.sd_model)
        except dato.UnsupportedModelError as exc:
            tell(p, f"not applied: {exc}")
            return
        has_hires = bool(getattr(p, "enable_hr", False))
        try:
            first = self._plan(p, args.first_pass(), for_hr=False)
            hires_settings = args.hires_pass() if has_hires else None
            hires = self._plan(p, hires_settings, for_hr=True) if hires_settings is not None else None
        except (ArgsError, ScheduleError) as exc:
            tell(p, f"not applied: {exc}")
            return
        effective = self._effective_args(args, first, hires, has_hires)
        p.extra_generation_params.update(infotext_params(
            effective, first.source if first else None, hires.source if hires else None, has_hires))
        job_start, job_bound = self.job_key()
        self.run = Run(p, effective, first, hires, job_start, job_bound)

    def _plan(self, p: Any, settings: PassSettings, for_hr: bool) -> PassPlan:
        """The pass's settings and schedule, built once; rebuilt without tokens only when Token Merging is on."""
        if settings.target:
            return self._target_plan(p, settings, for_hr)
        schedule, source = build_schedule(settings, store.load)
        tome = self._token_merging_ratio(p, for_hr)
        if tome > 0 and settings.method != "none" and schedule.method != "none" and any(schedule.ratio):
            # the WebUI's Token Merging (tomesd) and a token method cannot share the blocks: keep caching only
            pass_name = "hires pass" if for_hr else "first pass"
            tell(p, f"the WebUI's Token Merging (ratio {tome:g}) is on, so the {pass_name} uses caching only "
                    f"(token method {settings.method!r} is off). Set Settings > Optimizations > Token merging "
                    "ratio to 0 to use it.")
            settings = replace(settings, method="none")
            schedule, source = build_schedule(settings, store.load)
        return PassPlan(settings, schedule, source)

    def _target_plan(self, p: Any, settings: PassSettings, for_hr: bool) -> PassPlan:
        """A speed target: the best-quality rule meeting it at this pass's steps, sampler, size and token levels."""
        method = settings.method if settings.method in ("prune", "merge", "downsample", "none") else "prune"
        if self._token_merging_ratio(p, for_hr) > 0:
            method = "none"
        steps, height, width = pass_geometry(p, for_hr)
        cost = trace_unet_cost(dato.find_unet(_shared().sd_model))
        schedule = target_schedule(cost, settings.target, clock_steps(steps, is_second_order(p)), height, width,
                                   method=method, max_downsample=settings.max_downsample, field="speed_target")
        return PassPlan(replace(settings, method=method, ratio=schedule.ratio[0]), schedule, schedule)

    @staticmethod
    def _token_merging_ratio(p: Any, for_hr: bool) -> float:
        get_ratio = getattr(p, "get_token_merging_ratio", None)
        return float(get_ratio(for_hr=for_hr) or 0) if callable(get_ratio) else 0.0

    @staticmethod
    def _effective_args(args: DatoArgs, first: PassPlan, hires: PassPlan | None, has_hires: bool) -> DatoArgs:
        """The arguments that describe what will run (what the infotext must say)."""
        f = first.settings
        out = replace(args, method=f.method, ratio=f.ratio)
        if not has_hires or args.hr_mode == "off":
            return out
        h = hires.settings if hires else None
        if h is not None and (args.hr_mode == "own" or h != f):
            out = replace(out, hr_mode="own", hr_method=h.method, hr_ratio=h.ratio, hr_schedule=h.schedule,
                          hr_interval=h.interval, hr_depth=h.depth)
        return out

    def before_sampling(self, p: Any, model: Any = None) -> None:
        """``process_before_every_sampling``: patch the current UNet (or ``model``'s) for this pass."""
        run = self.run
        self.remove()
        self._last_clock = None
        if run is None or run.p is not p:
            return
        plan = run.hires if getattr(p, "is_hr_pass", False) else run.first
        if plan is None:
            return
        try:
            unet = dato.find_unet(_shared().sd_model if model is None else model)
        except dato.UnsupportedModelError as exc:  # e.g. a hires checkpoint of another kind
            tell(p, f"not applied to this pass: {exc}")
            return
        hires = bool(getattr(p, "is_hr_pass", False))
        owner = other_accelerator(unet)
        if owner is not None:  # it runs its own forward, skipping blocks itself: our schedule would never run
            pass_name = "hires pass" if hires else "first pass"
            tell(p, f"{owner} owns the UNet for the {pass_name}, so DaTo is not applied to it (two step caches "
                    f"cannot share one UNet); turn one of them off")
            p.extra_generation_params["DaTo hires off" if hires else "DaTo off"] = owner
            return
        seeds = getattr(p, "seeds", None) or [getattr(p, "seed", 0)]
        seed = int(seeds[0]) if seeds and seeds[0] is not None else 0
        try:
            patch = self._apply(unet, plan, seed)
        except dato.PatchConflictError as exc:  # another extension swapped the transformer blocks
            tell(p, f"token method off for this pass: {exc}")
            plan.settings = replace(plan.settings, method="none")
            plan.schedule = plan.schedule.with_method("none").with_ratio(0.0)
            self._record_method_off(p, bool(getattr(p, "is_hr_pass", False)))
            patch = self._apply(unet, plan, seed)
        except (ValueError, ScheduleError) as exc:
            tell(p, f"not applied to this pass: {exc}")
            return
        self._patch = patch
        self._patch_label = ("hires pass" if hires else "first pass") + (
            f", batch {int(getattr(p, 'iteration', 0)) + 1}" if int(getattr(p, "n_iter", 1) or 1) > 1 else "")
        self._unet_ref = weakref.ref(unet)
        # the guard runs before the engine's pre-hook; the clean-up after the engine's post-hook (hooks cannot be
        # removed while torch iterates them, so a stale patch is made inert first and taken off after the call)
        self._guard_handles = [unet.register_forward_pre_hook(self._guard, prepend=True),
                               unet.register_forward_hook(self._after_guard)]

    def _record_method_off(self, p: Any, hires: bool) -> None:
        """Make the infotext say that this pass ran without token reduction."""
        params, run = p.extra_generation_params, self.run
        if hires and "DaTo hires method" not in params and run is not None and run.hires is not None:
            params["DaTo hires"] = "own"  # the hires pass no longer matches the first pass
            params.update(infotext_params(replace(run.args, hr_mode="own", hr_method="none",
                                                  hr_schedule=run.hires.settings.schedule,
                                                  hr_interval=run.hires.settings.interval,
                                                  hr_depth=run.hires.settings.depth),
                                          run.first.source if run.first else None, run.hires.source, True))
            return
        prefix = "DaTo hires" if hires else "DaTo"
        params[f"{prefix} method"] = "none"
        params.pop(f"{prefix} ratio", None)

    @staticmethod
    def _apply(unet: Any, plan: PassPlan, seed: int):
        return dato.apply_patch(unet, plan.schedule, seed=seed % (2**31), clock="manual",
                                **plan.settings.patch_options())

    def on_cfg_denoiser(self, params: Any) -> None:
        """The step clock: the denoiser knows its step and the total for this pass."""
        run, unet = self.run, self._unet_ref() if self._unet_ref is not None else None
        if run is None or unet is None:
            return
        p, step, total = denoiser_step(params)
        if p is not run.p:
            return
        self._last_clock = (step, total, 1 if getattr(p, "is_hr_pass", False) else 0)
        dato.set_step(unet, *self._last_clock)

    def follow_model(self, sd_model: Any) -> None:
        """``on_model_loaded`` during a run: the refiner switch (``refiner_checkpoint``, ``refiner_switch_at``)
        or a checkpoint loaded mid-sampling. The pass's patch moves to the model that now samples, with fresh
        caches (its next step is full: no feature of the other weights is reused); a model the engine cannot
        patch stops it, and the comment under the image says so. Between runs a load just takes the patch off."""
        run, last, had = self.run, self._last_clock, self._patch is not None
        self.remove("a model was loaded")
        if run is None or not had:
            return
        self.before_sampling(run.p, sd_model)
        step = "its next step" if last is None else f"step {last[0] + 1}"
        if self._patch is None:
            tell(run.p, f"stopped at the model switch at {step}: the rest of this pass runs unaccelerated")
            return
        tell(run.p, f"a model was loaded mid-run at {step} (the refiner): the patch follows it, starting full")
        if last is not None:
            self._last_clock = last
            dato.set_step(self._unet_ref(), *last)

    def end(self, p: Any) -> None:
        """``postprocess``: take the patch off and report what ran."""
        run = self.run
        self.remove()
        self.run = None
        if run is None or run.p is not p:
            return
        for stats in run.stats:  # "pass" is the first or the hires pass only; batches are named as batches
            print(f"[{TAG}] {stats['label']}: {stats['calls']} UNet calls, {stats['full']} full, "
                  f"{stats['cached']} cached, {stats['reuse']} reused")

    # ------------------------------------------------------------------ guard
    def _guard(self, module: Any, args: tuple) -> None:
        """UNet pre-hook (before the engine's): a call outside the arming job finds the patch inert."""
        run = self.run
        if run is not None and not self._stale:
            time_start, in_job = self.job_key()
            if time_start == run.job_start and (in_job or not run.job_bound):
                return None
        if not self._stale:
            print(f"[{TAG}] a UNet call outside the generation that armed the patch: it runs unpatched and "
                  "the patch is removed")
            self._stale = True
            self.run = None
        dato.clear_step(module)  # the engine's manual clock: inert until the next set_step
        return None

    def _after_guard(self, module: Any, args: tuple, output: Any) -> None:
        """UNet post-hook (after the engine's): take a stale patch off once torch is done with the hooks."""
        if self._stale:
            self.remove("stale patch")


RUNTIME = Runtime()
