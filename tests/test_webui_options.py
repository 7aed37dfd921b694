"""The argument table (dato/core/arguments.py) and the infotext (dato/core/infotext.py): one ordered list for UI,
API and infotext; no WebUI needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

import dato
from dato.core.arguments import ARG_NAMES, ArgsError, DatoArgs, PassSettings
from dato.core.infotext import INFOTEXT_KEYS, infotext_params, normalize_pasted
from dato.core.plan import build_schedule, pass_summary
from dato.core.schedule import Schedule

DOCUMENTED_ORDER = ["enabled", "method", "ratio", "schedule", "interval", "depth", "max_downsample", "hr_mode",
                    "hr_method", "hr_ratio", "hr_schedule", "hr_interval", "hr_depth", "prune_variant",
                    "downsample_factor", "downsample_factor2", "downsample_stop", "speed_target", "adaptive",
                    "adaptive_cap"]


def pasted_args(params, defaults=None):
    """What the WebUI does on paste: our normalize_pasted, then each control takes the value under its key."""
    data = dict(params)
    normalize_pasted(data)
    values = {name: data[INFOTEXT_KEYS[name]] for name in ARG_NAMES if INFOTEXT_KEYS[name] in data}
    return replace(defaults or DatoArgs(), **values)


def load(name):
    return dato.load_schedule(name)


def test_argument_order_is_the_documented_api_order():
    assert list(ARG_NAMES) == DOCUMENTED_ORDER
    assert set(INFOTEXT_KEYS) == set(ARG_NAMES)


def test_short_positional_lists_and_none_keep_the_defaults():
    defaults = DatoArgs(ratio=0.3, schedule="fast")
    args = DatoArgs.from_args([True, "merge", None], defaults)
    assert args == DatoArgs(enabled=True, method="merge", ratio=0.3, schedule="fast")
    assert DatoArgs.from_args([], defaults) == defaults


def test_values_arrive_in_the_forms_gradio_and_json_use():
    args = DatoArgs.from_args(["True", "DaTo prune", "0.5", "uniform", 3.0, 1.0, 2.0, "Own settings", "ToMe merge"])
    assert (args.enabled, args.method, args.ratio, args.interval, args.depth) == (True, "prune", 0.5, 3, 1)
    assert (args.max_downsample, args.hr_mode, args.hr_method) == (2, "own", "merge")
    assert DatoArgs.from_args([True, "Off"]).method == "none"


def test_named_form_fills_over_the_defaults_and_means_enabled():
    padded = [{"ratio": 0.25, "schedule": "none"}] + DatoArgs().to_args()[1:]
    args = DatoArgs.from_args(padded)
    assert args.enabled and args.ratio == 0.25 and args.schedule == "none" and args.method == "prune"
    assert not DatoArgs.from_args([{"enabled": False}]).enabled


@pytest.mark.parametrize("bad, message", [
    ([{"ratoi": 0.4}], "unknown argument(s) 'ratoi'"),
    ([True, "fast"], "argument 1 (method) = 'fast'"),
    ([True, "prune", 0.9], "argument 2 (ratio) = 0.9: expected a number 0..0.75"),
    ([True, "prune", True], "argument 2 (ratio) = True"),
    ([True, "prune", 0.4, "balanced", 0], "argument 4 (interval) = 0"),
    ([True, "prune", 0.4, "balanced", 2.5], "argument 4 (interval) = 2.5: expected a whole number"),
    ([True, "prune", 0.4, "balanced", 5, 0, 3], "argument 6 (max_downsample) = 3"),
    ([True, "prune", 0.4, "balanced", 5, 0, 1, "sometimes"], "argument 7 (hr_mode) = 'sometimes'"),
    ([True, "prune", 0.4, ""], "argument 3 (schedule) = ''"),
    ([None] * 21, "got 21 arguments"),
    ([None] * 17 + [-2], "argument 17 (speed_target) = -2: expected a speed-up factor 1 <= N <= 100 "
                         "(1 = every step full) or 0 = off"),
    ([None] * 17 + [0.5], "argument 17 (speed_target) = 0.5: expected a speed-up factor"),
    ([None] * 17 + [1000], "argument 17 (speed_target) = 1000: expected a speed-up factor"),
    ([None] * 17 + [float("nan")], "argument 17 (speed_target) = nan: expected a number"),
    ([None] * 17 + ["fast"], "argument 17 (speed_target) = 'fast': expected a number"),
    ([None] * 18 + [-0.1], "argument 18 (adaptive) = -0.1: expected a threshold 0..1 (0 = off)"),
    ([None] * 18 + [1.5], "argument 18 (adaptive) = 1.5: expected a threshold 0..1 (0 = off)"),
    ([None] * 18 + [float("nan")], "argument 18 (adaptive) = nan: expected a number"),
    ([None] * 18 + ["often"], "argument 18 (adaptive) = 'often': expected a number"),
    ([None] * 19 + [0], "argument 19 (adaptive_cap) = 0: expected a whole number 1..20"),
    ([None] * 19 + [2.5], "argument 19 (adaptive_cap) = 2.5: expected a whole number 1..20"),
    ([None] * 19 + [21], "argument 19 (adaptive_cap) = 21: expected a whole number 1..20"),
    ([None] * 19 + [True], "argument 19 (adaptive_cap) = True: expected a number"),
    ([{"speed_target": 4, "adaptive": 0.2}], "speed_target = 4 and adaptive = 0.2: use one of the two"),
    (["yes"], "argument 0 (enabled) = 'yes'"),
])
def test_bad_arguments_are_named_by_position_and_name(bad, message):
    with pytest.raises(ArgsError) as info:
        DatoArgs.from_args(bad)
    assert message in str(info.value)


def test_method_and_ratio_replace_the_schedules_own():
    schedule, source = build_schedule(PassSettings("merge", 0.3, "deepcache-every3-d0"), load)
    assert source.name == "deepcache-every3-d0" and source.method == "none"
    assert schedule.method == "merge" and set(schedule.ratio) == {0.3} and schedule.cache == source.cache


def test_as_scheduled_keeps_the_schedules_method_and_ratios():
    schedule, source = build_schedule(PassSettings("schedule", 0.7, "balanced"), load)
    assert schedule == source and schedule.method == "prune" and set(schedule.ratio) == {0.4}


def test_uniform_and_none_are_rules_not_files():
    uniform, source = build_schedule(PassSettings("downsample", 0.75, "uniform", interval=4, depth=2), load)
    assert source is None and uniform.resample(8).cache == (-1, 2, 2, 2, -1, 2, 2, 2)
    assert uniform.method == "downsample" and uniform.ratio[0] == 0.75
    none, _ = build_schedule(PassSettings("prune", 0.5, "none"), load)
    assert none.resample(6).cache == (-1,) * 6 and none.ratio[0] == 0.5


def test_a_ratio_the_method_cannot_take_says_why():
    with pytest.raises(ArgsError, match="too large for 'prune'.*< 0.75"):
        build_schedule(PassSettings("prune", 0.75, "balanced"), load)


def test_hires_pass_settings():
    args = DatoArgs(enabled=True, hr_mode="own", hr_method="merge", hr_schedule="uniform", hr_interval=2)
    assert args.hires_pass() == PassSettings("merge", 0.4, "uniform", 2, 0, 1)
    assert DatoArgs(hr_mode="same").hires_pass() == DatoArgs().first_pass()
    assert DatoArgs(hr_mode="off").hires_pass() is None


def test_infotext_is_empty_when_disabled_and_round_trips_when_enabled():
    assert infotext_params(DatoArgs(enabled=False), None) == {}
    args = DatoArgs(enabled=True, method="merge", ratio=0.35, schedule="uniform", interval=3, depth=1,
                    max_downsample=2, hr_mode="own", hr_method="schedule", hr_schedule="balanced")
    _, hr_source = build_schedule(args.hires_pass(), load)
    params = infotext_params(args, None, hr_source, has_hires=True)
    assert params["DaTo"] is True and params["DaTo hires schedule hash"] == hr_source.content_hash()
    assert "DaTo hires ratio" not in params  # 'As scheduled' has no ratio of its own
    as_text = {k: str(v) for k, v in params.items()}  # what parse_generation_parameters gives back
    assert pasted_args(as_text) == args


def test_defaults_are_left_out_of_the_infotext_and_restored_on_paste():
    args = DatoArgs(enabled=True)
    params = infotext_params(args, load("balanced"), has_hires=True)
    assert "DaTo max downsample" not in params and "DaTo hires" not in params
    pasted = pasted_args({k: str(v) for k, v in params.items()},
                                defaults=DatoArgs(max_downsample=4, hr_mode="off"))
    assert pasted.max_downsample == 1 and pasted.hr_mode == "same"


def test_paste_without_dato_keys_switches_the_accordion_off():
    params = {"Steps": "20"}
    assert normalize_pasted(params) == []
    assert params["DaTo"] == "False"


def test_paste_finds_a_renamed_schedule_by_hash_and_warns_about_changed_or_missing_ones():
    installed = {"mine": "aaaa", "renamed": "bbbb"}
    lookup, find = installed.get, {v: k for k, v in installed.items()}.get
    params = {"DaTo": "True", "DaTo schedule": "old-name", "DaTo schedule hash": "bbbb"}
    messages = normalize_pasted(params, lookup, find)
    assert params["DaTo schedule"] == "renamed" and "installed as 'renamed'" in messages[0]
    params = {"DaTo": "True", "DaTo schedule": "mine", "DaTo schedule hash": "cccc"}
    assert "has changed" in normalize_pasted(params, lookup, find)[0]
    params = {"DaTo": "True", "DaTo schedule": "gone", "DaTo schedule hash": "dddd"}
    assert "is not installed" in normalize_pasted(params, lookup, find)[0]
    params = {"DaTo": "True", "DaTo schedule": "mine", "DaTo schedule hash": "aaaa"}
    assert normalize_pasted(params, lookup, find) == []


def test_pass_summary_is_the_schedule_resampled():
    schedule, _ = build_schedule(PassSettings("prune", 0.4, "balanced"), load)
    summary = pass_summary(schedule, 12)
    assert summary["preview"] == schedule.resample(12).preview() == "F0000F0000F0"
    assert (summary["full"], summary["cached"], summary["method"]) == (3, 9, "prune")
    assert pass_summary(schedule.with_method("none"), 12)["ratio"] == [0.0] * 12


@pytest.mark.parametrize("name,value,message", [
    ("prune_variant", "exact", "argument 13 (prune_variant) = 'exact': expected one of faithful"),
    ("downsample_factor", 0.5, "argument 14 (downsample_factor) = 0.5: expected 0"),
    ("downsample_factor2", "x", "argument 15 (downsample_factor2) = 'x': expected a number"),
    ("downsample_stop", 1.2, "argument 16 (downsample_stop) = 1.2: expected a fraction"),
])
def test_token_options_refuse_bad_values_by_name(name, value, message):
    with pytest.raises(ArgsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DatoArgs.from_dict({name: value})


def test_token_options_reach_both_passes_and_the_infotext_only_when_set():
    args = DatoArgs(enabled=True, method="downsample", prune_variant="Faithful", downsample_factor=1.5,
                    downsample_stop=0.6, hr_mode="own")
    assert args.prune_variant == "faithful"
    for settings in (args.first_pass(), args.hires_pass()):
        assert settings.patch_options() == {"max_downsample": 1, "prune_variant": "faithful",
                                            "downsample_factor": 1.5, "downsample_factor2": 0.0,
                                            "downsample_stop": 0.6, "adaptive": None, "adaptive_cap": 3}
    params = infotext_params(args, None)
    assert params["DaTo prune variant"] == "faithful" and params["DaTo ToDo factor"] == 1.5
    assert "DaTo ToDo factor 2" not in params
    assert pasted_args(params) == replace(args, hr_mode="same")
    assert "DaTo prune variant" not in infotext_params(DatoArgs(enabled=True), None)
    assert pasted_args(infotext_params(DatoArgs(enabled=True), None), args).prune_variant == "shared-plan"


def test_speed_target_is_the_last_argument_and_zero_means_off():
    assert DatoArgs.from_args([True] + [None] * 16 + [4]).speed_target == 4.0
    assert DatoArgs.from_args([True] + [None] * 16 + [0]).speed_target == 0.0
    assert DatoArgs.from_args([{"speed_target": "2.5"}]).first_pass().speed_target == 2.5
    assert DatoArgs().speed_target == 0.0  # a 13-argument API call keeps working unchanged


def test_adaptive_caching_is_off_by_default_and_round_trips_through_the_infotext():
    assert DatoArgs().adaptive == 0.0 and DatoArgs().first_pass().patch_options()["adaptive"] is None
    args = DatoArgs(enabled=True, adaptive=0.15, adaptive_cap=5, hr_mode="own")
    assert args.first_pass().patch_options()["adaptive"] == 0.15
    assert args.hires_pass().patch_options()["adaptive_cap"] == 5  # run-time caching applies to both passes
    params = infotext_params(args, load("balanced"), has_hires=True)
    assert params["DaTo adaptive"] == 0.15 and params["DaTo adaptive cap"] == 5
    assert pasted_args({k: str(v) for k, v in params.items()}) == args
    plain = infotext_params(DatoArgs(enabled=True), None)
    assert "DaTo adaptive" not in plain and "DaTo adaptive cap" not in plain
    assert pasted_args({"DaTo": "True"}, defaults=DatoArgs(adaptive=0.3)).adaptive == 0.0  # a paste resets it


def test_infotext_records_the_target_and_the_hash_of_the_schedule_it_gave():
    chosen = Schedule.uniform(20, 5, 0, 0.3, name="target-4x")
    params = infotext_params(DatoArgs(enabled=True, speed_target=4), chosen)
    assert params["DaTo speed target"] == 4.0
    assert params["DaTo speed target hash"] == chosen.content_hash()
    assert "DaTo schedule hash" not in params
    assert "DaTo speed target" not in infotext_params(DatoArgs(enabled=True), None)
    assert pasted_args({"DaTo": "True"}).speed_target == 0.0
