"""The patch's lifecycle in the stand-in WebUI with a real ldm UNet: on for each pass, off after, even after errors."""

from __future__ import annotations

import pytest
import torch
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from modules import script_callbacks, sd_models, shared

import dato

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures

ON = {"dato": {"args": [True, "prune", 0.4, "balanced"]}}


class Spy:
    """A cfg_denoiser callback registered after the extension's: what the UNet will see at each step."""

    def __init__(self, model):
        self.model = model
        self.seen = []
        script_callbacks.on_cfg_denoiser(self, name="test_spy")

    def __call__(self, params):
        patch = dato.get_patch(self.model)
        d = params.denoiser
        self.seen.append({
            "hr": d.p.is_hr_pass, "step": d.step, "total": d.total_steps, "patched": patch is not None,
            "clock": None if patch is None else (patch.clock.step, patch.clock.total, patch.clock.pass_index),
            "method": None if patch is None else patch.schedule.method,
            "schedule": None if patch is None else patch.schedule.name,
            "max_downsample": None if patch is None else patch.options.max_downsample,
        })


def image(result):
    return result.images[0]


def test_patch_is_on_during_sampling_with_the_denoisers_clock_and_off_after(host, model):
    spy = Spy(model)
    result = host.generate(alwayson_scripts=ON, steps=5, seed=3)
    assert [s["patched"] for s in spy.seen] == [True] * 5
    assert [s["clock"] for s in spy.seen] == [(i, 5, 0) for i in range(5)]
    assert spy.seen[0]["method"] == "prune" and spy.seen[0]["schedule"] == "balanced"
    assert dato.get_patch(model) is None and harness.runtime().run is None
    assert "DaTo: True" in result.infotexts[0]


def test_disabled_means_untouched_no_keys_and_the_same_image(host, model):
    off_1 = host.generate(steps=4, seed=5)
    on = host.generate(alwayson_scripts=ON, steps=4, seed=5)
    off_2 = host.generate(alwayson_scripts={"dato": {"args": [False, "merge", 0.5]}}, steps=4, seed=5)
    assert torch.equal(image(off_1), image(off_2))
    assert not torch.equal(image(off_1), image(on))
    assert "DaTo" not in off_1.infotexts[0] and "DaTo" not in off_2.infotexts[0]
    assert dato.get_patch(model) is None


def test_every_step_counts_once_when_cond_and_uncond_run_separately(host, model):
    shared.opts.batch_cond_uncond = False
    spy = Spy(model)
    calls = []
    handle = dato.find_unet(model).register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        host.generate(alwayson_scripts=ON, steps=5, seed=1)
    finally:
        handle.remove()
    assert calls == [1] * 10 and [s["clock"][0] for s in spy.seen] == list(range(5))


def test_an_error_mid_sampling_leaves_the_next_generation_unaffected(host, model, capsys):
    reference = host.generate(alwayson_scripts=ON, steps=5, seed=2)
    unet = dato.find_unet(model)
    count = {"n": 0}

    def boom(module, args):
        count["n"] += 1
        if count["n"] == 3:
            raise RuntimeError("simulated out of memory")

    handle = unet.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        host.generate(alwayson_scripts=ON, steps=5, seed=2)
    handle.remove()
    assert dato.get_patch(model) is not None  # postprocess never ran: the WebUI skips it after an exception

    # anything else that calls the UNet now sees the plain model: the guard takes the stale patch off
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 7, 32)
    out = model.apply_model(x, t, c)
    assert dato.get_patch(model) is None
    assert torch.equal(out, model.apply_model(x, t, c))
    assert "outside the generation that armed the patch" in capsys.readouterr().out

    again = host.generate(alwayson_scripts=ON, steps=5, seed=2)
    assert torch.equal(image(again), image(reference))
    baseline = host.generate(steps=5, seed=2)
    assert torch.equal(image(baseline), image(host.generate(steps=5, seed=2)))


