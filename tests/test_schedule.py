"""Schedule: construction, resampling, JSON, presets, and the message each bad input gets."""

from __future__ import annotations

import json

import pytest

from dato.core.schedule import FULL, REUSE, Schedule, ScheduleError, find_schedules, load_schedule


def test_uniform_schedule_puts_a_full_step_every_interval():
    s = Schedule.uniform(10, 3, depth=1, ratio=0.2)
    assert s.cache == (FULL, 1, 1, FULL, 1, 1, FULL, 1, 1, FULL)
    assert s.ratio == (0.2,) * 10
    assert s.preview() == "F11F11F11F"


def test_uniform_rule_resamples_exactly_to_any_step_count():
    s = Schedule.uniform(50, 5, depth=0)
    r = s.resample(20)
    assert r.cache == Schedule.uniform(20, 5, depth=0).cache
    assert r.name == s.name


def test_resample_follows_normalised_progress_and_keeps_first_step_full():
    s = Schedule("x", (FULL, 0, 0, 0, FULL, REUSE, 0, 0), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7 - 0.05))
    r = s.resample(4)
    assert r.cache == (FULL, 0, FULL, 0)
    assert r.ratio == (0.0, 0.2, 0.4, 0.6)
    up = s.resample(16)
    assert up.cache[0] == FULL and up.steps == 16
    assert up.cache[1] == FULL  # progress 1/16 still maps to the original step 0
    assert up.cache.count(REUSE) == 2


def test_resampling_a_schedule_that_starts_cached_elsewhere_forces_the_first_step_full():
    s = Schedule("x", (FULL, 0, 0, 0), (0.0,) * 4)
    r = s.resample(3)  # step 0 <- 0, 1 <- 1, 2 <- 2
    assert r.cache[0] == FULL


