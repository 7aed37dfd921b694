"""Validated settings of one search: everything that decides its result, and nothing else.

Unknown fields are refused and every message names the field and the value,
so the CLI, the Search tab and the API route can show it as it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dato.core.layout import DEEPEST_KNOWN_DEPTH
from dato.core.schedule import METHODS, ScheduleError, builtin_schedule_dir, ratio_allowed, ratio_range
from dato.generators.search.genome import DEFAULT_RATIO_LEVELS
from dato.generators.search.objectives import COST_CHOICES, FIDELITY_METRICS, QUALITY_CHOICES

__all__ = ["SearchSettings", "SettingsError", "MODES", "DEFAULT_PROMPTS", "default_results_dir"]

MODES = ("joint", "two-stage", "cache", "ratio")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")

# A small generic set for the headless default; the Search tab offers the user's own and ImageNet class names.
DEFAULT_PROMPTS = (
    "a photo of a red fox in the snow",
    "a watercolor painting of a lighthouse at dusk",
    "a bowl of ramen on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon",
    "a cozy living room with a fireplace, interior design",
    "a portrait of an old fisherman, dramatic light",
    "a futuristic city skyline at night, neon lights",
    "a macro photo of a dew-covered spider web",
)


class SettingsError(ScheduleError):
    """A search setting is invalid; the message names the field and the value."""


def default_results_dir() -> Path:
    """``schedules/searches/`` of this checkout: results sit beside the schedules."""
    return builtin_schedule_dir() / "searches"


@dataclass(frozen=True)
class SearchSettings:
    """One search. Defaults are small enough for a CPU; raise ``population``/``generations`` on a GPU."""

    steps: int = 8
    mode: str = "joint"  # joint | two-stage (cache, then ratio) | cache | ratio
    method: str = "prune"
    max_depth: int = 2
    allow_reuse: bool = True
    ratio_levels: tuple[float, ...] = DEFAULT_RATIO_LEVELS
    stage1_ratio: float = 0.0  # token ratio while the cache actions are searched alone (two-stage, cache)
    base_schedule: str | None = None  # fixed cache actions for mode 'ratio' (preset name or .json path)
    quality: str = "fidelity"  # fidelity | imagereward
    fidelity_metric: str = "auto"  # psnr | ssim (pixels) | snr (latents) | auto: psnr when images exist
    imagereward_fallback: str = "fidelity"  # what to do when ImageReward cannot load: fidelity | error
    cost: str = "macs"  # macs | time
    time_repeats: int = 3
    min_quality: float | None = None
    population: int = 12
    generations: int = 6
    seed: int = 0
    samples: int = 2
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seed_presets: bool = True
    seed_uniform: bool = True
    seed_schedules: tuple[str, ...] = ()  # extra schedules (names or paths) to put in the first population
    preset_dirs: tuple[str, ...] = ()
    run_id: str | None = None
    results_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # caller's notes (sampler, size...), stored as is

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio_levels", tuple(float(r) for r in self.ratio_levels))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "seed_schedules", tuple(self.seed_schedules))
        object.__setattr__(self, "preset_dirs", tuple(str(d) for d in self.preset_dirs))
        self.validate()

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        def bad(name: str, expected: str) -> SettingsError:
            return SettingsError(f"search setting {name} = {getattr(self, name)!r}: expected {expected}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.steps) or not 2 <= self.steps <= 1000:
            raise bad("steps", "an integer 2..1000")
        if self.mode not in MODES:
            raise bad("mode", f"one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise bad("method", f"one of {', '.join(METHODS)}")
        if self.method == "none" and self.mode in ("joint", "two-stage", "ratio"):
            raise SettingsError(
                f"search setting mode = {self.mode!r} searches token ratios but method = 'none'; "
                "use mode 'cache' or choose a token method"
            )
        if not is_int(self.max_depth) or not 0 <= self.max_depth <= DEEPEST_KNOWN_DEPTH:
            raise bad("max_depth", f"an integer 0..{DEEPEST_KNOWN_DEPTH} (branch depths)")
        if not isinstance(self.allow_reuse, bool):
            raise bad("allow_reuse", "true or false")
        if not self.ratio_levels or list(self.ratio_levels) != sorted(set(self.ratio_levels)):
            raise bad("ratio_levels", "distinct ratios in increasing order")
        rule_of = self.method if self.method != "none" else "prune"
        for r in self.ratio_levels:
            if not ratio_allowed(rule_of, r):
                raise bad("ratio_levels", f"ratios allowed for {self.method!r} ({ratio_range(rule_of)})")
        if not isinstance(self.stage1_ratio, (int, float)) or isinstance(self.stage1_ratio, bool) or \
                not ratio_allowed(rule_of, float(self.stage1_ratio)):
            raise bad("stage1_ratio", f"a ratio {ratio_range(rule_of)}")
        if self.method == "none" and self.stage1_ratio:
            raise bad("stage1_ratio", "0 with method 'none'")
        if self.mode == "ratio" and not self.base_schedule:
            raise SettingsError("search setting base_schedule is required with mode 'ratio' "
                                "(the cache actions to keep while the ratios are searched)")
        if self.quality not in QUALITY_CHOICES:
            raise bad("quality", f"one of {', '.join(QUALITY_CHOICES)}")
        if self.fidelity_metric not in (*FIDELITY_METRICS, "auto"):
            raise bad("fidelity_metric", f"one of {', '.join(FIDELITY_METRICS)} or auto")
        if self.imagereward_fallback not in ("fidelity", "error"):
            raise bad("imagereward_fallback", "'fidelity' or 'error'")
        if self.cost not in COST_CHOICES:
            raise bad("cost", f"one of {', '.join(COST_CHOICES)}")
        if not is_int(self.time_repeats) or not 1 <= self.time_repeats <= 20:
            raise bad("time_repeats", "an integer 1..20")
        if self.min_quality is not None and (
            not isinstance(self.min_quality, (int, float)) or isinstance(self.min_quality, bool)
            or not math.isfinite(self.min_quality)
        ):
            raise bad("min_quality", "a finite number or null")
        if not is_int(self.population) or not 4 <= self.population <= 1000:
            raise bad("population", "an integer 4..1000")
        if not is_int(self.generations) or not 1 <= self.generations <= 10000:
            raise bad("generations", "an integer 1..10000")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise bad("seed", "an integer 0..2**32-1")
        if not is_int(self.samples) or not 1 <= self.samples <= 1024:
            raise bad("samples", "an integer 1..1024 (images per evaluation)")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise bad("prompts", "at least one non-empty prompt")
        if self.run_id is not None and (not isinstance(self.run_id, str) or not _RUN_ID_RE.match(self.run_id)):
            raise bad("run_id", "1-80 letters, digits, '_', '-' or '.'")
        if not isinstance(self.extra, Mapping):
            raise bad("extra", "an object")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("ratio_levels", "prompts", "seed_schedules", "preset_dirs"):
            data[key] = list(data[key])
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        if not isinstance(data, Mapping):
            raise SettingsError(f"search settings: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"search settings: unknown field(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(sorted(known))}")
        kwargs = dict(data)
        for key in ("ratio_levels", "prompts", "seed_schedules", "preset_dirs"):
            if key in kwargs:
                value = kwargs[key]
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise SettingsError(f"search setting {key} = {value!r}: expected a list")
                kwargs[key] = tuple(value)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - defensive
            raise SettingsError(f"search settings: {exc}") from None

    def with_(self, **changes: Any) -> SearchSettings:
        return replace(self, **changes)

    def identity_hash(self) -> str:
        """Hash of everything that changes the result (not where it is written), for safe resumes."""
        data = self.to_dict()
        for key in ("run_id", "results_dir", "extra"):
            data.pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def pairs(self) -> list[tuple[str, int]]:
        """The (prompt, seed) pairs every evaluation uses, fixed for the whole search."""
        return [(self.prompts[i % len(self.prompts)], self.seed + i) for i in range(self.samples)]