def test_the_next_run_removes_a_stale_patch_before_it_starts(host, model, capsys):
    unet = dato.find_unet(model)
    handle = unet.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        host.generate(alwayson_scripts=ON, steps=3, seed=4)
    handle.remove()
    assert dato.get_patch(model) is not None
    spy = Spy(model)
    off = host.generate(steps=3, seed=4)  # disabled run right after: must be the plain model
    assert [s["patched"] for s in spy.seen] == [False] * 3
    assert "its patch was removed before this one" in capsys.readouterr().out
    assert torch.equal(image(off), image(host.generate(steps=3, seed=4)))


def test_an_interrupt_ends_cleanly_and_the_next_run_is_clean(host, model):
    reference = host.generate(alwayson_scripts=ON, steps=5, seed=8)

    def interrupt(params):
        if params.denoiser.step == 2:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(interrupt, name="test_interrupt")
    host.generate(alwayson_scripts=ON, steps=5, seed=8)
    script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
    assert dato.get_patch(model) is None and harness.runtime().run is None
    assert torch.equal(image(host.generate(alwayson_scripts=ON, steps=5, seed=8)), image(reference))


def test_hires_pass_gets_its_own_settings(host, model):
    spy = Spy(model)
    args = [True, "prune", 0.4, "balanced", 5, 0, 2, "own", "merge", 0.3, "uniform", 2, 1]
    result = host.generate(alwayson_scripts={"dato": {"args": args}}, steps=5, seed=1, enable_hr=True,
                           hr_second_pass_steps=4, denoising_strength=0.6)
    first = [s for s in spy.seen if not s["hr"]]
    hires = [s for s in spy.seen if s["hr"]]
    assert {(s["method"], s["schedule"]) for s in first} == {("prune", "balanced")}
    assert {(s["method"], s["schedule"]) for s in hires} == {("merge", "uniform-2-d1")}
    assert [s["clock"] for s in hires] == [(i, 4, 1) for i in range(4)]
    assert {s["max_downsample"] for s in spy.seen} == {2}
    info = result.infotexts[0]
    assert "DaTo hires: own, DaTo hires method: merge, DaTo hires ratio: 0.3, DaTo hires schedule: uniform" in info
    assert dato.get_patch(model) is None


def test_hires_pass_can_be_left_alone(host, model):
    spy = Spy(model)
    args = [True, "prune", 0.4, "balanced", 5, 0, 1, "off"]
    result = host.generate(alwayson_scripts={"dato": {"args": args}}, steps=4, seed=1, enable_hr=True)
    assert all(s["patched"] for s in spy.seen if not s["hr"])
    assert not any(s["patched"] for s in spy.seen if s["hr"]) and any(s["hr"] for s in spy.seen)
    assert "DaTo hires: off" in result.infotexts[0]


def test_same_settings_on_the_hires_pass_resample_to_its_steps(host, model):
    spy = Spy(model)
    host.generate(alwayson_scripts=ON, steps=5, seed=1, enable_hr=True, hr_second_pass_steps=3)
    hires = [s for s in spy.seen if s["hr"]]
    assert [s["clock"] for s in hires] == [(0, 3, 1), (1, 3, 1), (2, 3, 1)]
    assert {s["schedule"] for s in hires} == {"balanced"}


def test_img2img_uses_the_denoisers_step_count(host, model):
    spy = Spy(model)
    result = host.generate("img2img", alwayson_scripts=ON, steps=10, seed=1, denoising_strength=0.5)
    assert [s["clock"] for s in spy.seen] == [(i, 6, 0) for i in range(6)]  # int(0.5 * 10) + 1
    assert "DaTo method: prune" in result.infotexts[0] and dato.get_patch(model) is None


