"""SmoothCache-style calibration: the recorder measures what it says, the threshold rule is the documented one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_inputs

from dato.core.layout import UNetLayout, block_modules
from dato.core.patch import apply_patch, get_patch, remove_patch
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError
from dato.evaluation.sampling import sample
from dato.generators.calibrate import (
    OUTPUT_UNIT,
    Calibration,
    CalibrationRecorder,
    alpha_range,
    calibrate,
    relative_l1,
    schedule_from_calibration,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NAN = math.nan


def table(steps: int, lookahead: int, max_depth: int, fill: float = 1.0, **rows) -> Calibration:
    """A calibration with every error ``fill`` except the units given as ``{unit: {(s, j): e}}``."""
    units = [f"depth{d}" for d in range(max_depth + 1)] + [OUTPUT_UNIT]
    errors = {}
    for unit in units:
        grid = [[fill if s + j + 1 < steps else NAN for j in range(lookahead)] for s in range(steps)]
        for (s, j), e in rows.get(unit, {}).items():
            grid[s][j - 1] = e
        errors[unit] = grid
    return Calibration(steps, lookahead, max_depth, errors)


# ------------------------------------------------------------- the threshold rule, hand-computed
def test_hand_computed_schedule():
    # 8 steps, lookahead 2, depths 0..1. Errors (everything else 1.0, i.e. never below alpha 0.1):
    #   output: reuse step 1 from step 0 is cheap (0.05), step 2 from 0 is not (0.3)
    #   depth0: feature of step 2 reused at 3 and 4 (0.02, 0.08); from 4 at 5 too big, depth1 from 4 at 5 ok
    cal = table(8, 2, 1, output={(0, 1): 0.05, (0, 2): 0.3},
                depth0={(2, 1): 0.02, (2, 2): 0.08, (4, 1): 0.5, (5, 1): 0.09},
                depth1={(4, 1): 0.07})
    s = schedule_from_calibration(cal, 0.1)
    # step 0 full; 1 reuse (output 0->1 = 0.05); 2: output 0->2 = 0.3, depth0 from 0 = 1.0 -> full;
    # 3: depth0 2->3 = 0.02 -> depth 0 (output computed at 3); 4: output 3->4 = 1.0, depth0 2->4 = 0.08 -> 0;
    # 5: depth0 from 2 is 3 steps back (> lookahead), depth1 2->5 too -> full; 6: depth0 5->6 = 0.09 -> 0;
    # 7: last step -> full.
    assert s.cache == (FULL, REUSE, FULL, 0, 0, FULL, 0, FULL)
    assert s.ratio == (0.0,) * 8 and s.method == "none"
    assert s.provenance["generator"] == "calibration" and s.provenance["alpha"] == 0.1
    s.validate()


def test_cached_step_refreshes_shallower_features():
    # a depth-1 step computes the depth-0 feature, so the next depth-0 step compares with it
    cal = table(6, 3, 1, depth1={(0, 1): 0.01}, depth0={(1, 1): 0.02, (0, 2): 0.9})
    s = schedule_from_calibration(cal, 0.05, allow_reuse=False)
    assert s.cache[:3] == (FULL, 1, 0)


def test_alpha_zero_is_all_full():
    cal = table(10, 3, 2, fill=0.0)  # even zero error is not below alpha 0
    assert schedule_from_calibration(cal, 0.0).cache == (FULL,) * 10


def test_large_alpha_gives_the_coarsest_schedule():
    cal = table(10, 3, 2, fill=0.4)
    assert schedule_from_calibration(cal, 1e9).preview() == "FRRRFRRRFF"
    assert schedule_from_calibration(cal, 1e9, allow_reuse=False).preview() == "F000F000FF"
    assert schedule_from_calibration(cal, 1e9, allow_reuse=False, max_depth=-1).cache == (FULL,) * 10


def test_every_reused_feature_is_within_alpha_of_its_source():
    cal = table(12, 3, 3, fill=0.5)
    gen = torch.Generator().manual_seed(0)
    for grid in cal.errors.values():
        for row in grid:
            for j in range(len(row)):
                if not math.isnan(row[j]):
                    row[j] = float(torch.rand((), generator=gen)) * (1 + j)
    for alpha in (0.2, 0.5, 1.0, 2.0):
        s = schedule_from_calibration(cal, alpha)
        feature_from, output_from = [0] * 4, 0
        for t, action in enumerate(s.cache[1:], 1):
            if action == REUSE:
                assert cal.error(OUTPUT_UNIT, output_from, t - output_from) < alpha
                continue
            if action >= 0:
                assert cal.error(f"depth{action}", feature_from[action], t - feature_from[action]) < alpha
            output_from = t
            for d in range(4 if action == FULL else action):
                feature_from[d] = t
        assert s.cache[-1] == FULL


@pytest.mark.parametrize("alpha", [-0.1, math.nan, math.inf, "0.1", True])
def test_bad_alpha(alpha):
    with pytest.raises(ScheduleError, match="alpha"):
        schedule_from_calibration(table(5, 2, 1), alpha)


def test_bad_max_depth():
    with pytest.raises(ScheduleError, match="max_depth = 5"):
        schedule_from_calibration(table(5, 2, 1), 0.1, max_depth=5)


def test_round_trip_json_keeps_nan():
    cal = table(5, 2, 1, fill=0.25)
    cal.info["prompts"] = ["a", "b"]
    back = Calibration.from_dict(__import__("json").loads(cal.to_json()))
    assert back.steps == 5 and back.lookahead == 2 and back.info == {"prompts": ["a", "b"]}
    assert back.error("depth0", 0, 1) == 0.25 and math.isnan(back.error("depth0", 4, 1))
    assert back.error("depth0", 0, 3) == math.inf  # beyond the lookahead: never reusable
    assert alpha_range(back) == (0.25, 0.25)


# ------------------------------------------------------------- the recorder on a real ldm UNet
def test_relative_l1_per_item():
    a = torch.tensor([[1.0, -1.0], [2.0, 2.0]])
    b = torch.tensor([[1.5, -1.0], [2.0, 2.0]])
    assert relative_l1(a, b).tolist() == [0.25, 0.0]


def test_identical_steps_have_zero_error_and_changes_show(tiny_unet):
    # known error profile: the input is the same for steps 0-2 and changes at step 3
    x, context = make_inputs(batch=2)
    x2 = x + 0.5
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad(), CalibrationRecorder(tiny_unet, steps=5, lookahead=2) as rec:
        for step, inp in enumerate([x, x, x, x2, x2]):
            rec.set_step(step, 5)
            tiny_unet(inp, t, context=context)
    cal = rec.result()
    for unit in cal.errors:
        assert cal.error(unit, 0, 1) == 0.0 and cal.error(unit, 0, 2) == 0.0 and cal.error(unit, 3, 1) == 0.0
        assert cal.error(unit, 2, 1) > 0 and cal.error(unit, 1, 2) > 0
        assert math.isnan(cal.error(unit, 4, 1))
    # so any alpha > 0 reuses the whole output within segments and computes where the input jumps
    assert schedule_from_calibration(cal, 1e-9).cache == (FULL, REUSE, REUSE, FULL, FULL)


def test_recorded_errors_match_a_hand_computation(tiny_unet):
    layout = UNetLayout.from_unet(tiny_unet)
    x, context = make_inputs(batch=2, seed=3)
    ts = [torch.full((2,), v) for v in (900.0, 700.0, 500.0, 300.0)]
    inputs = [x * (1 - 0.2 * i) for i in range(4)]
    seen: dict[int, torch.Tensor] = {}
    role = layout.cached_feature_block(1)
    handle = block_modules(tiny_unet)[role].register_forward_hook(lambda m, a, o: seen.__setitem__(len(seen), o))
    with torch.no_grad():
        try:
            for inp, t in zip(inputs, ts, strict=True):
                tiny_unet(inp, t, context=context)
        finally:
            handle.remove()
        with CalibrationRecorder(tiny_unet, steps=4, lookahead=3) as rec:
            for step, (inp, t) in enumerate(zip(inputs, ts, strict=True)):
                rec.set_step(step)
                tiny_unet(inp, t, context=context)
    cal = rec.result()
    for s in range(4):
        for j in range(1, 4 - s):
            a, b = seen[s].flatten(1).double(), seen[s + j].flatten(1).double()
            expected = ((b - a).abs().sum(1) / a.abs().sum(1)).mean().item()
            assert cal.error("depth1", s, j) == pytest.approx(expected, rel=1e-9)


def test_split_calls_compare_with_their_own_kind(tiny_unet):
    # cond and uncond as separate calls: ordinal 0 never compares with ordinal 1
    x, context = make_inputs(batch=1)
    other = torch.randn_like(context)
    t = torch.tensor([500.0])
    with torch.no_grad(), CalibrationRecorder(tiny_unet, steps=3, lookahead=2) as rec:
        for step in range(3):
            rec.set_step(step)
            tiny_unet(x, t, context=context)
            tiny_unet(x, t, context=other)
    cal = rec.result()
    assert all(cal.error(u, 0, 1) == 0.0 and cal.error(u, 0, 2) == 0.0 for u in cal.errors)


def test_several_runs_average(tiny_unet):
    x, context = make_inputs(batch=1)
    t = torch.tensor([500.0])
    with torch.no_grad(), CalibrationRecorder(tiny_unet, steps=2, lookahead=1) as rec:
        for inputs in ([x, x], [x, x * 2]):
            for step, inp in enumerate(inputs):
                rec.set_step(step)
                tiny_unet(inp, t, context=context)
    with torch.no_grad(), CalibrationRecorder(tiny_unet, steps=2, lookahead=1) as single:
        for step, inp in enumerate([x, x * 2]):
            single.set_step(step)
            tiny_unet(inp, t, context=context)
    cal, one = rec.result(), single.result()
    assert cal.info["runs"] == 2
    assert cal.error(OUTPUT_UNIT, 0, 1) == pytest.approx(one.error(OUTPUT_UNIT, 0, 1) / 2)


def test_calibrate_with_the_sampler_and_use_the_schedule(tiny_unet):
    x, context = make_inputs(batch=2)
    uncond = torch.zeros_like(context)

    def run(on_step):
        return sample(tiny_unet, x, context, uncond, steps=8, cfg_scale=3.0, on_step=on_step)

    cal = calibrate(tiny_unet, run, steps=8, lookahead=3, prompts=["p"])
    assert cal.info == {"runs": 1, "prompts": ["p"]}
    assert not any(h for h in (tiny_unet._forward_hooks, tiny_unet._forward_pre_hooks))  # hooks removed
    low, high = alpha_range(cal)
    assert 0 <= low <= high
    s = schedule_from_calibration(cal, (low + high) / 2)
    assert s.cache[0] == FULL and s.cache[-1] == FULL and s.full_steps < 8
    apply_patch(tiny_unet, s)
    try:
        out = run(None)
        assert get_patch(tiny_unet).stats["full"] == s.full_steps
    finally:
        remove_patch(tiny_unet)
    assert torch.isfinite(out).all()
    Schedule.from_json(s.to_json())  # saves and loads like any schedule


def test_bad_recorder_arguments(tiny_unet):
    with pytest.raises(ValueError, match="steps = 1"):
        CalibrationRecorder(tiny_unet, steps=1)
    with pytest.raises(ValueError, match="lookahead = 5"):
        CalibrationRecorder(tiny_unet, steps=5, lookahead=5)
    rec = CalibrationRecorder(tiny_unet, steps=5)
    with pytest.raises(ValueError, match="has 7 steps"):
        rec.set_step(0, 7)
    with rec:
        pass
    with pytest.raises(RuntimeError, match="recorded nothing"):
        rec.result()
    with pytest.raises(TypeError, match="supports the UNets of Stable Diffusion"):
        CalibrationRecorder(torch.nn.Linear(2, 2), steps=5)