def test_json_round_trip_keeps_every_field(tmp_path):
    s = Schedule.uniform(12, 4, depth=2, ratio=0.3, method="merge").with_provenance(generator="test", prompts=["a"])
    path = s.save(tmp_path / "s.json")
    loaded = Schedule.load(path)
    assert loaded == s
    assert json.loads(path.read_text())["cache"][:4] == ["full", 2, 2, 2]


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(tmp_path):
    s = Schedule.full(4)
    s.save(tmp_path / "a.json")
    with pytest.raises(ScheduleError, match="already exists"):
        s.save(tmp_path / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_content_hash_ignores_the_name_but_not_the_actions():
    a = Schedule.uniform(10, 2, 0)
    b = Schedule("other name", a.cache, a.ratio, a.method)
    c = Schedule.uniform(10, 3, 0)
    assert a.content_hash() == b.content_hash() != c.content_hash()


def test_dato_reference_preset_matches_the_published_counts():
    s = load_schedule("dato-reference")
    assert s.steps == 51
    assert s.full_steps == 6 and s.cache.count(0) == 38 and s.cache.count(REUSE) == 7


def test_every_shipped_preset_loads():
    presets = find_schedules()
    for k in (2, 3, 5, 10):
        for d in (0, 1):
            assert f"deepcache-every{k}-d{d}" in presets
    for name in ("quality", "balanced", "fast", "dato-reference"):
        assert name in presets
    for path in presets.values():
        Schedule.load(path)


def test_user_folder_overrides_presets_of_the_same_name(tmp_path):
    Schedule.full(3, name="balanced").save(tmp_path / "balanced.json")
    assert load_schedule("balanced", [tmp_path]).steps == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "cache": ["full", "fast"]}, r"cache\[1\] = 'fast'"),
        ({"name": "x", "cache": [0, "full"]}, r"cache\[0\] = 0; the first step must be 'full'"),
        ({"name": "x", "cache": ["full", 99]}, r"cache\[1\] = 99: depth must be in 0..63"),
        ({"name": "x", "cache": ["full", True]}, r"cache\[1\] = True"),
        ({"name": "x", "cache": ["full"], "ratio": [0.8]}, r"ratio\[0\] = 0.8; 'prune' needs 0 <= r < 0.75"),
        ({"name": "x", "cache": ["full"], "ratio": [0.75], "method": "merge"}, r"ratio\[0\] = 0.75; 'merge'"),
        ({"name": "x", "cache": ["full"], "ratio": [-0.1]}, r"ratio\[0\] = -0.1"),
        ({"name": "x", "cache": ["full", 0], "ratio": [0.1]}, "ratio has 1 entries but cache has 2"),
        ({"name": "x", "cache": ["full"], "method": "fastest"}, "method = 'fastest'"),
        ({"name": "x", "cache": []}, "cache is empty"),
        ({"name": "", "cache": ["full"]}, "schedule name ''"),
        ({"name": "../etc", "cache": ["full"]}, "schedule name '../etc'"),
        ({"name": "x", "cache": ["full"], "colour": 1}, "unknown field"),
        ({"name": "x", "cache": ["full"], "format_version": 9}, "format_version = 9"),
        ({"name": "x", "cache": ["full"], "steps": 3}, "steps = 3 but cache has 1"),
        ({"cache": ["full"]}, "missing field 'name'"),
        ({"name": "x", "cache": "full"}, "cache = 'full', expected a list"),
        ({"name": "x", "cache": ["full"], "ratio": ["a"]}, "ratio = \\['a'\\], expected a list of numbers"),
        ({"name": "x", "cache": ["full"], "rule": {"kind": "magic"}}, "the rule kinds are 'uniform', 'cycle'"),
    ],
)
def test_invalid_schedule_data_names_the_field_and_value(data, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule.from_dict(data, source="test.json")


def test_broken_json_says_where():
    with pytest.raises(ScheduleError, match="not valid JSON .* line 1"):
        Schedule.from_json("{", source="bad.json")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ScheduleError, match="unknown schedule 'nope'; known: .*balanced"):
        load_schedule("nope")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0, "interval": 2}, "steps = 0"),
    ({"steps": 10, "interval": 0}, "interval = 0"),
    ({"steps": 10, "interval": 2, "depth": -1}, "depth = -1"),
])
def test_invalid_uniform_arguments(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule.uniform(**kwargs)


# ----------------------------------------------------------------- rules (issue 12)
UNIFORM3 = {"name": "u", "cache": ["full", 0, 0, "full", 0, 0], "ratio": [0.4] * 6}


@pytest.mark.parametrize(("rule", "message"), [
    ("uniform", r"rule = 'uniform', expected an object"),
    ({"kind": "magic", "interval": 3, "depth": 0, "ratio": 0.4}, r"rule.kind = 'magic'; the rule kinds are"),
    ({"interval": 3, "depth": 0, "ratio": 0.4}, r"rule.kind = None"),
    ({"kind": "uniform", "depth": 0, "ratio": 0.4}, r"rule is missing 'interval'"),
    ({"kind": "uniform", "interval": 3, "ratio": 0.4}, r"rule is missing 'depth'"),
    ({"kind": "uniform", "interval": 3, "depth": 0}, r"rule is missing 'ratio'"),
    ({"kind": "uniform", "interval": 3, "depth": 0, "ratio": 0.4, "every": 2}, r"rule has unknown field\(s\) 'every'"),
    ({"kind": "uniform", "interval": 0, "depth": 0, "ratio": 0.4}, r"rule.interval = 0, expected an integer 1..10000"),
    ({"kind": "uniform", "interval": 3.0, "depth": 0, "ratio": 0.4}, r"rule.interval = 3.0"),
    ({"kind": "uniform", "interval": True, "depth": 0, "ratio": 0.4}, r"rule.interval = True"),
    ({"kind": "uniform", "interval": "3", "depth": 0, "ratio": 0.4}, r"rule.interval = '3'"),
    ({"kind": "uniform", "interval": 3, "depth": -1, "ratio": 0.4}, r"rule.depth = -1, expected an integer 0..63"),
    ({"kind": "uniform", "interval": 3, "depth": 64, "ratio": 0.4}, r"rule.depth = 64"),
    ({"kind": "uniform", "interval": 3, "depth": 0, "ratio": 0.75}, r"rule.ratio = 0.75; 'prune' needs 0 <= r < 0.75"),
    ({"kind": "uniform", "interval": 3, "depth": 0, "ratio": float("nan")}, r"rule.ratio = nan"),
    ({"kind": "uniform", "interval": 3, "depth": 0, "ratio": "0.4"}, r"rule.ratio = '0.4'"),
    ({"kind": "uniform", "interval": 2, "depth": 0, "ratio": 0.4},
     r"rule \(uniform, interval 2, depth 0\) contradicts cache\[2\] = 0; the rule gives 'full'"),
    ({"kind": "uniform", "interval": 3, "depth": 1, "ratio": 0.4}, r"contradicts cache\[1\] = 0; the rule gives 1"),
    ({"kind": "uniform", "interval": 3, "depth": 0, "ratio": 0.3}, r"rule.ratio = 0.3 contradicts ratio\[0\] = 0.4"),
])
def test_rule_is_validated_fully_and_must_match_the_schedule(rule, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule.from_dict({**UNIFORM3, "rule": rule}, source="rule.json")


def test_a_consistent_rule_is_accepted_and_regenerates():
    s = Schedule.from_dict({**UNIFORM3, "rule": {"kind": "uniform", "interval": 3, "depth": 0, "ratio": 0.4}})
    assert s.resample(9).preview() == "F00F00F00"
    downsample = {**UNIFORM3, "method": "downsample", "ratio": [0.75] * 6,
                  "rule": {"kind": "uniform", "interval": 3, "depth": 0, "ratio": 0.75}}
    assert Schedule.from_dict(downsample).rule["ratio"] == 0.75  # 0.75 is allowed for downsample only


def test_the_step_limit_is_one_constant():
    from dato.core.schedule import MAX_STEPS

    assert MAX_STEPS == 10_000
    Schedule.full(MAX_STEPS)
    with pytest.raises(ScheduleError, match=f"expected an integer 1..{MAX_STEPS}"):
        Schedule.full(MAX_STEPS + 1)
    with pytest.raises(ScheduleError, match=f"at most {MAX_STEPS}"):
        Schedule.from_dict({"name": "long", "cache": ["full"] * (MAX_STEPS + 1)})


def test_short_repr_truncates_long_values():
    from dato.core.schedule import short_repr

    assert short_repr("abc") == "'abc'"
    assert short_repr(0.5) == "0.5"
    long = short_repr("x" * 50_000_000)
    assert long.startswith("'" + "x" * 60 + "'...") and "50000000 characters" in long and len(long) < 100
    assert len(short_repr(list(range(100_000)))) <= 63
    assert len(short_repr({"k" * 1000: 1}, limit=30)) <= 33
    assert short_repr("y" * 30, limit=10) == "'" + "y" * 10 + "'... (30 characters)"


@pytest.mark.parametrize("data", [
    {"name": "n" * 5_000_000, "cache": ["full"]},
    {"name": "x", "cache": ["full"], "method": "m" * 5_000_000},
    {"name": "x", "cache": ["z" * 5_000_000]},
    {"name": "x", "cache": "c" * 5_000_000},
    {"name": "x", "cache": ["full"], "description": ["d" * 5_000_000]},
    {"name": "x", "cache": ["full"], "k" * 5_000_000: 1},
    {"name": "x", "cache": ["full"], "rule": {"kind": "q" * 5_000_000}},
    {"name": "x", "cache": ["full"], "ratio": [0.1] * 1000 + ["r"]},
])
def test_schedule_errors_quote_only_a_short_prefix_of_a_huge_value(data):
    with pytest.raises(ScheduleError) as info:
        Schedule.from_dict(data, source="big.json")
    assert len(str(info.value)) < 300, str(info.value)[:300]


def test_unknown_schedule_name_is_quoted_short():
    with pytest.raises(ScheduleError) as info:
        load_schedule("n" * 100_000)
    assert "100000 characters" in str(info.value) and len(str(info.value)) < 2000