def test_the_webuis_token_merging_keeps_caching_and_says_so(host, model):
    shared.opts.token_merging_ratio = 0.5
    spy = Spy(model)
    result = host.generate(alwayson_scripts=ON, steps=5, seed=1)
    assert all(s["patched"] and s["method"] == "none" for s in spy.seen)
    assert "Token Merging (ratio 0.5) is on" in result.comments
    assert "DaTo method: none" in result.infotexts[0] and "DaTo ratio" not in result.infotexts[0]
    assert "Token merging ratio: 0.5" in result.infotexts[0]
    assert dato.get_patch(model) is None and getattr(model, "applied_token_merged_ratio", 0) == 0
    shared.opts.token_merging_ratio = 0.0
    spy.seen.clear()
    host.generate(alwayson_scripts=ON, steps=3, seed=1)
    assert all(s["method"] == "prune" for s in spy.seen)  # tomesd took its classes back; prune composes again


def test_a_token_patch_by_someone_else_falls_back_to_caching(host, model):
    import tomesd

    tomesd.apply_patch(model, ratio=0.3)  # another extension patched the blocks; the WebUI's setting is 0
    try:
        spy = Spy(model)
        result = host.generate(alwayson_scripts=ON, steps=3, seed=1)
        assert all(s["patched"] and s["method"] == "none" for s in spy.seen)
        assert "token method off for this pass" in result.comments
        assert "DaTo method: none" in result.infotexts[0]
    finally:
        tomesd.remove_patch(model)


def test_model_switch_between_and_during_runs(host, model):
    spy = Spy(model)
    other = harness.make_model(seed=1, name="other")
    host.generate(alwayson_scripts=ON, steps=3, seed=1)
    sd_models.load_model(other)
    spy_other = Spy(other)
    result = host.generate(alwayson_scripts=ON, steps=3, seed=1)
    assert all(s["patched"] for s in spy_other.seen[-3:]) and dato.get_patch(other) is None
    assert "DaTo: True" in result.infotexts[0]

    # a model loaded while a patch is on (e.g. a hires checkpoint, or after an error) takes it off
    dato.apply_patch(other, "balanced", clock="manual")
    rt = harness.runtime()
    rt._unet_ref, rt._patch = __import__("weakref").ref(dato.find_unet(other)), dato.get_patch(other)
    sd_models.load_model(model)
    assert dato.get_patch(other) is None
    assert spy.seen


def test_an_unsupported_model_is_reported_not_crashed(host, model):
    class NotLdm(torch.nn.Module):
        context_dim = 32

        def apply_model(self, x, t, cond):
            return x * 0.9

    shared.sd_model = NotLdm()
    try:
        result = host.generate(alwayson_scripts=ON, steps=2, seed=1)
    finally:
        shared.sd_model = model
    assert "not applied" in result.comments and "Stable Diffusion 1.x/2.x" in result.comments
    assert 'DaTo off: "not applied: sd-webui-dato supports the UNets' in result.infotexts[0]  # said to API callers too
    assert "DaTo: True" not in result.infotexts[0]


def test_invalid_arguments_at_generation_time_run_unaccelerated_with_a_comment(host, model):
    spy = Spy(model)
    result = host.generate(alwayson_scripts={"dato": {"args": [True, "prune", 0.75]}}, steps=2, seed=1)
    assert not any(s["patched"] for s in spy.seen)
    assert "too large for 'prune'" in result.comments and "DaTo: True" not in result.infotexts[0]
    assert "DaTo off: \"not applied: ratio = 0.75 is too large for 'prune'" in result.infotexts[0]
    result = host.generate(alwayson_scripts={"dato": {"args": [True, "prune", 0.4, "no-such-schedule"]}}, steps=2)
    assert "unknown schedule 'no-such-schedule'" in result.comments


def test_a_denoiser_of_another_run_does_not_move_the_clock(host, model):
    from modules.script_callbacks import CFGDenoiserParams

    seen = []

    def foreign(params):
        if params.denoiser.step == 1:
            other = type("D", (), {"p": object(), "step": 7, "total_steps": 9})()
            harness.runtime().on_cfg_denoiser(CFGDenoiserParams(None, None, None, 0, 0, None, None, other))
            seen.append(dato.get_patch(model).clock.step)

    script_callbacks.on_cfg_denoiser(foreign, name="test_foreign")
    host.generate(alwayson_scripts=ON, steps=3, seed=1)
    assert seen == [1]


