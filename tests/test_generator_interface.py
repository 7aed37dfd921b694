"""Every schedule generator answers the same question the same way: a backend and speed-ups in, one Schedule
per target out, sized for the backend's steps and saying which generator made it."""

from __future__ import annotations

import math

import pytest

from dato.core.schedule import FULL, Schedule
from dato.evaluation.backends import builtin_backend
from dato.generators.base import closest_to_target, speedup_of
from dato.generators.calibrate import CalibrationGenerator
from dato.generators.gates import GateConfig, GateGenerator, LevelCosts, uniform_start
from dato.generators.search import SearchSettings
from dato.generators.search.generator import SearchGenerator
from dato.generators.target import SpeedTargetGenerator
from dato.generators.uniform import UniformGenerator, nearest_uniform

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red fox", "a blue car"]
PROVENANCE = {"uniform": "uniform", "calibration": "calibration", "calibration-noreuse": "calibration",
              "nsga2": "dato-search (NSGA-II)", "gates": "gates", "speed-target": "speed-target"}


@pytest.fixture(scope="module")
def backend():
    return builtin_backend(latent_size=8, steps=6, cfg_scale=2.0, model="tiny")


def generators():
    return [
        UniformGenerator(depth=0),
        SpeedTargetGenerator(),
        CalibrationGenerator(PROMPTS),
        CalibrationGenerator(PROMPTS).variant(allow_reuse=False),
        SearchGenerator(SearchSettings(steps=6, mode="cache", method="none", ratio_levels=(0.0,), max_depth=1,
                                       population=4, generations=1, prompts=tuple(PROMPTS), seed_presets=False)),
        GateGenerator(PROMPTS, GateConfig(iterations=1, batch_size=1, pool=2, seed=0)),
    ]


@pytest.mark.parametrize("generator", generators(), ids=lambda g: g.name)
def test_each_generator_returns_one_schedule_per_target_with_its_provenance(generator, backend):
    targets = (1.5, 2.5)
    out = generator.schedules(backend, targets, log=lambda m: None)
    assert set(out) == set(targets)
    for schedule in out.values():
        assert isinstance(schedule, Schedule) and schedule.steps == backend.steps and schedule.cache[0] == FULL
        assert schedule.provenance.get("generator") == PROVENANCE[generator.name]
    assert speedup_of(backend)(out[2.5]) >= speedup_of(backend)(out[1.5]) - 1e-9


def test_the_speed_target_generator_meets_each_target_or_says_it_cannot(backend):
    said = []
    out = SpeedTargetGenerator(method="none").schedules(backend, (1.5, 2.5, 50.0), log=said.append)
    speed = speedup_of(backend)
    assert speed(out[1.5]) >= 1.5 - 1e-9 and speed(out[2.5]) >= 2.5 - 1e-9
    assert out[1.5].rule is not None and out[1.5].method == "none"  # a rule: it regenerates at any step count
    fastest = math.floor(out[50.0].provenance["expected_speedup"] * 100) / 100
    assert said == [f"speed-target: 50x is not reachable at 6 steps; using the fastest rule ({fastest:g}x)"]
    assert speed(out[50.0]) == pytest.approx(out[50.0].provenance["expected_speedup"], rel=1e-3)


def test_the_calibration_variant_measures_once(backend):
    first = CalibrationGenerator(PROMPTS)
    first.schedules(backend, (2.0,), log=lambda m: None)
    measured = first._calibrations[id(backend.unet)]
    second = first.variant(allow_reuse=False)
    second.schedules(backend, (2.0,), log=lambda m: None)
    assert second._calibrations[id(backend.unet)] is measured and second.name == "calibration-noreuse"


def test_the_uniform_generator_and_the_gates_warm_start_agree(backend):
    from dato.core.macs import trace_unet_cost

    cost = trace_unet_cost(backend.unet, context_len=int(backend.null_context(1).shape[1]))
    costs = LevelCosts.from_cost(cost, *backend.latent_shape[-2:])
    for target in (1.3, 2.0, 3.0, 4.0):
        warm = uniform_start(costs, backend.steps, target)
        assert UniformGenerator().schedules(backend, (target,), log=lambda m: None)[target].cache == warm.cache


def test_nearest_uniform_and_closest_to_target_pick_by_log_distance():
    speed = {2: 1.8, 3: 2.4, 4: 2.9}
    pick = nearest_uniform(lambda s: speed[s.rule["interval"]], 4, 2.6)
    assert pick.rule["interval"] == 3  # |log(2.4/2.6)| < |log(2.9/2.6)|
    cands = [Schedule.uniform(4, n, 0) for n in (2, 3, 4)]
    assert closest_to_target(cands, 2.0, lambda s: speed[s.rule["interval"]]).rule["interval"] == 2
