"""The pymoo side: a ``Problem`` over the genome, a seeded first population, NSGA-II.

The problem knows the genome's bounds and calls a pluggable evaluation
callable (``schedule -> (F, G)``); it knows nothing of UNets or the WebUI.
Everything random draws from the algorithm's own ``random_state`` (seeded by
the search seed), so a pickled algorithm resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from dato.core.schedule import FULL, REUSE, Schedule
from dato.generators.search.genome import GenomeSpec

__all__ = [
    "EvalFn",
    "ScheduleProblem",
    "SeededSampling",
    "SeenDuplicateElimination",
    "SeedSchedule",
    "build_nsga2",
    "segment_random_genome",
    "uniform_seeds",
]

EvalFn = Callable[[Schedule, np.ndarray], tuple[Sequence[float], Sequence[float]]]


class ScheduleProblem(Problem):
    """Minimise ``(-quality, cost)`` over genomes of ``spec``; optional constraints ``G <= 0``.

    ``evaluate_fn(schedule, genome) -> (F, G)`` is called once per row. It is
    not pickled with the problem (it usually holds a model); after unpickling,
    attach it again with :meth:`attach`.
    """

    def __init__(self, spec: GenomeSpec, evaluate_fn: EvalFn | None = None, n_obj: int = 2,
                 n_constr: int = 0) -> None:
        super().__init__(n_var=spec.n_var, n_obj=n_obj, n_ieq_constr=n_constr, xl=spec.xl, xu=spec.xu,
                         vtype=int)
        self.spec = spec
        self._evaluate_fn = evaluate_fn

    def attach(self, evaluate_fn: EvalFn) -> None:
        self._evaluate_fn = evaluate_fn

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_evaluate_fn"] = None
        return state

    def _evaluate(self, X, out, *args, **kwargs):
        if self._evaluate_fn is None:
            raise RuntimeError("ScheduleProblem has no evaluation callable; call attach(evaluate_fn) first")
        F, G = [], []
        for x in np.asarray(X):
            genome = np.round(x).astype(int)
            f, g = self._evaluate_fn(self.spec.decode(genome), genome)
            F.append(list(f))
            G.append(list(g))
        out["F"] = np.array(F, dtype=float)
        if self.n_ieq_constr:
            out["G"] = np.array(G, dtype=float)


class SeenDuplicateElimination(DefaultDuplicateElimination):
    """pymoo's duplicate elimination, plus every genome the algorithm has already been told about.

    ``seen`` lives inside the algorithm (and its checkpoint), so resumed and
    uninterrupted runs make the same decisions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, ...]] = set()

    def remember(self, X: np.ndarray) -> None:
        for x in np.atleast_2d(X):
            self.seen.add(tuple(int(round(float(v))) for v in x))

    def _do(self, pop, other, is_duplicate):
        is_duplicate = super()._do(pop, other, is_duplicate)
        if other is None and self.seen:
            for i, x in enumerate(pop.get("X")):
                if tuple(int(round(float(v))) for v in x) in self.seen:
                    is_duplicate[i] = True
        return is_duplicate


@dataclass(frozen=True)
class SeedSchedule:
    """A schedule put into the first population, with where it came from."""

    name: str
    origin: str  # baseline | uniform | preset | user | random
    genome: tuple[int, ...]


def uniform_seeds(spec: GenomeSpec, intervals: Sequence[int] | None = None, ratios: Sequence[float] = (0.0,)
                  ) -> list[Schedule]:
    """DeepCache uniform schedules ("full every k, cached at depth d between") expressible in ``spec``."""
    intervals = intervals or sorted({2, 3, 4, 5, max(2, spec.steps // 2)})
    out: list[Schedule] = []
    for ratio in ratios:
        for k in intervals:
            if not 2 <= k <= spec.steps:
                continue
            for d in range(spec.max_depth + 1):
                s = Schedule.uniform(spec.steps, k, d, ratio, spec.method if spec.method != "none" else "none")
                out.append(spec.fit(s))
    return out


def segment_random_genome(spec: GenomeSpec, rng: np.random.Generator) -> np.ndarray:
    """DaTo's segment sampling, generalised: early/middle/late thirds (DaTo's 15/20/15 of 50 steps),
    each with a few full steps at random places and the other steps cached at a random depth or
    reused; per-segment token ratio with per-step jitter. Any step count."""
    n = spec.steps
    bounds = [0, round(n * 0.3), round(n * 0.7), n]
    cache = [FULL] * n
    ratio_idx = [0] * n
    n_levels = len(spec.ratio_levels)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        length = b - a
        if length <= 0:
            continue
        n_full = int(rng.integers(0, max(1, length // 3) + 1))
        full_at = set(rng.choice(length, size=min(n_full, length), replace=False).tolist()) if n_full else set()
        depth = int(rng.integers(0, spec.max_depth + 1))
        level = int(rng.integers(0, n_levels))
        for j in range(length):
            i = a + j
            if j in full_at:
                cache[i] = FULL
            elif spec.allow_reuse and rng.random() < 0.25:
                cache[i] = REUSE
            else:
                cache[i] = depth
            jitter = int(rng.integers(-1, 2)) if n_levels > 1 else 0
            ratio_idx[i] = int(np.clip(level + jitter, 0, n_levels - 1))
    cache[0] = FULL
    schedule = Schedule("random", tuple(cache), tuple(spec.ratio_levels[j] for j in ratio_idx),
                        spec.method if spec.search_ratio else spec.method)
    if not spec.search_cache:
        schedule = Schedule("random", spec.cache_template(), schedule.ratio, spec.method)
    if not spec.search_ratio:
        schedule = Schedule("random", schedule.cache, spec.ratio_template(), spec.method)
    return spec.encode(schedule)


class SeededSampling(Sampling):
    """First population: the given seeds (in order, duplicates dropped), topped up with segment samples.

    When there are more seeds than places, the first ``n`` seeds are kept:
    callers order them by importance (baseline, uniform, presets, user).
    """

    def __init__(self, seeds: Sequence[SeedSchedule]) -> None:
        super().__init__()
        self.seeds = list(seeds)

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        spec: GenomeSpec = problem.spec
        rows: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        for seed in self.seeds:
            if len(rows) >= n_samples:
                break
            if seed.genome not in seen:
                seen.add(seed.genome)
                rows.append(seed.genome)
        attempts = 0
        while len(rows) < n_samples and attempts < 100 * n_samples:
            attempts += 1
            if attempts % 2 == 0:  # half segment-structured, half uniform over the bounds
                g = tuple(int(v) for v in segment_random_genome(spec, random_state))
            else:
                g = tuple(int(v) for v in random_state.integers(spec.xl, spec.xu + 1))
            if g not in seen:
                seen.add(g)
                rows.append(g)
        return np.array(rows, dtype=float).reshape(len(rows), spec.n_var)


def build_nsga2(population: int, seeds: Sequence[SeedSchedule]) -> NSGA2:
    """NSGA-II for integer genes: SBX + polynomial mutation rounded to integers, duplicates eliminated."""
    return NSGA2(
        pop_size=population,
        sampling=SeededSampling(seeds),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=15, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=SeenDuplicateElimination(),
    )