def test_xyz_axes_are_registered_once_and_apply_per_cell_without_touching_settings(host, model):
    xyz = next(d.module for d in __import__("modules.scripts").scripts.scripts_data
               if d.script_class.__module__ == "xyz_grid.py")
    labels = [o.label for o in xyz.axis_options]
    assert labels.count("[DaTo] Token method") == 1
    assert {"[DaTo] Token ratio", "[DaTo] Cache schedule"} <= set(labels)
    script_callbacks.before_ui_callback()
    assert [o.label for o in xyz.axis_options].count("[DaTo] Token method") == 1

    settings_before = dict(shared.opts.data)
    grid = next(s for s in host.txt2img.scripts if s.title() == "X/Y/Z plot")
    cells = host.generate(script=grid, script_run_args=("[DaTo] Token method", ["Disabled", "ToMe merge"]),
                          steps=3, seed=1)
    assert "DaTo" not in cells[0].infotexts[0]
    assert "DaTo method: merge" in cells[1].infotexts[0]
    ratios = host.generate(script=grid, script_run_args=("[DaTo] Token ratio", ["0.2", "0.5"]), steps=3, seed=1)
    assert "DaTo ratio: 0.2" in ratios[0].infotexts[0] and "DaTo ratio: 0.5" in ratios[1].infotexts[0]
    schedules = host.generate(script=grid, script_run_args=("[DaTo] Cache schedule", ["none", "fast"]), steps=3)
    assert "DaTo schedule: none" in schedules[0].infotexts[0] and "DaTo schedule: fast" in schedules[1].infotexts[0]
    with pytest.raises(RuntimeError, match="unknown schedule 'nope'"):
        host.generate(script=grid, script_run_args=("[DaTo] Cache schedule", ["nope"]), steps=3)
    targets = host.generate(script=grid, script_run_args=("[DaTo] Speed target", ["2", "3"]), steps=10, seed=1,
                            width=64, height=64)
    assert "DaTo speed target: 2.0" in targets[0].infotexts[0] and "DaTo speed target: 3.0" in targets[1].infotexts[0]
    adaptive = host.generate(script=grid, script_run_args=("[DaTo] Adaptive threshold", ["0", "0.5"]), steps=4)
    assert "DaTo adaptive" not in adaptive[0].infotexts[0] and "DaTo adaptive: 0.5" in adaptive[1].infotexts[0]
    with pytest.raises(RuntimeError, match=r"\[DaTo\] argument 18 \(adaptive\) = 2.0: expected a threshold 0..1"):
        host.generate(script=grid, script_run_args=("[DaTo] Adaptive threshold", ["2"]), steps=3)
    assert shared.opts.data == settings_before
    assert dato.get_patch(model) is None


def test_the_patch_is_inert_between_arming_and_the_first_step(host, model):
    """Between process_before_every_sampling and the first on_cfg_denoiser the manual clock keeps it off."""
    outputs = {}
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 5.0]), torch.randn(2, 7, 32)
    plain = model.apply_model(x, t, c)

    class Probe:
        def process_before_every_sampling(self, p, *args, **kwargs):
            outputs["armed"] = dato.get_patch(model) is not None
            outputs["out"] = model.apply_model(x, t, c)

    probe = Probe()
    script = host.script()
    original = type(script).process_before_every_sampling

    def wrapped(self, p, *args, **kwargs):
        original(self, p, *args, **kwargs)
        probe.process_before_every_sampling(p)

    type(script).process_before_every_sampling = wrapped
    try:
        host.generate(alwayson_scripts=ON, steps=3, seed=1)
    finally:
        type(script).process_before_every_sampling = original
    assert outputs["armed"] and torch.equal(outputs["out"], plain)


def test_a_fresh_host_can_load_twice(model, tmp_path):
    harness.fresh_host(model, user_dir=tmp_path)
    h = harness.fresh_host(model, user_dir=tmp_path)
    assert len(script_callbacks.callback_map["callbacks_cfg_denoiser"]) == 1
    assert h.generate(alwayson_scripts=ON, steps=2).infotexts


