"""``downsample`` against the ToDo extension (feffy380/sd-webui-token-downsampling), and the MPS-safe gather.

The extension's grid, written out from its source: at a level with downsample
``ds`` the token grid is ``h // ds x w // ds`` and keys/values come from an
``int(cur / factor)`` grid (truncation); token downsampling stops once the step
count passes ``int(disable_after * steps)``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import dato
from dato.core import tokens
from dato.core.macs import trace_unet_cost
from dato.core.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def todo_extension_size(height: int, width: int, ds: int, factor: float) -> tuple[int, int]:
    cur_h, cur_w = height // ds, width // ds
    return int(cur_h / factor), int(cur_w / factor)


@pytest.mark.parametrize("factor", [1.5, 2, 3, 4])
@pytest.mark.parametrize("latent", [(64, 64), (96, 64), (40, 56)])
def test_downsample_grid_equals_the_todo_extension(factor, latent):
    for ds in (1, 2):
        grid = (latent[0] // ds, latent[1] // ds)
        plan = tokens.downsample_plan(grid, 0.5, factor)
        assert plan.size == todo_extension_size(*latent, ds, factor)
    assert tokens.downsample_plan((64, 64), 0.5, 1.5).size == (42, 42)  # the ratio path rounds to 43


def _recorded_sizes(unet, monkeypatch, **options):
    sizes = []
    original = tokens.downsample_plan

    def spy(grid, ratio, factor=None):
        plan = original(grid, ratio, factor)
        sizes.append((grid, None if plan is None else plan.size))
        return plan

    monkeypatch.setattr(tokens, "downsample_plan", spy)
    x, c = make_inputs(2, 32, 32)
    dato.apply_patch(unet, Schedule.full(4, 0.5, "downsample"), clock="manual", **options)
    with torch.no_grad():
        for step in range(4):
            dato.set_step(unet, step, 4)
            unet(x, torch.full((2,), 900.0 - 100 * step), context=c)
            sizes.append(("step", step))
    return sizes


def test_a_factor_per_level_and_stop_after_on_the_unet(unet, monkeypatch):
    sizes = _recorded_sizes(unet, monkeypatch, max_downsample=2, downsample_factor=3, downsample_factor2=1.5,
                            downsample_stop=0.5)
    per_step, current = {}, []
    for item in sizes:
        if item[0] == "step":
            per_step[item[1]], current = current, []
        else:
            current.append(item)
    assert per_step[0] == [((32, 32), (10, 10)), ((16, 16), (10, 10))]
    assert per_step[1] == per_step[0]
    assert per_step[2] == per_step[3] == []  # stopped after half the steps: plain attention


def test_stop_after_zero_keeps_the_unet_exact(unet):
    x, c = make_inputs(2)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        want = unet(x, t, context=c)
        dato.apply_patch(unet, Schedule.full(1, 0.5, "downsample"), downsample_factor=2, downsample_stop=0.0)
        got = unet(x, t, context=c)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kwargs,message", [
    ({"downsample_factor": 0.5}, "downsample_factor = 0.5"),
    ({"downsample_factor2": "2"}, "downsample_factor2 = '2'"),
    ({"downsample_factor": float("nan")}, "downsample_factor = nan"),
    ({"downsample_stop": 1.5}, "downsample_stop = 1.5"),
    ({"downsample_stop": -0.1}, "downsample_stop = -0.1"),
])
def test_bad_downsample_options_name_the_option_and_value(unet, kwargs, message):
    with pytest.raises(dato.ScheduleError, match=message):
        dato.apply_patch(unet, Schedule.full(1, 0.5, "downsample"), **kwargs)
    assert dato.get_patch(unet) is None


def test_macs_follow_the_todo_grid_and_the_stop(tiny_unet):
    cost = trace_unet_cost(tiny_unet, context_len=7)
    full = cost.call_macs(64, 64)
    f2 = cost.call_macs(64, 64, ratio=0.5, method="downsample", downsample_factors=(2, 0))
    r75 = cost.call_macs(64, 64, ratio=0.75, method="downsample")
    assert f2 == r75 < full  # factor 2 = ratio 0.75
    f15 = cost.call_macs(64, 64, ratio=0.5, method="downsample", downsample_factors=(1.5, 0))
    kv_ratio = cost.call_macs(64, 64, ratio=1 - (43 / 64) ** 2, method="downsample")
    assert f15 < kv_ratio  # 42x42 keys (truncation) against 43x43 (rounding)
    s = Schedule.full(4, 0.5, "downsample")
    stopped = cost.schedule_macs(s, 64, 64, downsample_factors=(2, 0), downsample_stop=0.5)
    assert stopped == 2 * f2 + 2 * full


def test_faithful_prune_macs_count_the_restoration(tiny_unet):
    cost = trace_unet_cost(tiny_unet, context_len=7)
    shared = cost.call_macs(64, 64, ratio=0.5, method="prune", prune_variant="shared-plan")
    base = cost.call_macs(64, 64, ratio=0.5, method="prune", prune_variant="base-restore")
    faithful = cost.call_macs(64, 64, ratio=0.5, method="prune", prune_variant="faithful")
    assert shared < base < faithful < cost.call_macs(64, 64)


# ------------------------------------------------------------------ MPS-safe gather

@pytest.mark.parametrize("shape,dim,index_shape", [((2, 9, 5), 1, (2, 4, 5)), ((3, 6, 4), 2, (3, 6, 1)),
                                                  ((2, 7), 1, (2, 3)), ((4, 1), 1, (4, 1))])
def test_the_gather_fallback_equals_torch_gather(monkeypatch, shape, dim, index_shape):
    x = torch.randn(*shape)
    index = torch.randint(shape[dim], index_shape)
    monkeypatch.setattr(tokens, "FORCE_GATHER_FALLBACK", True)
    assert torch.equal(tokens.gather(x, dim, index), torch.gather(x, dim, index))


@pytest.mark.parametrize("method,variant", [("prune", "faithful"), ("prune", "shared-plan"), ("merge", "faithful")])
def test_token_methods_give_identical_results_through_the_fallback(unet, monkeypatch, method, variant):
    x, c = make_inputs(3, 16, 24)
    outs = []
    for forced in (False, True):
        monkeypatch.setattr(tokens, "FORCE_GATHER_FALLBACK", forced)
        dato.apply_patch(unet, Schedule.full(3, 0.5, method), prune_variant=variant, seed=2)
        with torch.no_grad():
            outs.append([unet(x, torch.full((3,), t), context=c) for t in (900.0, 800.0, 700.0)])
        dato.remove_patch(unet)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
