"""The search genome: a Schedule as a vector of small integers, and back.

One gene per step for the cache action and one per step for the token ratio
(either group can be fixed instead of searched, which is how DaTo's two stages
work: depth first, then ratio).

* Cache gene of step ``i`` (steps ``1..n-1``; step 0 is always full and has no
  gene), ordered by compute so that neighbouring values are similar schedules
  and SBX/PM move sensibly: ``0`` = reuse the previous UNet output whole,
  ``1 + d`` = cached at branch depth ``d`` (``d = 0..max_depth``),
  ``max_depth + 2`` = full. Without reuse the lower bound is ``1``.
* Ratio gene of step ``i`` (steps ``0..n-1``): an index into ``ratio_levels``,
  by default ``(0, 0.3, 0.4, 0.5, 0.6, 0.7)``. :meth:`GenomeSpec.ratio_codes`
  shows them as DaTo's integers (``3..7`` for 0.3-0.7, ``0`` for no reduction).

The step count is whatever the spec says: no step grid is hard-coded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dato.core.schedule import (
    FULL,
    MAX_DEPTH_LIMIT,
    METHODS,
    REUSE,
    Schedule,
    ScheduleError,
    ratio_allowed,
    ratio_range,
)

__all__ = ["GenomeError", "GenomeSpec", "DEFAULT_RATIO_LEVELS", "dato_ratio_code"]

DEFAULT_RATIO_LEVELS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)


class GenomeError(ScheduleError):
    """A schedule does not fit a genome spec, or a spec/genome is malformed."""


def dato_ratio_code(ratio: float) -> int:
    """DaTo's integer for a ratio: 0.3 -> 3 ... 0.7 -> 7, 0 -> 0 (tenths, rounded)."""
    return int(round(ratio * 10))