def test_token_merging_on_the_hires_pass_only_turns_that_pass_to_caching(host, model):
    shared.opts.token_merging_ratio_hr = 0.5
    spy = Spy(model)
    result = host.generate(alwayson_scripts=ON, steps=4, seed=1, enable_hr=True, hr_second_pass_steps=2)
    first = {s["method"] for s in spy.seen if not s["hr"]}
    hires = {s["method"] for s in spy.seen if s["hr"]}
    assert first == {"prune"} and hires == {"none"}
    info = result.infotexts[0]
    assert "DaTo method: prune" in info and "DaTo hires: own, DaTo hires method: none" in info
    assert "hires pass uses caching only" in result.comments


def test_a_speed_target_picks_its_schedule_at_the_runs_step_count_and_says_so(host, model):
    from dato.core.macs import trace_unet_cost
    from dato.core.speed import expected_speedup

    spy = Spy(model)
    chosen = []
    script_callbacks.on_cfg_denoiser(lambda params: chosen.append(dato.get_patch(model).schedule), name="test_t")
    result = host.generate(alwayson_scripts={"dato": {"args": [{"speed_target": 3}]}}, steps=10, seed=1,
                           width=64, height=64)
    assert [s["patched"] for s in spy.seen] == [True] * 10 and {s["schedule"] for s in spy.seen} == {"target-3x"}
    assert expected_speedup(trace_unet_cost(model), chosen[0], 8, 8) >= 3
    assert f"DaTo speed target hash: {chosen[0].content_hash()}" in result.infotexts[0]
    assert "DaTo speed target: 3.0" in result.infotexts[0]
    assert dato.get_patch(model) is None


def test_adaptive_caching_decides_each_step_during_the_run_and_is_recorded(host, model, capsys):
    """API arguments 18-19: run-time caching replaces the schedule's cells, and the infotext says so."""
    decisions = []
    script_callbacks.on_cfg_denoiser(lambda params: decisions.append(dato.get_patch(model).options), name="test_a")
    off = host.generate(steps=12, seed=2, width=64, height=64)
    capsys.readouterr()
    args = {"dato": {"args": [{"schedule": "none", "method": "none", "adaptive": 0.9, "adaptive_cap": 2}]}}
    result = host.generate(alwayson_scripts=args, steps=12, seed=2, width=64, height=64)
    assert {(o.adaptive, o.adaptive_cap, o.adaptive_depth) for o in decisions[-12:]} == {(0.9, 2, 0)}
    counts = capsys.readouterr().out.split("first pass: ", 1)[1].split("\n", 1)[0]
    assert counts == "12 UNet calls, 4 full, 8 cached, 0 reused", counts  # threshold 0.9: cached up to the cap
    assert not torch.equal(image(result), image(off)) and dato.get_patch(model) is None
    infotext = result.infotexts[0]
    assert "DaTo adaptive: 0.9" in infotext and "DaTo adaptive cap: 2" in infotext


def test_adaptive_with_a_speed_target_is_refused_before_the_run(host, model):
    spy = Spy(model)
    result = host.generate(alwayson_scripts={"dato": {"args": [{"speed_target": 3, "adaptive": 0.2}]}}, steps=4)
    assert not any(s["patched"] for s in spy.seen)
    assert "speed_target = 3 and adaptive = 0.2: use one of the two" in result.comments


def test_an_unreachable_speed_target_runs_unaccelerated_and_names_the_nearest(host, model):
    spy = Spy(model)
    result = host.generate(alwayson_scripts={"dato": {"args": [{"speed_target": 90}]}}, steps=4, seed=1)
    assert not any(s["patched"] for s in spy.seen)
    assert "speed target 90x unreachable at 4 steps; nearest reachable" in result.comments
    infotext = result.infotexts[0]  # an API caller can tell it asked for acceleration and got none
    assert "DaTo: True" in infotext and "DaTo speed target: 90.0" in infotext
    assert "DaTo off: speed target 90x unreachable at 4 steps; nearest reachable " in infotext
