"""Adaptive caching at run time (issue 10): exact at threshold 0, capped, and replayable as a static schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import dato
from dato.core.schedule import FULL, Schedule, ScheduleError

T = [999.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0]


def drift_steps(unet, x, context, steps, drift):
    """One UNet call per step, the input moving by ``drift[i]`` (a stand-in for a sampler's trajectory)."""
    outs = []
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((x.shape[0],), T[i])
            outs.append(unet(x * (1 + drift[i]), t, context=context))
    return outs


DRIFT = [0.0, 0.001, 0.002, 0.2, 0.201, 0.4, 0.401, 0.402, 0.403, 0.404]


def test_threshold_zero_runs_every_step_full_bit_identical(unet):
    x, c = make_inputs()
    dato.remove_patch(unet)
    ref = drift_steps(unet, x, c, 10, DRIFT)
    patch = dato.apply_patch(unet, None, method="none", steps=10, adaptive=0.0)
    out = drift_steps(unet, x, c, 10, DRIFT)
    assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=True))
    assert patch.stats["full"] == 10 and patch.stats["cached"] == 0
    assert [a for _, a in patch.decisions] == [FULL] * 10


def test_small_changes_are_cached_large_ones_refresh_and_the_cap_holds(unet):
    x, c = make_inputs()
    patch = dato.apply_patch(unet, None, method="none", steps=10, adaptive=0.05, adaptive_cap=2)
    drift_steps(unet, x, c, 10, DRIFT)
    # 0 full; 1, 2 barely moved -> cached; 3 moved 20 % -> full; 4 cached; 5 full; 6, 7 cached; 8 cap -> full; 9
    assert "".join("F" if a == FULL else str(a) for _, a in patch.decisions) == "F00F0F00F0"
    assert patch.stats == {"calls": 10, "full": 4, "cached": 6, "reuse": 0}


def test_adaptive_decisions_replayed_as_a_static_schedule_give_the_same_output(unet):
    x, c = make_inputs()
    patch = dato.apply_patch(unet, None, method="none", steps=10, adaptive=0.05, adaptive_cap=2, adaptive_depth=1)
    adaptive = drift_steps(unet, x, c, 10, DRIFT)
    actions = tuple(a for _, a in patch.decisions)
    assert 1 in actions and FULL in actions[1:]
    dato.apply_patch(unet, Schedule("replay", actions, (0.0,) * 10, "none"), steps=10)
    static = drift_steps(unet, x, c, 10, DRIFT)
    assert all(torch.equal(a, b) for a, b in zip(adaptive, static, strict=True))


def test_removal_leaves_nothing_behind(unet):
    from test_patch import module_state

    before = module_state(unet)
    dato.apply_patch(unet, "balanced", adaptive=0.1)
    dato.remove_patch(unet)
    assert module_state(unet) == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"adaptive": -0.1}, r"adaptive = -0.1, expected a threshold >= 0 \(or None = off\)"),
    ({"adaptive": float("nan")}, r"adaptive = nan, expected a threshold"),
    ({"adaptive": "0.1"}, r"adaptive = '0.1', expected a threshold"),
    ({"adaptive": 0.1, "adaptive_cap": 0}, r"adaptive_cap = 0, expected an integer >= 1"),
    ({"adaptive": 0.1, "adaptive_depth": 99}, r"cache depth 99 is outside 0..11"),
])
def test_bad_adaptive_options_name_the_option(unet, kwargs, message):
    with pytest.raises((ScheduleError, ValueError), match=message):
        dato.apply_patch(unet, None, method="none", **kwargs)
    assert dato.get_patch(unet) is None
