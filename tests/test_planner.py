"""One plan per pass (issue 20): what the accordion's preview shows is what the patch applies in the run.

For every case the preview is computed from the page's values (``ui.preview_plan``, the page context named as
the API's fields) and the same generation is run through the stand-in host, whose samplers make the WebUI's
calls (Euler and DPM++ 2M SDE one a step, Heun two a step and one on the last, DDIM its timestep loop). A
recorder behind our step clock captures, at every model call, the schedule the live patch lays over the
denoiser's count (``patch.schedule_for(total)``), the patch's options and the latent size. The preview's cells,
ratios and expected speed-up must equal those captured, exactly; the speed-up is recomputed from the captured
facts and the calls the sampler really made.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from modules import script_callbacks, shared

import dato
from dato.core.arguments import ARG_NAMES, DatoArgs
from dato.core.clock import PassClock
from dato.core.schedule import Schedule
from dato.core.speed import expected_speedup
from dato.evaluation.costs import unet_cost

pytest_plugins = ["webui_stub.harness"]


@dataclass
class Case:
    name: str
    args: dict
    steps: int
    sampler: str = "Euler"
    tab: str = "txt2img"
    strength: float | None = None  # img2img's denoising strength
    fix_steps: bool = False
    hires: dict | None = None  # hires fields of the request (hr_second_pass_steps, hr_scale, hr_resize_x, ...)
    tome: float = 0.0
    size: tuple[int, int] = (64, 64)
    page: dict = field(default_factory=dict)

    def request(self) -> dict:
        """The generation's fields, which are also the page's context (the same names)."""
        out = {"steps": self.steps, "sampler_name": self.sampler, "width": self.size[0], "height": self.size[1]}
        if self.strength is not None:
            out["denoising_strength"] = self.strength
        if self.hires:
            out.update(enable_hr=True, **self.hires)
        return out


SCHEDULE = {"schedule": "balanced"}
FAST = {"schedule": "fast", "method": "schedule"}
UNIFORM = {"schedule": "uniform", "interval": 3, "depth": 1, "method": "merge", "ratio": 0.3}
TARGET = {"speed_target": 3}
ADAPTIVE = {"schedule": "none", "method": "prune", "ratio": 0.3, "adaptive": 0.9, "adaptive_cap": 2}
HIRES_OWN = {"hr_mode": "own", "hr_schedule": "uniform", "hr_interval": 2, "hr_method": "none"}

CASES = [
    # samplers x step counts, txt2img, a named schedule
    *(Case(f"{s.lower().replace(' ', '')}-{n}-schedule", SCHEDULE, n, s)
      for s in ("Euler", "Heun", "DPM++ 2M SDE", "DDIM") for n in (1, 4, 8, 20)),
    Case("euler-30-fast", FAST, 30), Case("heun-30-fast", FAST, 30, "Heun"), Case("ddim-30-fast", FAST, 30, "DDIM"),
    Case("euler-150-schedule", SCHEDULE, 150), Case("ddim-150-uniform", UNIFORM, 150, "DDIM"),
    # speed targets on every sampler (the run must lay the rule over the clock the preview prices)
    *(Case(f"{s.lower().replace(' ', '')}-{n}-target", TARGET, n, s)
      for s in ("Euler", "Heun", "DPM++ 2M SDE", "DDIM") for n in (8, 20)),
    Case("heun-30-target", TARGET, 30, "Heun"), Case("euler-4-target-unreachable", {"speed_target": 50}, 4),
    # adaptive caching (priced at its bound, decided during the run)
    Case("euler-20-adaptive", ADAPTIVE, 20), Case("heun-8-adaptive", ADAPTIVE, 8, "Heun"),
    # img2img: strength 0, 0.3 and 1, with and without the fix-steps setting
    *(Case(f"img2img-{s}-{strength}-{'fix' if fix else 'nofix'}", SCHEDULE, 20, s, "img2img", strength, fix)
      for s in ("Euler", "DDIM") for strength in (0.0, 0.3, 1.0) for fix in (False, True)),
    Case("img2img-heun-target", TARGET, 20, "Heun", "img2img", 0.6),
    # hires fix: same settings, own settings with own steps and size, a speed target, another sampler
    Case("hires-same", SCHEDULE, 8, hires={"hr_second_pass_steps": 5, "hr_scale": 2.0}),
    Case("hires-own-resize-crop", {**SCHEDULE, **HIRES_OWN}, 8,  # 64x64 -> 128x128, cropped to 128x64
         hires={"hr_second_pass_steps": 6, "hr_resize_x": 128, "hr_resize_y": 64}),
    Case("hires-target", TARGET, 10, hires={"hr_second_pass_steps": 12, "hr_scale": 2.0}),
    Case("hires-heun-sampler", SCHEDULE, 6, hires={"hr_second_pass_steps": 4, "hr_sampler_name": "Heun"}),
    # the WebUI's Token Merging: the token method steps back, caching stays
    Case("tome-schedule", SCHEDULE, 12, tome=0.5), Case("tome-target", TARGET, 12, tome=0.5),
    Case("tome-hires", SCHEDULE, 6, hires={"hr_second_pass_steps": 4}, tome=0.5),
]


@dataclass
class Call:
    hires: bool
    step: int
    total: int
    shape: tuple[int, int]
    schedule: Schedule | None
    options: object


class Recorder:
    """An ``on_cfg_denoiser`` callback registered after the extension's: the patch has its step by then."""

    def __init__(self, model):
        self.unet = dato.find_unet(model)
        self.calls: list[Call] = []
        self.plan = None

    def __call__(self, params):
        denoiser = params.denoiser
        patch = dato.get_patch(self.unet)
        run = harness.runtime().run
        if run is not None:
            self.plan = run.plan
        schedule = patch.schedule_for(denoiser.total_steps) if patch is not None else None
        self.calls.append(Call(bool(denoiser.p.is_hr_pass), denoiser.step, denoiser.total_steps,
                               tuple(params.x.shape[-2:]), schedule, patch.options if patch else None))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_preview_shows_exactly_what_the_patch_applies(host, model, case):
    from dato_webui import ui

    assert len(CASES) >= 40
    shared.opts.token_merging_ratio = case.tome
    shared.opts.img2img_fix_steps = case.fix_steps
    args = DatoArgs(enabled=True).with_overrides(case.args)
    values = dict(zip(ARG_NAMES[1:], args.to_args()[1:], strict=True))
    preview = ui.preview_plan(values, case.request(), is_img2img=case.tab == "img2img")

    recorder = Recorder(model)
    script_callbacks.on_cfg_denoiser(recorder, name="test_planner_recorder")
    result = host.generate(case.tab, alwayson_scripts={"dato": {"args": [args.to_dict()]}}, seed=3,
                           **case.request())
    assert dato.get_patch(model) is None

    assert recorder.plan is not None or all(c.schedule is None for c in recorder.calls)
    cost = unet_cost(model)
    for plan, hires in ((preview.first, False), (preview.hires, True)):
        calls = [c for c in recorder.calls if c.hires == hires]
        if plan is None:
            assert not calls
            continue
        if recorder.plan is not None:  # the run's own plan is the preview's, field for field
            assert recorder.plan.pass_plan(hires) == plan
        if plan.off is not None:  # unaccelerated (or no model call at all): no patch saw a call; the infotext says why
            assert all(c.schedule is None for c in calls)
            assert plan.off in result.infotexts[0]
            continue
        total = calls[0].total
        applied = calls[0].schedule
        assert {c.total for c in calls} == {total} and all(c.schedule == applied for c in calls)
        assert plan.clock.total == total
        shown = plan.summary()
        assert shown["cache"] == [int(a) for a in applied.cache]
        assert shown["ratio"] == [round(r, 4) if shown["method"] != "none" else 0.0 for r in applied.ratio]
        options = calls[0].options
        assert options.method == applied.method
        if plan.settings.adaptive:
            assert (options.adaptive, options.adaptive_cap) == (plan.settings.adaptive, plan.settings.adaptive_cap)
            bound = Schedule.uniform(total, options.adaptive_cap + 1, 0, 0.0, applied.method)
            applied = Schedule(bound.name, bound.cache, applied.ratio, applied.method)
        per_step = Counter(c.step for c in calls)
        observed = PassClock(total, tuple(per_step.get(i, 0) for i in range(max(total, max(per_step) + 1))))
        assert observed == plan.clock  # the clock model is the sampler's real call pattern
        h, w = calls[0].shape
        assert (h, w) == (plan.height, plan.width)
        speed = expected_speedup(cost, applied, h, w, max_downsample=options.max_downsample, clock=observed)
        assert speed == plan.speedup and shown["speedup"] == round(speed, 2)


