"""The search genome: every schedule encodes and decodes to itself; bad genomes and specs say why."""

from __future__ import annotations

import numpy as np
import pytest

from dato.core.schedule import FULL, REUSE, Schedule, find_schedules, ratio_allowed
from dato.generators.search.genome import DEFAULT_RATIO_LEVELS, GenomeError, GenomeSpec, dato_ratio_code
from dato.generators.search.problem import segment_random_genome, uniform_seeds


def smallest_spec_for(schedule: Schedule) -> GenomeSpec:
    """The smallest joint spec that encodes ``schedule`` exactly (its steps, depths, reuse, ratios)."""
    levels = sorted(set(DEFAULT_RATIO_LEVELS if schedule.method != "none" else (0.0,)) | set(schedule.ratio))
    if schedule.method != "downsample":
        levels = [r for r in levels if ratio_allowed(schedule.method, r)]
    return GenomeSpec(steps=max(schedule.steps, 2), max_depth=max(schedule.max_cache_depth, 0), allow_reuse=True,
                      ratio_levels=tuple(levels), method=schedule.method, search_cache=True,
                      search_ratio=schedule.method != "none")


def _same(a: Schedule, b: Schedule) -> bool:
    return a.cache == b.cache and np.allclose(a.ratio, b.ratio) and a.method == b.method


@pytest.mark.parametrize("name", sorted(find_schedules()))
def test_every_preset_round_trips_through_its_genome(name):
    preset = Schedule.load(find_schedules()[name])
    spec = smallest_spec_for(preset)
    genome = spec.encode(preset)
    assert genome.shape == (spec.n_var,)
    assert np.all(genome >= spec.xl) and np.all(genome <= spec.xu)
    assert _same(spec.decode(genome, name=preset.name), preset)


def test_random_schedules_round_trip_in_every_mode():
    rng = np.random.default_rng(0)
    for trial in range(200):
        steps = int(rng.integers(2, 60))
        max_depth = int(rng.integers(0, 12))
        allow_reuse = bool(rng.integers(0, 2))
        method = ["prune", "merge", "downsample"][trial % 3]
        actions = [FULL, *range(max_depth + 1)] + ([REUSE] if allow_reuse else [])
        cache = [FULL] + [actions[int(rng.integers(len(actions)))] for _ in range(steps - 1)]
        ratio = [DEFAULT_RATIO_LEVELS[int(rng.integers(len(DEFAULT_RATIO_LEVELS)))] for _ in range(steps)]
        s = Schedule("r", cache, ratio, method)
        joint = GenomeSpec(steps, max_depth, allow_reuse, method=method)
        assert _same(joint.decode(joint.encode(s)), s)
        cache_only = GenomeSpec(steps, max_depth, allow_reuse, method=method, search_ratio=False,
                                fixed_ratio=tuple(ratio))
        assert _same(cache_only.decode(cache_only.encode(s)), s)
        ratio_only = GenomeSpec(steps, max_depth, allow_reuse, method=method, search_cache=False,
                                fixed_cache=tuple(cache))
        assert _same(ratio_only.decode(ratio_only.encode(s)), s)
        assert joint.n_var == cache_only.n_var + ratio_only.n_var


def test_every_genome_in_bounds_decodes_to_a_valid_schedule():
    spec = GenomeSpec(12, max_depth=3, allow_reuse=True)
    rng = np.random.default_rng(1)
    for _ in range(100):
        x = rng.integers(spec.xl, spec.xu + 1)
        s = spec.decode(x)
        assert s.cache[0] == FULL and s.steps == 12
        assert np.array_equal(spec.encode(s), x)


def test_cache_genes_are_ordered_by_compute_and_ratio_genes_show_as_dato_codes():
    spec = GenomeSpec(4, max_depth=2)
    assert [spec.gene_to_action(g) for g in range(spec.full_gene + 1)] == [REUSE, 0, 1, 2, FULL]
    s = Schedule("x", (FULL, 0, REUSE, FULL), (0.0, 0.3, 0.5, 0.7), "prune")
    assert spec.ratio_codes(spec.encode(s)) == [0, 3, 5, 7]
    assert [dato_ratio_code(r) for r in (0.3, 0.4, 0.5, 0.6, 0.7)] == [3, 4, 5, 6, 7]
    no_reuse = GenomeSpec(4, max_depth=2, allow_reuse=False)
    assert no_reuse.xl[: no_reuse.n_cache_genes].min() == 1


def test_fit_makes_any_preset_a_seed_of_another_step_count():
    spec = GenomeSpec(8, max_depth=0, allow_reuse=False, method="merge")
    for path in find_schedules().values():
        s = spec.fit(Schedule.load(path))
        assert s.steps == 8 and s.method == "merge"
        assert REUSE not in s.cache and all(a in (FULL, 0) for a in s.cache)
        assert set(s.ratio) <= set(DEFAULT_RATIO_LEVELS)
        assert _same(spec.decode(spec.encode(s)), s)


def test_seed_generators_stay_inside_the_spec():
    spec = GenomeSpec(10, max_depth=1)
    for s in uniform_seeds(spec):
        assert _same(spec.decode(spec.encode(s)), s)
    rng = np.random.default_rng(3)
    for _ in range(50):
        g = segment_random_genome(spec, rng)
        assert np.all(g >= spec.xl) and np.all(g <= spec.xu)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=1), "steps = 1"),
        (dict(steps=8, max_depth=-1), "max_depth = -1"),
        (dict(steps=8, method="tome"), "method = 'tome'"),
        (dict(steps=8, search_cache=False, search_ratio=False), "nothing to search"),
        (dict(steps=8, ratio_levels=(0.5, 0.3)), "increasing order"),
        (dict(steps=8, ratio_levels=(0.0, 0.8)), "ratio level 0.8"),
        (dict(steps=8, method="none"), "has no ratio to search"),
        (dict(steps=8, search_cache=False, fixed_cache=(FULL,) * 3), "fixed_cache has 3 steps"),
    ],
)
def test_bad_specs_name_the_field(kwargs, message):
    with pytest.raises(GenomeError, match=message):
        GenomeSpec(**kwargs)


def test_schedules_outside_the_spec_are_refused_unless_snapped():
    spec = GenomeSpec(6, max_depth=1, allow_reuse=False)
    deep = Schedule("deep", (FULL, 3, 3, FULL, 3, 3), (0.4,) * 6, "prune")
    with pytest.raises(GenomeError, match="depth 3 is outside"):
        spec.encode(deep)
    with pytest.raises(GenomeError, match="has 5 steps"):
        spec.encode(Schedule.uniform(5, 2))
    with pytest.raises(GenomeError, match="not one of the searched levels"):
        spec.encode(Schedule("odd", (FULL,) * 6, (0.25,) * 6, "prune"))
    snapped = spec.decode(spec.encode(deep, snap=True))
    assert snapped.cache == (FULL, 1, 1, FULL, 1, 1)
    with pytest.raises(GenomeError, match="expected 11 genes"):
        spec.decode([0, 1])
    with pytest.raises(GenomeError, match="outside the bounds"):
        spec.decode([0] * spec.n_var)
