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
from dataclasses import dataclass, field
from typing import Any

import dato
from dato.core.arguments import ArgsError, DatoArgs
from dato.core.infotext import ALL_KEYS, NOTE_KEYS
from dato.core.plan import PassPlan, RunPlan, plan_run
from dato.core.schedule import ScheduleError

from . import store
from .host import TAG, _shared, denoiser_step, geometry_of, host_facts, other_accelerator, tell

log = logging.getLogger("sd-webui-dato")


@dataclass
class Run:
    """One armed generation: the processing object and its plan (both passes)."""

    p: Any
    plan: RunPlan
    job_start: float | None
    job_bound: bool
    stats: list[dict] = field(default_factory=list)


def plan_for(p: Any, args: DatoArgs) -> RunPlan:
    """The run's plan: the arguments, the geometry ``p`` will run with and the host's facts, through the one
    planner the preview, the API check and the CLI ask too."""
    is_img2img = getattr(p, "init_images", None) is not None or getattr(p, "init_latent", None) is not None
    return plan_run(args, geometry_of(p), host_facts(p, is_img2img), store.load)


def write_infotext(p: Any, plan: RunPlan | None) -> None:
    """Replace this extension's infotext entries with the plan's, or just remove them (``None``): X/Y/Z cells
    share one dict, and a pass that changes when its patch goes on rewrites them."""
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    for key in [k for k in params if k in ALL_KEYS]:
        del params[key]
    if plan is not None:
        params.update(plan.infotext())


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
        """``process``: clean up, validate, plan the passes, write the infotext.

        Planning never hurts the generation: whatever goes wrong, the image is made unaccelerated, nothing is
        patched, and one line (comment and console) plus the infotext's ``DaTo off`` say why."""
        write_infotext(p, None)  # an X/Y/Z cell must never carry an earlier cell's keys
        if self.remove("stale patch from an earlier run"):
            print(f"[{TAG}] an earlier generation ended without cleaning up (error or interrupt); "
                  "its patch was removed before this one")
        self.run = None
        try:
            args = DatoArgs.from_args(list(raw_args), defaults)
            if overrides:
                args = args.with_overrides(overrides)
        except ArgsError as exc:
            self._not_applied(p, str(exc))
            return
        if not args.enabled:
            return
        try:
            dato.find_unet(_shared().sd_model)
            plan = plan_for(p, args)
        except (ArgsError, ScheduleError, dato.UnsupportedModelError) as exc:
            self._not_applied(p, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a planning bug must not cost the user their image
            log.exception("%s: planning failed", TAG)
            self._not_applied(p, f"planning failed ({type(exc).__name__}: {exc})")
            return
        for note in plan.notes:
            tell(p, note)
        write_infotext(p, plan)
        job_start, job_bound = self.job_key()
        self.run = Run(p, plan, job_start, job_bound)

    @staticmethod
    def _not_applied(p: Any, reason: str) -> None:
        tell(p, f"not applied: {reason}")
        params = getattr(p, "extra_generation_params", None)
        if isinstance(params, dict):
            params[NOTE_KEYS["first"]] = f"not applied: {reason}"

    def before_sampling(self, p: Any, model: Any = None) -> None:
        """``process_before_every_sampling``: patch the current UNet (or ``model``'s) for this pass."""
        run = self.run
        self.remove()
        self._last_clock = None
        if run is None or run.p is not p:
            return
        hires = bool(getattr(p, "is_hr_pass", False))
        plan = run.plan.pass_plan(hires)
        if plan is None or plan.schedule is None:
            return
        try:
            unet = dato.find_unet(_shared().sd_model if model is None else model)
        except dato.UnsupportedModelError as exc:  # e.g. a hires checkpoint of another kind
            tell(p, f"not applied to this pass: {exc}")
            return
        owner = other_accelerator(unet)
        if owner is not None:  # it runs its own forward, skipping blocks itself: our schedule would never run
            tell(p, f"{owner} owns the UNet for the {plan.label}, so DaTo is not applied to it (two step caches "
                    f"cannot share one UNet); turn one of them off")
            self._replan(run, run.plan.with_pass_off(hires, f"{owner} owns the UNet"))
            return
        seeds = getattr(p, "seeds", None) or [getattr(p, "seed", 0)]
        seed = int(seeds[0]) if seeds and seeds[0] is not None else 0
        try:
            try:
                patch = self._apply(unet, plan, seed)
            except dato.PatchConflictError as exc:  # another extension swapped the transformer blocks
                tell(p, f"token method off for this pass: {exc}")
                self._replan(run, run.plan.without_tokens(hires, f"token method off: {exc}"))
                plan = run.plan.pass_plan(hires)
                patch = self._apply(unet, plan, seed)
        except (ValueError, ScheduleError) as exc:
            tell(p, f"not applied to this pass: {exc}")
            self._replan(run, run.plan.with_pass_off(hires, f"not applied: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - the pass runs unaccelerated rather than fail the user's image
            log.exception("%s: patching failed", TAG)
            self.remove()
            tell(p, f"not applied to this pass: {type(exc).__name__}: {exc}")
            self._replan(run, run.plan.with_pass_off(hires, f"patching failed ({type(exc).__name__})"))
            return
        self._patch = patch
        self._patch_label = plan.label + (
            f", batch {int(getattr(p, 'iteration', 0)) + 1}" if int(getattr(p, "n_iter", 1) or 1) > 1 else "")
        self._unet_ref = weakref.ref(unet)
        # the guard runs before the engine's pre-hook; the clean-up after the engine's post-hook (hooks cannot be
        # removed while torch iterates them, so a stale patch is made inert first and taken off after the call)
        self._guard_handles = [unet.register_forward_pre_hook(self._guard, prepend=True),
                               unet.register_forward_hook(self._after_guard)]

    @staticmethod
    def _replan(run: Run, plan: RunPlan) -> None:
        """A pass changed when its patch went on: keep the new plan and let the infotext say what runs now."""
        run.plan = plan
        write_infotext(run.p, plan)

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
