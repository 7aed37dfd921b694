"""apply_patch / remove_patch on a real ldm UNet: exactness first, then every call pattern a sampler makes."""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import UNetHolder, make_inputs
from ldm.modules.diffusionmodules.util import timestep_embedding

import dato
from dato.core.layout import UNetLayout, UnsupportedModelError, block_modules
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError

T = [999.0, 800.0, 600.0, 400.0, 200.0, 100.0, 50.0, 10.0]


def run_steps(unet, x, context, steps, manual=False, pass_index=0):
    """One UNet call per step at decreasing timesteps; returns the outputs."""
    outs = []
    with torch.no_grad():
        for i in range(steps):
            if manual:
                dato.set_step(unet, i, steps, pass_index)
            t = torch.full((x.shape[0],), T[i % len(T)])
            outs.append(unet(x, t, context=context))
    return outs


def baseline(unet, x, context, steps):
    dato.remove_patch(unet)
    return run_steps(unet, x, context, steps)


def module_state(unet):
    """Everything a patch could leave behind: instance attributes and hook dicts of every module."""
    state = []
    for name, m in unet.named_modules():
        hooks = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs),
                 len(m._forward_pre_hooks_with_kwargs))
        extra = sorted(k for k in vars(m) if k in ("forward", "_forward", "_dato_patch"))
        state.append((name, type(m).__name__, hooks, tuple(extra)))
    return state


# ---------------------------------------------------------------- exactness

def test_nothing_scheduled_is_bit_identical(unet):
    x, c = make_inputs()
    ref = baseline(unet, x, c, 4)
    dato.apply_patch(unet, None, steps=4)
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(unet, x, c, 4), strict=True))


@pytest.mark.parametrize("method", ["prune", "merge", "downsample"])
def test_ratio_zero_with_an_all_full_schedule_is_bit_identical(unet, method):
    x, c = make_inputs()
    ref = baseline(unet, x, c, 3)
    dato.apply_patch(unet, Schedule.full(3, 0.0, method))
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(unet, x, c, 3), strict=True))


def test_full_steps_stay_exact_when_the_schedule_also_caches(unet):
    x, c = make_inputs()
    ref = baseline(unet, x, c, 4)
    dato.apply_patch(unet, Schedule("s", (FULL, 0, FULL, 3), (0.0,) * 4, "none"))
    out = run_steps(unet, x, c, 4)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])
    assert not torch.equal(out[1], ref[1])


def test_remove_patch_restores_the_unet_exactly(unet):
    before = module_state(unet)
    x, c = make_inputs()
    ref = baseline(unet, x, c, 3)
    dato.apply_patch(unet, Schedule.uniform(3, 2, 1, 0.5, "prune"))
    run_steps(unet, x, c, 3)
    assert module_state(unet) != before
    assert dato.remove_patch(unet) is True
    assert module_state(unet) == before
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(unet, x, c, 3), strict=True))
    assert dato.remove_patch(unet) is False


def reference_cached_step(unet, x, t, context, depth, stored_h, y=None):
    """DeepCache's cached step written out by hand on the UNet's own blocks (``y``: SDXL's size vector)."""
    n = len(unet.input_blocks)
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    if y is not None:
        emb = emb + unet.label_emb(y)
    h, hs = x, []
    for k in range(depth + 1):
        h = unet.input_blocks[k](h, emb, context)
        hs.append(h)
    h = stored_h
    for j in range(n - 1 - depth, n):
        h = unet.output_blocks[j](torch.cat([h, hs.pop()], dim=1), emb, context)
    return unet.out(h)


@pytest.mark.parametrize("depth", [0, 1, 5, 10, 11])
def test_a_cached_step_equals_the_hand_built_reference(unet, depth):
    x, c = make_inputs()
    n = len(unet.input_blocks)
    feature = unet.middle_block if depth == n - 1 else unet.output_blocks[n - 2 - depth]
    stored = {}
    handle = feature.register_forward_hook(lambda m, a, out: stored.__setitem__("h", out))
    with torch.no_grad():
        unet(x, torch.full((2,), 999.0), context=c)
    handle.remove()
    x2 = torch.randn_like(x)
    with torch.no_grad():
        want = reference_cached_step(unet, x2, torch.full((2,), 800.0), c, depth, stored["h"])
    dato.apply_patch(unet, Schedule("s", (FULL, depth), (0.0, 0.0), "none"))
    with torch.no_grad():
        unet(x, torch.full((2,), 999.0), context=c)
        got = unet(x2, torch.full((2,), 800.0), context=c)
    assert torch.equal(got, want)


