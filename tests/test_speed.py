"""Speed you can count on (issue 10): preset rules, their bands at every step count, and the speed target."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dato.core.clock import PassClock
from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError, load_schedule
from dato.core.speed import TargetError, check_target, expected_speedup, max_target, target_schedule

# the bands stated in docs/results.md (SD1.5 UNet, 512 px, analytic MACs, 8..150 steps)
BANDS = {"quality": (1.6, 1.9), "balanced": (3.4, 4.4), "fast": (5.2, 8.5)}
STEP_COUNTS = range(8, 151)
ROOT = Path(__file__).resolve().parents[1]
#: the two clocks a pass runs on: the WebUI's denoiser counts model calls, the headless samplers count steps
CLOCKS = {"webui-euler": lambda n: PassClock.counting_calls(n),
          "webui-heun": lambda n: PassClock.counting_calls(n, True),
          "headless-heun": lambda n: PassClock.counting_steps(n, True)}


@pytest.fixture(scope="module")
def sd15_cost():
    """The SD1.5 UNet's cost model, traced on the meta device (shapes only: no weights, no memory)."""
    from dato.evaluation.costs import architecture_cost

    return architecture_cost("sd15")


# ------------------------------------------------------------------ cycle rule
def test_cycle_rule_regenerates_exactly_at_every_step_count():
    fast = load_schedule("fast")
    assert fast.rule["kind"] == "cycle"
    for steps in (1, 7, 10, 13, 20, 150):
        s = fast.resample(steps)
        assert s.preview() == ("F0R0R0R0R0" * 20)[:steps]
        assert s.rule == fast.rule and s.ratio == (0.5,) * steps
    assert Schedule.from_dict(fast.resample(13).to_dict()).cache == fast.resample(13).cache


def test_old_schedule_files_keep_loading_and_resampling():
    old = {"format_version": 1, "name": "old", "cache": ["full", 0, "reuse", 0], "ratio": [0.5] * 4}
    s = Schedule.from_dict(old)
    assert s.rule is None and s.resample(8).preview() == "FF00RR00"
    assert Schedule.load(ROOT / "schedules" / "balanced.json").resample(12).preview() == "F0000F0000F0"


@pytest.mark.parametrize(("rule", "message"), [
    ({"kind": "cycle", "ratio": 0.5}, r"rule is missing 'cycle'"),
    ({"kind": "cycle", "cycle": ["full", 0]}, r"rule is missing 'ratio'"),
    ({"kind": "cycle", "cycle": "F0", "ratio": 0.5}, r"rule.cycle = 'F0', expected a list of 1..10000 actions"),
    ({"kind": "cycle", "cycle": [], "ratio": 0.5}, r"rule.cycle = \[\], expected a list"),
    ({"kind": "cycle", "cycle": [0, "full"], "ratio": 0.5}, r"rule.cycle\[0\] = 0; a cycle starts with 'full'"),
    ({"kind": "cycle", "cycle": ["full", "skip"], "ratio": 0.5}, r"rule.cycle\[1\] = 'skip': expected 'full'"),
    ({"kind": "cycle", "cycle": ["full", 0], "ratio": 0.5, "interval": 2}, r"unknown field\(s\) 'interval'"),
    ({"kind": "cycle", "cycle": ["full", 0, 0], "ratio": 0.5},
     r"rule \(cycle F00\) contradicts cache\[2\] = 'full'; the rule gives 0"),
    ({"kind": "cycle", "cycle": ["full", 0], "ratio": 0.4}, r"rule.ratio = 0.4 contradicts ratio\[0\]"),
])
def test_a_bad_cycle_rule_names_the_field(rule, message):
    data = {"name": "c", "cache": ["full", 0, "full", 0], "ratio": [0.5] * 4, "rule": rule}
    with pytest.raises(ScheduleError, match=message):
        Schedule.from_dict(data, source="c.json")


# ------------------------------------------------------------- preset bands
@pytest.mark.parametrize("clock", list(CLOCKS))
def test_presets_keep_their_order_and_band_at_every_step_count(sd15_cost, clock):
    presets = {name: load_schedule(name) for name in BANDS}
    for steps in STEP_COUNTS:
        on = CLOCKS[clock](steps)
        speed = {name: expected_speedup(sd15_cost, s, 64, 64, clock=on) for name, s in presets.items()}
        assert speed["quality"] < speed["balanced"] < speed["fast"], (steps, speed)
        for name, (low, high) in BANDS.items():
            assert low <= speed[name] <= high, (name, steps, speed[name])
    fast = presets["fast"]
    assert expected_speedup(sd15_cost, fast, 64, 64, clock=CLOCKS[clock](20)) >= 5
    assert expected_speedup(sd15_cost, fast, 64, 64, clock=CLOCKS[clock](10)) >= 4