def test_token_merging_notes_reach_the_preview_and_the_comment(host, model):
    from dato_webui import ui

    shared.opts.token_merging_ratio = 0.5
    values = dict(zip(ARG_NAMES[1:], DatoArgs().to_args()[1:], strict=True))
    first = ui.preview_data(values, {"steps": 12}, is_img2img=False)["passes"][0]
    assert first["method"] == "none" and "Token Merging (ratio 0.5) is on" in first["notes"][0]
    result = host.generate(alwayson_scripts={"dato": {"args": [True]}}, steps=4, seed=1)
    assert "Token Merging (ratio 0.5) is on" in result.comments and "DaTo method: none" in result.infotexts[0]


def test_planning_runs_no_forward_of_the_live_unet(host, model):
    """A speed target is priced from the UNet's shapes (a meta-device copy of its construction), never by tracing
    the live UNet: with another extension's forward in place (ControlNet replaces the UNet's ``forward`` per
    instance), every UNet call is one the sampler made."""
    unet = dato.find_unet(model)
    seen = []
    original = unet.forward
    unet.forward = lambda *a, **k: (seen.append(1), original(*a, **k))[1]  # as ControlNet's UnetHook does
    try:
        steps = 6
        host.generate(alwayson_scripts={"dato": {"args": [{"speed_target": 2.5}]}}, steps=steps, seed=1)
    finally:
        del unet.forward
    assert len(seen) == steps  # one batched cond/uncond call a step, nothing for planning


def test_an_unreachable_target_says_so_in_the_infotext_and_pastes_back_harmlessly(host, model):
    result = host.generate(alwayson_scripts={"dato": {"args": [{"speed_target": 50}]}}, steps=8, seed=1)
    infotext = result.infotexts[0]
    assert "DaTo off: speed target 50x unreachable at 8 steps; nearest reachable " in infotext
    script = host.script()
    updates = host.paste(infotext)
    mine = updates[script.args_from - 1:script.args_to - 1]
    values = dict(zip(ARG_NAMES, [u.get("value") for u in mine], strict=True))
    assert values["enabled"] is True and float(values["speed_target"]) == 50.0  # the request, not the note