def test_reuse_returns_the_previous_output_whole(unet):
    x, c = make_inputs()
    dato.apply_patch(unet, Schedule("s", (FULL, 0, REUSE), (0.0,) * 3, "none"))
    out = run_steps(unet, x, c, 3)
    assert torch.equal(out[2], out[1]) and out[2] is not out[1]
    assert dato.get_patch(unet).stats == {"calls": 3, "full": 1, "cached": 1, "reuse": 1}


# ------------------------------------------------------------ call patterns

@pytest.mark.parametrize("method", ["prune", "merge", "downsample", "none"])
@pytest.mark.parametrize("shape", [(2, 16, 24), (3, 16, 16), (1, 24, 16)])
def test_every_method_runs_on_non_square_latents_and_odd_batches(unet, method, shape):
    batch, h, w = shape
    x, c = make_inputs(batch, h, w)
    ref = baseline(unet, x, c, 4)
    dato.apply_patch(unet, Schedule.uniform(4, 2, 1, 0.5 if method != "none" else 0.0, method))
    out = run_steps(unet, x, c, 4)
    for a, b in zip(ref, out, strict=True):
        assert a.shape == b.shape and torch.isfinite(b).all()
    assert torch.allclose(out[0], ref[0], atol=0.25) and not torch.equal(out[1], ref[1])


def test_odd_token_grids_work_with_the_webui_resizing_cat(unet, monkeypatch):
    """A1111 lets latents be multiples of 1 (not 8) by resizing in torch.cat; token grids are then odd."""
    from ldm.modules.diffusionmodules import openaimodel

    class ResizingCat:
        def __getattr__(self, item):
            return getattr(torch, item)

        @staticmethod
        def cat(tensors, *args, **kwargs):
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            return torch.cat((a, b), *args, **kwargs)

    monkeypatch.setattr(openaimodel, "th", ResizingCat())
    x, c = make_inputs(2, 13, 11)
    for method in ("prune", "merge", "downsample"):
        dato.apply_patch(unet, Schedule.uniform(4, 2, 0, 0.6, method), max_downsample=4)
        out = run_steps(unet, x, c, 4)
        assert out[-1].shape == x.shape and torch.isfinite(out[-1]).all()


def test_separate_cond_and_uncond_calls_match_one_batched_call(unet):
    x, c = make_inputs(2)
    schedule = Schedule.uniform(6, 3, 1, 0.0, "none")
    dato.apply_patch(unet, schedule, clock="manual")
    batched = run_steps(unet, x, c, 6, manual=True)
    dato.apply_patch(unet, schedule, clock="manual")
    split = []
    with torch.no_grad():
        for i in range(6):
            dato.set_step(unet, i, 6)
            t = torch.full((1,), T[i])
            halves = [unet(x[k:k + 1], t, context=c[k:k + 1]) for k in (0, 1)]
            split.append(torch.cat(halves))
    for a, b in zip(batched, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert dato.get_patch(unet).stats["cached"] == 8


def test_second_order_calls_keep_separate_caches_per_call_in_a_step(unet):
    """Heun calls the model twice per step; each call's stream must only see its own features."""
    x, c = make_inputs(2)
    x_b = torch.randn_like(x)
    schedule = Schedule.uniform(4, 2, 0, 0.0, "none")
    dato.apply_patch(unet, schedule, clock="manual")
    first, second = [], []
    with torch.no_grad():
        for i in range(4):
            dato.set_step(unet, i, 4)
            first.append(unet(x, torch.full((2,), T[i]), context=c))
            dato.set_step(unet, i, 4)  # the WebUI reports the same step for the second evaluation
            second.append(unet(x_b, torch.full((2,), T[i + 1]), context=c))
    dato.apply_patch(unet, schedule, clock="manual")
    alone = []
    with torch.no_grad():
        for i in range(4):
            dato.set_step(unet, i, 4)
            alone.append(unet(x_b, torch.full((2,), T[i + 1]), context=c))
    # the second stream at cached steps reads the second stream's features, not the first's
    for got, want in zip(second, alone, strict=True):
        assert torch.equal(got, want)


def test_schedules_resample_to_the_step_count_the_sampler_reports(unet):
    x, c = make_inputs(1)
    preset = dato.load_schedule("fast")
    dato.apply_patch(unet, preset, clock="manual")
    run_steps(unet, x, c, 20, manual=True)
    expected = preset.resample(20)
    stats = dato.get_patch(unet).stats
    assert stats["full"] == expected.full_steps
    assert stats["reuse"] == expected.cache.count(REUSE)


def test_auto_clock_derives_steps_and_passes_from_timesteps(unet):
    x, c = make_inputs(1)
    dato.apply_patch(unet, Schedule.uniform(4, 2, 0, 0.0, "none"))
    run_steps(unet, x, c, 4)
    run_steps(unet, x, c, 4)  # timesteps jump back up: a new pass starts full
    assert dato.get_patch(unet).stats == {"calls": 8, "full": 4, "cached": 4, "reuse": 0}


def test_manual_clock_is_inert_until_set_and_after_clear(unet):
    x, c = make_inputs(1)
    ref = baseline(unet, x, c, 2)
    dato.apply_patch(unet, Schedule.uniform(2, 2, 0, 0.5, "prune"), clock="manual")
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(unet, x, c, 2), strict=True))
    run_steps(unet, x, c, 2, manual=True)
    dato.clear_step(unet)
    assert all(torch.equal(a, b) for a, b in zip(ref, run_steps(unet, x, c, 2), strict=True))