def test_the_clock_says_how_many_calls_fall_on_each_step(sd15_cost):
    s = Schedule.cycle(3, ["full", "reuse"])  # F R F
    # headless Heun: calls F F R R F -> 5 calls, 3 full
    assert expected_speedup(sd15_cost, s, 64, 64, clock=PassClock.counting_steps(3, True)) == \
        pytest.approx(5 / 3, rel=1e-4)
    assert expected_speedup(sd15_cost, s, 64, 64) == pytest.approx(3 / 2, rel=1e-4)
    # the WebUI's Heun: 6 clock steps F R F R F R, the last unused -> 5 calls, 3 full
    assert PassClock.counting_calls(3, True) == PassClock(6, (1, 1, 1, 1, 1, 0))
    assert expected_speedup(sd15_cost, s, 64, 64, clock=PassClock.counting_calls(3, True)) == \
        pytest.approx(5 / 3, rel=1e-4)


@pytest.mark.parametrize("bad", [(0, ()), (2, (1,)), (2, (0, 0))])
def test_a_clock_needs_one_call_count_per_step(bad):
    with pytest.raises(ValueError, match="a pass clock needs total >= 1"):
        PassClock(*bad)


# -------------------------------------------------------------- speed target
def test_target_one_is_every_step_full_bit_for_bit(sd15_cost):
    s = target_schedule(sd15_cost, 1, PassClock.counting_calls(20), 64, 64)
    assert s.cache == (FULL,) * 20 and s.ratio == (0.0,) * 20


@pytest.mark.parametrize("steps", [8, 10, 20, 30, 50])
@pytest.mark.parametrize("target", [1.5, 2, 3, 4, 5])
def test_target_is_met_at_the_actual_step_count_and_regenerates(sd15_cost, steps, target):
    s = target_schedule(sd15_cost, target, PassClock.counting_calls(steps), 64, 64)
    assert s.steps == steps and s.rule is not None
    assert expected_speedup(sd15_cost, s, 64, 64) >= target
    assert s.provenance["target_speedup"] == target
    assert Schedule.from_dict(s.to_dict()).content_hash() == s.content_hash()


def test_target_prefers_more_full_steps(sd15_cost):
    gentle = target_schedule(sd15_cost, 2, PassClock.counting_calls(20), 64, 64)
    hard = target_schedule(sd15_cost, 4, PassClock.counting_calls(20), 64, 64)
    assert gentle.full_steps > hard.full_steps
    assert REUSE not in gentle.cache


@pytest.mark.parametrize("clock", [PassClock.counting_calls(10, True), PassClock.counting_steps(10, True)])
def test_target_counts_a_second_order_sampler_on_its_clock(sd15_cost, clock):
    s = target_schedule(sd15_cost, 4, clock, 64, 64)
    assert s.steps == clock.total and expected_speedup(sd15_cost, s, 64, 64, clock=clock) >= 4


@pytest.mark.parametrize("value", [0, -2, float("nan"), float("inf"), 0.5, 1000, "4", True, None])
def test_a_bad_target_names_the_field(value):
    with pytest.raises(TargetError, match=r"^speed_target = .*: expected a speed-up factor"):
        check_target(value, "speed_target")


def test_an_unreachable_target_says_the_nearest_reachable(sd15_cost):
    eight = PassClock.counting_calls(8)
    top = max_target(sd15_cost, eight, 64, 64)
    assert 5 < top < 20
    with pytest.raises(TargetError, match=r"target = 50: not reachable at 8 steps; the nearest reachable is "
                                          rf"{math.floor(top * 100) / 100:.2f}x"):
        target_schedule(sd15_cost, 50, eight, 64, 64)
    target_schedule(sd15_cost, math.floor(top * 100) / 100, eight, 64, 64)


# ---------------------------------------------------------------------- CLI
def test_cli_target_prints_a_schedule_that_meets_it(capsys):
    from dato.__main__ import main

    assert main(["target", "4", "--steps", "10", "--sampler", "heun"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("target-4x: ") and "at 10 steps, 20 model calls (sd15, heun, 512x512), hash " in out
    assert float(out.split(": ", 1)[1].split("x", 1)[0]) >= 4


def test_cli_target_prices_the_sdxl_unet_with_arch_sdxl(capsys):
    from dato.__main__ import main
    from dato.evaluation.costs import architecture_cost

    assert main(["target", "4", "--steps", "20", "--arch", "sdxl", "--width", "1024", "--height", "1024"]) == 0
    out = capsys.readouterr().out
    assert "at 20 steps (sdxl, euler, 1024x1024)" in out and float(out.split(": ", 1)[1].split("x", 1)[0]) >= 4
    sdxl, sd15 = architecture_cost("sdxl"), architecture_cost("sd15")
    assert sdxl.full_step_macs(128, 128) > 1.4 * sd15.full_step_macs(128, 128)  # SDXL's UNet, not SD1's
    with pytest.raises(ValueError, match="architecture 'sd3': expected one of sd15, sdxl"):
        architecture_cost("sd3")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1000", "fast"])
def test_cli_bad_target_is_one_line_naming_the_field(value, capsys):
    from dato.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["target", value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: target {value}: expected a speed-up factor 1 <= N <= 100 "
                                       "(1 = every step full)\n")


def test_cli_unreachable_target_names_the_nearest(capsys):
    from dato.__main__ import main

    assert main(["target", "50", "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: speed target 50x unreachable at 8 steps; nearest reachable ")