@dataclass(frozen=True)
class GenomeSpec:
    """Which genes exist and what their integers mean.

    ``search_cache``/``search_ratio`` choose the searched groups; a group that
    is not searched takes ``fixed_cache``/``fixed_ratio`` (default: every step
    full / no token reduction).
    """

    steps: int
    max_depth: int = 2
    allow_reuse: bool = True
    ratio_levels: tuple[float, ...] = DEFAULT_RATIO_LEVELS
    method: str = "prune"
    search_cache: bool = True
    search_ratio: bool = True
    fixed_cache: tuple[int, ...] | None = None
    fixed_ratio: tuple[float, ...] | None = None
    _bounds: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio_levels", tuple(float(r) for r in self.ratio_levels))
        if self.fixed_cache is not None:
            object.__setattr__(self, "fixed_cache", tuple(int(a) for a in self.fixed_cache))
        if self.fixed_ratio is not None:
            object.__setattr__(self, "fixed_ratio", tuple(float(r) for r in self.fixed_ratio))
        self._validate()
        lo, hi = [], []
        if self.search_cache:
            lo += [self.cache_gene_min] * (self.steps - 1)
            hi += [self.full_gene] * (self.steps - 1)
        if self.search_ratio:
            lo += [0] * self.steps
            hi += [len(self.ratio_levels) - 1] * self.steps
        object.__setattr__(self, "_bounds", (np.array(lo, dtype=int), np.array(hi, dtype=int)))

    def _validate(self) -> None:
        def bad(msg: str) -> GenomeError:
            return GenomeError(f"genome: {msg}")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 2 <= self.steps <= 1000:
            raise bad(f"steps = {self.steps!r}, expected an integer 2..1000")
        depth_ok = isinstance(self.max_depth, int) and not isinstance(self.max_depth, bool)
        if not depth_ok or not 0 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise bad(f"max_depth = {self.max_depth!r}, expected an integer 0..{MAX_DEPTH_LIMIT}")
        if self.method not in METHODS:
            raise bad(f"method = {self.method!r}, expected one of {', '.join(METHODS)}")
        if not self.search_cache and not self.search_ratio:
            raise bad("nothing to search: enable the cache genes, the ratio genes or both")
        levels = self.ratio_levels
        if not levels or list(levels) != sorted(set(levels)):
            raise bad(f"ratio_levels = {list(levels)!r}, expected distinct values in increasing order")
        for r in levels:
            if not ratio_allowed(self.method, r):
                raise bad(f"ratio level {r!r}: token method {self.method!r} needs {ratio_range(self.method)}")
        if self.search_ratio and self.method == "none":
            raise bad("token method 'none' has no ratio to search; search the cache only or pick a method")
        if self.fixed_cache is not None and len(self.fixed_cache) != self.steps:
            raise bad(f"fixed_cache has {len(self.fixed_cache)} steps, expected {self.steps}")
        if self.fixed_ratio is not None and len(self.fixed_ratio) != self.steps:
            raise bad(f"fixed_ratio has {len(self.fixed_ratio)} steps, expected {self.steps}")
        if self.fixed_ratio is not None:
            for i, r in enumerate(self.fixed_ratio):
                if not ratio_allowed(self.method, r):
                    raise bad(f"fixed_ratio[{i}] = {r!r}: {self.method!r} needs {ratio_range(self.method)}")

    # ----------------------------------------------------------- layout
    @property
    def cache_gene_min(self) -> int:
        return 0 if self.allow_reuse else 1

    @property
    def full_gene(self) -> int:
        return self.max_depth + 2

    @property
    def n_cache_genes(self) -> int:
        return self.steps - 1 if self.search_cache else 0

    @property
    def n_ratio_genes(self) -> int:
        return self.steps if self.search_ratio else 0

    @property
    def n_var(self) -> int:
        return self.n_cache_genes + self.n_ratio_genes

    @property
    def xl(self) -> np.ndarray:
        return self._bounds[0].copy()

    @property
    def xu(self) -> np.ndarray:
        return self._bounds[1].copy()

    @property
    def mode(self) -> str:
        return "joint" if self.search_cache and self.search_ratio else "cache" if self.search_cache else "ratio"

    # ------------------------------------------------------- genes <-> steps
    def action_to_gene(self, action: int) -> int:
        if action == FULL:
            return self.full_gene
        if action == REUSE:
            if not self.allow_reuse:
                raise GenomeError("genome: 'reuse' is not allowed in this search (allow_reuse is off)")
            return 0
        if not 0 <= action <= self.max_depth:
            raise GenomeError(f"genome: cache depth {action} is outside the searched 0..{self.max_depth}")
        return action + 1

    def gene_to_action(self, gene: int) -> int:
        gene = int(gene)
        if gene == self.full_gene:
            return FULL
        if gene == 0 and self.allow_reuse:
            return REUSE
        if 1 <= gene <= self.max_depth + 1:
            return gene - 1
        raise GenomeError(f"genome: cache gene {gene} is outside {self.cache_gene_min}..{self.full_gene}")

    def ratio_to_gene(self, ratio: float) -> int:
        for j, level in enumerate(self.ratio_levels):
            if math.isclose(level, ratio, abs_tol=1e-9):
                return j
        raise GenomeError(
            f"genome: ratio {ratio!r} is not one of the searched levels {list(self.ratio_levels)}"
        )

    def ratio_codes(self, genome: Sequence[int]) -> list[int]:
        """The decoded per-step ratios as DaTo's integers (0, 3..7)."""
        return [dato_ratio_code(r) for r in self.decode(genome).ratio]

    # ---------------------------------------------------------- encode/decode
    def encode(self, schedule: Schedule, snap: bool = False) -> np.ndarray:
        """The genome of ``schedule``; ``snap=True`` fits it first (see :meth:`fit`)."""
        if snap:
            schedule = self.fit(schedule)
        if schedule.steps != self.steps:
            raise GenomeError(
                f"genome: schedule {schedule.name!r} has {schedule.steps} steps, the search uses {self.steps}; "
                "resample it first (or encode with snap=True)"
            )
        if schedule.method != self.method and (self.search_ratio or any(r > 0 for r in schedule.ratio)):
            raise GenomeError(
                f"genome: schedule {schedule.name!r} uses token method {schedule.method!r}, the search uses "
                f"{self.method!r}"
            )
        genes: list[int] = []
        if self.search_cache:
            genes += [self.action_to_gene(a) for a in schedule.cache[1:]]
        elif schedule.cache != self.cache_template():
            raise GenomeError(f"genome: schedule {schedule.name!r} differs from the fixed cache actions")
        if self.search_ratio:
            genes += [self.ratio_to_gene(r) for r in schedule.ratio]
        elif not np.allclose(schedule.ratio, self.ratio_template()):
            raise GenomeError(f"genome: schedule {schedule.name!r} differs from the fixed ratios")
        return np.array(genes, dtype=int)

    def decode(self, genome: Sequence[int], name: str = "searched", provenance: Mapping[str, Any] | None = None
               ) -> Schedule:
        x = np.asarray(genome)
        if x.shape != (self.n_var,):
            raise GenomeError(f"genome: expected {self.n_var} genes, got shape {tuple(x.shape)}")
        if not np.all(np.isfinite(x)) or not np.all(np.equal(np.round(x), x)):
            raise GenomeError(f"genome: genes must be integers, got {x.tolist()}")
        x = x.astype(int)
        if np.any(x < self._bounds[0]) or np.any(x > self._bounds[1]):
            raise GenomeError(f"genome: genes {x.tolist()} are outside the bounds")
        if self.search_cache:
            cache = (FULL, *(self.gene_to_action(g) for g in x[: self.n_cache_genes]))
        else:
            cache = self.cache_template()
        if self.search_ratio:
            ratio = tuple(self.ratio_levels[g] for g in x[self.n_cache_genes:])
        else:
            ratio = self.ratio_template()
        return Schedule(name, cache, ratio, self.method, provenance=dict(provenance or {}))

    def key(self, genome: Sequence[int]) -> tuple[int, ...]:
        """Hashable identity of a genome (for duplicate detection and the evaluation archive)."""
        return tuple(int(round(float(g))) for g in genome)

    def cache_template(self) -> tuple[int, ...]:
        return self.fixed_cache if self.fixed_cache is not None else (FULL,) * self.steps

    def ratio_template(self) -> tuple[float, ...]:
        return self.fixed_ratio if self.fixed_ratio is not None else (0.0,) * self.steps

    def fit(self, schedule: Schedule) -> Schedule:
        """``schedule`` made encodable: resampled to this step count, depths above ``max_depth`` clipped,
        reuse turned into depth 0 when reuse is off, ratios snapped to the nearest level, the fixed
        group taken from the spec. Used to seed a search with presets of any step count."""
        s = schedule.resample(self.steps)
        if self.search_cache:
            cache = tuple(
                a if a == FULL else (0 if not self.allow_reuse else REUSE) if a == REUSE else min(a, self.max_depth)
                for a in s.cache
            )
        else:
            cache = self.cache_template()
        if self.search_ratio:
            levels = np.array(self.ratio_levels)
            ratio = tuple(float(levels[np.abs(levels - r).argmin()]) for r in s.ratio)
        else:
            ratio = self.ratio_template()
        return Schedule(s.name, cache, ratio, self.method, description=s.description, provenance=s.provenance)

    # ------------------------------------------------------------- records
    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "max_depth": self.max_depth, "allow_reuse": self.allow_reuse,
            "ratio_levels": list(self.ratio_levels), "method": self.method, "mode": self.mode,
            "fixed_cache": list(self.fixed_cache) if self.fixed_cache is not None else None,
            "fixed_ratio": list(self.fixed_ratio) if self.fixed_ratio is not None else None,
            "cache_gene_meaning": "0 reuse, 1+d depth d, max_depth+2 full (steps 1..n-1)",
            "ratio_gene_meaning": "index into ratio_levels (steps 0..n-1)",
        }