def test_a_new_pass_at_another_size_starts_with_a_full_step(unet):
    """Hires fix: second pass, bigger latent; nothing of the first pass is read."""
    x, c = make_inputs(1)
    dato.apply_patch(unet, Schedule.uniform(4, 4, 0, 0.0, "none"), clock="manual")
    run_steps(unet, x, c, 4, manual=True)
    big, _ = make_inputs(1, 24, 24)
    ref = baseline(unet, big, c, 1)[0]
    dato.apply_patch(unet, Schedule.uniform(4, 4, 0, 0.0, "none"), clock="manual")
    run_steps(unet, x, c, 4, manual=True)
    hires = run_steps(unet, big, c, 2, manual=True, pass_index=1)
    assert torch.equal(hires[0], ref)


def test_an_exception_mid_forward_leaves_the_patch_removable_and_the_unet_exact(unet):
    x, c = make_inputs(1)
    ref = baseline(unet, x, c, 1)[0]
    before = module_state(unet)
    dato.apply_patch(unet, Schedule.uniform(4, 2, 0, 0.5, "prune"))
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            unet(x, torch.full((1,), 999.0), context=torch.randn(1, 3, 5))  # wrong context width
    dato.remove_patch(unet)
    assert module_state(unet) == before
    with torch.no_grad():
        assert torch.equal(unet(x, torch.full((1,), 999.0), context=c), ref)


def test_applying_twice_replaces_instead_of_stacking(unet):
    dato.apply_patch(unet, "balanced")
    dato.apply_patch(unet, "fast")
    assert len(unet._forward_pre_hooks) == 1
    assert dato.get_patch(unet).schedule.name == "fast"


def test_a_wrapper_put_on_top_survives_removal_and_ours_turns_inert(unet):
    x, c = make_inputs(1)
    ref = baseline(unet, x, c, 2)
    dato.apply_patch(unet, Schedule.uniform(2, 2, 0, 0.0, "none"))
    block = unet.output_blocks[11]
    inner = block.forward
    calls = []

    def theirs(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    block.forward = theirs
    dato.remove_patch(unet)
    out = run_steps(unet, x, c, 2)
    assert block.forward is theirs and len(calls) == 2
    assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=True))
    del block.forward


def test_thousand_apply_remove_cycles_leave_nothing_behind(unet):
    before = module_state(unet)
    gc.collect()
    objects_before = len(gc.get_objects())
    for _ in range(1000):
        dato.apply_patch(unet, "balanced", method="prune")
        dato.remove_patch(unet)
    gc.collect()
    assert module_state(unet) == before
    assert len(gc.get_objects()) - objects_before < 200


# ------------------------------------------------------------ coexistence & errors

def test_model_holders_are_accepted(unet):
    holder = UNetHolder(unet)
    dato.apply_patch(holder, "balanced")
    assert dato.get_patch(unet) is dato.get_patch(holder) is not None
    dato.remove_patch(holder)
    assert dato.get_patch(unet) is None


def test_unsupported_models_get_a_clear_error():
    with pytest.raises(UnsupportedModelError, match=r"\(ldm\) and SDXL \(sgm\) only; got torch.nn.modules.linear"):
        dato.apply_patch(torch.nn.Linear(2, 2))
    empty = type("UNetModel", (torch.nn.Module,), {"__module__": "sgm.modules.diffusionmodules.openaimodel"})()
    empty.input_blocks = torch.nn.ModuleList()
    with pytest.raises(UnsupportedModelError, match="SDXL \\(sgm\\) only; got sgm.modules"):
        dato.apply_patch(empty)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "fastest"}, "method = 'fastest'"),
    ({"max_downsample": 3}, "max_downsample = 3"),
    ({"clock": "wall"}, "clock = 'wall'"),
    ({"ratio": 0.9}, "ratio = 0.9: 'prune' needs 0 <= r < 0.75"),
    ({"steps": 0}, "steps = 0"),
    ({"noise_alpha": -1.0}, "noise_alpha = -1.0"),
    ({"seed": "x"}, "seed = 'x'"),
])
def test_invalid_options_name_the_option_and_value(unet, kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        dato.apply_patch(unet, "balanced", **kwargs)
    assert dato.get_patch(unet) is None


def test_a_depth_the_unet_does_not_have_is_refused(unet):
    with pytest.raises(ValueError, match="cache depth 12 is outside 0..11"):
        dato.apply_patch(unet, Schedule("deep", (FULL, 12), (0.0, 0.0), "none"))
    assert dato.get_patch(unet) is None


def test_set_step_validates(unet):
    dato.apply_patch(unet, "balanced", clock="manual")
    with pytest.raises(ValueError, match="step = -1"):
        dato.set_step(unet, -1, 10)


def test_tomesd_on_the_blocks_refuses_token_methods_but_composes_with_caching(tiny_unet):
    tomesd = pytest.importorskip("tomesd")
    unet = tiny_unet
    holder = UNetHolder(unet)
    x, c = make_inputs(2)
    tomesd.apply_patch(holder, ratio=0.5, use_rand=False)
    try:
        with_tome = run_steps(unet, x, c, 2)
        with pytest.raises(dato.PatchConflictError, match="tomesd"):
            dato.apply_patch(unet, "balanced", method="prune")
        assert dato.get_patch(unet) is None
        dato.apply_patch(unet, Schedule.uniform(2, 2, 0, 0.0, "none"))
        out = run_steps(unet, x, c, 2)
        assert torch.equal(out[0], with_tome[0])
        dato.remove_patch(unet)
        assert type(unet.input_blocks[1][1].transformer_blocks[0]).__name__ == "ToMeBlock"
    finally:
        tomesd.remove_patch(holder)
        dato.remove_patch(unet)


def test_layout_of_the_sd1_topology(tiny_unet):
    layout = UNetLayout.from_unet(tiny_unet)
    assert layout.max_depth == 11
    assert layout.input_ds == (1, 1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8)
    assert layout.output_ds == (8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1)
    assert layout.skipped_blocks(9) == ("input.10", "input.11", "middle", "output.0", "output.1")
    assert layout.cached_feature_block(0) == "output.10"
    assert set(block_modules(tiny_unet)) == set(layout.all_blocks()) | {"out"}


def test_sd2_style_unets_work_too():
    """SD2.x uses the same ldm classes with linear proj_in/out and head-width attention."""
    from dato.evaluation.models import build_unet, tiny_unet_config

    config = tiny_unet_config() | {"use_linear_in_transformer": True}
    sd2 = build_unet(config, seed=3)
    x, c = make_inputs(2)
    ref = run_steps(sd2, x, c, 4)
    for method in ("prune", "merge", "downsample"):
        dato.apply_patch(sd2, Schedule.uniform(4, 2, 0, 0.5, method))
        out = run_steps(sd2, x, c, 4)
        dato.remove_patch(sd2)
        assert torch.equal(run_steps(sd2, x, c, 1)[0], ref[0])
        assert out[-1].shape == ref[-1].shape and not torch.equal(out[1], ref[1])
