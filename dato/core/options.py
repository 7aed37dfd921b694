"""The script-arguments model: one ordered, validated list shared by the WebUI accordion, the API and the infotext.

The WebUI hands an AlwaysOn script its controls' values positionally, and the
API's ``alwayson_scripts`` takes the same positions. :data:`ARG_FIELDS` is the
single definition of that order; the accordion builds its controls from it,
:meth:`DatoArgs.from_args` reads it back (positional, or one named ``dict``
with unknown fields refused), and :func:`infotext_params` /
:func:`normalize_pasted` write and prepare the PNG parameters under stable keys (the
WebUI then sets each control from its key).

Nothing here imports the WebUI; a schedule is resolved through a ``load``
callable so that the glue decides where user schedules live.

Length: the order, the coercion of every kind and the infotext keys of the same
arguments belong together; split, a new argument would be added in three places.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dato.core.layout import SD1_LAYOUT
from dato.core.schedule import MAX_DEPTH_LIMIT, METHODS, RATIO_LIMIT, Schedule, ScheduleError, ratio_allowed, short_repr
from dato.core.speed import TargetError, check_target
from dato.core.tokens import PRUNE_VARIANTS

__all__ = [
    "ARG_FIELDS",
    "ARG_NAMES",
    "DatoArgs",
    "HR_MODES",
    "METHOD_CHOICES",
    "PassSettings",
    "SCHEDULE_NONE",
    "SCHEDULE_UNIFORM",
    "RESERVED_SCHEDULE_NAMES",
    "INFOTEXT_KEYS",
    "build_schedule",
    "infotext_params",
    "normalize_pasted",
]

#: ``method`` value meaning "use the schedule file's own method and per-step ratios".
FROM_SCHEDULE = "schedule"
#: token-method values, with the labels the accordion shows.
METHOD_CHOICES: tuple[tuple[str, str], ...] = (
    ("DaTo prune", "prune"),
    ("ToMe merge", "merge"),
    ("ToDo downsample", "downsample"),
    ("As scheduled", FROM_SCHEDULE),
    ("Off", "none"),
)
#: ``schedule`` values that are not files: every step full, and DeepCache's uniform rule.
SCHEDULE_NONE = "none"
SCHEDULE_UNIFORM = "uniform"
#: Names an uploaded schedule may not take (case-insensitive).
RESERVED_SCHEDULE_NAMES = frozenset({SCHEDULE_NONE, SCHEDULE_UNIFORM})
#: What the hires-fix pass does: reuse the first pass's settings, nothing, or its own settings.
HR_MODES: tuple[tuple[str, str], ...] = (("Same as first pass", "same"), ("Off", "off"), ("Own settings", "own"))
DOWNSAMPLE_CHOICES = (1, 2, 4, 8)
ADAPTIVE_CAP_LIMIT = 20  # adaptive caching: the most cached steps in a row the argument allows
MAX_INTERVAL = 1000

_METHOD_ALIASES = {label.lower(): value for label, value in METHOD_CHOICES}
_METHOD_ALIASES.update({value: value for _, value in METHOD_CHOICES})
_METHOD_ALIASES.update({"off": "none", "dato": "prune", "tome": "merge", "todo": "downsample"})
_HR_ALIASES = {label.lower(): value for label, value in HR_MODES}
_HR_ALIASES.update({value: value for _, value in HR_MODES})


class ArgsError(ScheduleError):
    """Script arguments are invalid; the message names the argument (position and name) and the value."""


@dataclass(frozen=True)
class ArgField:
    """One script argument: its name (API dict key), position, type and what it means."""

    name: str
    kind: str  # bool | method | ratio | schedule | int | downsample | hr_mode | target | threshold | cap
    help: str


ARG_FIELDS: tuple[ArgField, ...] = (
    ArgField("enabled", "bool", "turn the extension on for this generation"),
    ArgField("method", "method", "token method: prune (DaTo), merge (ToMe), downsample (ToDo), schedule "
                                 "(the schedule's own method and per-step ratios) or none"),
    ArgField("ratio", "ratio", "token-reduction ratio for every step, 0-0.75 (prune/merge < 0.75)"),
    ArgField("schedule", "schedule", "cache schedule: a preset or saved name, 'uniform' (every N steps) or 'none'"),
    ArgField("interval", "interval", "uniform schedule: a full step every N steps"),
    ArgField("depth", "depth", "uniform schedule: branch depth of the cached steps (0 = shallowest, fastest)"),
    ArgField("max_downsample", "downsample", "token reduction on levels with at most this downsample factor "
                                             "(1 = 64x64 at 512 px only)"),
    ArgField("hr_mode", "hr_mode", "hires-fix pass: same (first-pass settings), off, or own (the hr_* arguments)"),
    ArgField("hr_method", "method", "hires pass (own): token method"),
    ArgField("hr_ratio", "ratio", "hires pass (own): token ratio"),
    ArgField("hr_schedule", "schedule", "hires pass (own): cache schedule"),
    ArgField("hr_interval", "interval", "hires pass (own): uniform N"),
    ArgField("hr_depth", "depth", "hires pass (own): uniform depth"),
    ArgField("prune_variant", "prune_variant", "how prune follows the DaTo paper: shared-plan (one plan per level, "
                                               "base-token restore), base-restore (per block) or faithful"),
    ArgField("downsample_factor", "factor", "downsample (ToDo): fixed key/value factor on the first level, "
                                            "grid int(h / factor); 0 = from the ratio"),
    ArgField("downsample_factor2", "factor", "downsample (ToDo): factor on the second level (0 = the first's)"),
    ArgField("downsample_stop", "fraction", "downsample (ToDo): stop after this fraction of the steps (1 = never)"),
    ArgField("speed_target", "target", "make it N x faster (1..100; 0 = off): replaces the schedule and ratio with "
                                       "the best-quality rule that meets N at the run's steps, sampler and size"),
    ArgField("adaptive", "threshold", "adaptive caching (0 = off, else 0..1): a step is cached at depth 0 when the "
                                      "first block's output changed by less than this since the last full step; "
                                      "replaces the schedule's cache cells, keeps its token ratios"),
    ArgField("adaptive_cap", "cap", "adaptive caching: at most this many cached steps in a row (1..20)"),
)
ARG_NAMES: tuple[str, ...] = tuple(f.name for f in ARG_FIELDS)


@dataclass(frozen=True)
class PassSettings:
    """What one sampling pass uses."""

    method: str = "prune"
    ratio: float = 0.4
    schedule: str = "balanced"
    interval: int = 5
    depth: int = 0
    max_downsample: int = 1
    prune_variant: str = "shared-plan"
    downsample_factor: float = 0.0
    downsample_factor2: float = 0.0
    downsample_stop: float = 1.0
    target: float = 0.0
    adaptive: float = 0.0
    adaptive_cap: int = 3

    def patch_options(self) -> dict[str, Any]:
        """The :func:`dato.core.patch.apply_patch` keywords these settings give."""
        return {"max_downsample": self.max_downsample, "prune_variant": self.prune_variant,
                "downsample_factor": self.downsample_factor, "downsample_factor2": self.downsample_factor2,
                "downsample_stop": self.downsample_stop, "adaptive": self.adaptive or None,
                "adaptive_cap": self.adaptive_cap}


@dataclass(frozen=True)
class DatoArgs:
    """The validated script arguments, in :data:`ARG_FIELDS` order."""

    enabled: bool = False
    method: str = "prune"
    ratio: float = 0.4
    schedule: str = "balanced"
    interval: int = 5
    depth: int = 0
    max_downsample: int = 1
    hr_mode: str = "same"
    hr_method: str = "prune"
    hr_ratio: float = 0.4
    hr_schedule: str = "balanced"
    hr_interval: int = 3
    hr_depth: int = 0
    prune_variant: str = "shared-plan"
    downsample_factor: float = 0.0
    downsample_factor2: float = 0.0
    downsample_stop: float = 1.0
    speed_target: float = 0.0
    adaptive: float = 0.0
    adaptive_cap: int = 3

    def __post_init__(self) -> None:
        for position, spec in enumerate(ARG_FIELDS):
            value = _coerce(spec, getattr(self, spec.name), position)
            object.__setattr__(self, spec.name, value)
        if self.speed_target and self.adaptive:
            raise ArgsError(f"speed_target = {self.speed_target:g} and adaptive = {self.adaptive:g}: use one of the "
                            "two (a target fixes the speed-up before the run; adaptive caching decides it during "
                            "the run)")

    # ------------------------------------------------------------- builders
    @classmethod
    def from_args(cls, args: Sequence[Any] | Mapping[str, Any], defaults: DatoArgs | None = None) -> DatoArgs:
        """From the positional script args (``None`` = default), or one named dict as the first (only) argument.

        The WebUI pads a short API ``args`` list with the UI defaults, so
        ``[{"enabled": true, "ratio": 0.5}]`` arrives as the dict followed by
        defaults; the dict's keys win, the rest keep ``defaults``. A dict
        without ``enabled`` means enabled.
        """
        base = defaults or cls()
        if isinstance(args, Mapping):
            return cls.from_dict(args, base)
        values = list(args)
        if values and isinstance(values[0], Mapping):
            named = values[0]
            positional = cls._merge_positional(values[1:len(ARG_FIELDS)], base, offset=1, allow_bad=True)
            return cls.from_dict(named, replace(positional, enabled=base.enabled))
        if len(values) > len(ARG_FIELDS):
            raise ArgsError(
                f"got {len(values)} arguments; sd-webui-dato takes at most {len(ARG_FIELDS)}: {', '.join(ARG_NAMES)}"
            )
        return cls._merge_positional(values, base, offset=0)

    @classmethod
    def _merge_positional(cls, values: Sequence[Any], base: DatoArgs, offset: int,
                          allow_bad: bool = False) -> DatoArgs:
        merged = {}
        for i, value in enumerate(values):
            spec = ARG_FIELDS[offset + i]
            if value is None:
                continue
            if allow_bad:  # padding after a named dict: UI defaults, never user input
                try:
                    merged[spec.name] = _coerce(spec, value, offset + i)
                except ArgsError:
                    continue
            else:
                merged[spec.name] = _coerce(spec, value, offset + i)
        return replace(base, **merged)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: DatoArgs | None = None) -> DatoArgs:
        """Named form; unknown keys are refused so a typo never passes silently."""
        unknown = sorted(str(k) for k in data if k not in ARG_NAMES)
        if unknown:
            raise ArgsError(f"unknown argument(s) {', '.join(map(repr, unknown))}; known: {', '.join(ARG_NAMES)}")
        base = defaults or cls()
        values = {k: v for k, v in data.items() if v is not None}
        values.setdefault("enabled", True)
        return replace(base, **values)

    # ------------------------------------------------------------- views
    def to_args(self) -> list[Any]:
        return [getattr(self, name) for name in ARG_NAMES]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ARG_NAMES}

    def first_pass(self) -> PassSettings:
        return PassSettings(self.method, self.ratio, self.schedule, self.interval, self.depth, self.max_downsample,
                            *self._token_options(), self.speed_target, self.adaptive, self.adaptive_cap)

    def _token_options(self) -> tuple:
        return self.prune_variant, self.downsample_factor, self.downsample_factor2, self.downsample_stop

    def hires_pass(self) -> PassSettings | None:
        """Settings of the hires-fix pass, or ``None`` when the extension stays off for it."""
        if self.hr_mode == "off":
            return None
        if self.hr_mode == "same":
            return self.first_pass()
        return PassSettings(self.hr_method, self.hr_ratio, self.hr_schedule, self.hr_interval, self.hr_depth,
                            self.max_downsample, *self._token_options(), adaptive=self.adaptive,
                            adaptive_cap=self.adaptive_cap)

    def with_overrides(self, overrides: Mapping[str, Any]) -> DatoArgs:
        """Apply X/Y/Z-style overrides (named, validated)."""
        unknown = sorted(set(overrides) - set(ARG_NAMES))
        if unknown:
            raise ArgsError(f"unknown override(s) {', '.join(map(repr, unknown))}")
        return replace(self, **dict(overrides))


# ------------------------------------------------------------------ coercion
def _where(spec: ArgField, position: int) -> str:
    return f"argument {position} ({spec.name})"


def _coerce(spec: ArgField, value: Any, position: int) -> Any:
    where = _where(spec, position)
    kind = spec.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ArgsError(f"{where} = {short_repr(value)}: expected true or false")
    if kind == "method":
        key = str(value).strip().lower() if isinstance(value, str) else None
        if key not in _METHOD_ALIASES:
            raise ArgsError(f"{where} = {short_repr(value)}: expected one of {', '.join(v for _, v in METHOD_CHOICES)}")
        return _METHOD_ALIASES[key]
    if kind == "hr_mode":
        key = str(value).strip().lower() if isinstance(value, str) else None
        if key not in _HR_ALIASES:
            raise ArgsError(f"{where} = {short_repr(value)}: expected one of {', '.join(v for _, v in HR_MODES)}")
        return _HR_ALIASES[key]
    if kind == "ratio":
        number = _number(value, where)
        if not 0.0 <= number <= RATIO_LIMIT:
            raise ArgsError(f"{where} = {short_repr(value)}: expected a number 0..{RATIO_LIMIT}")
        return number
    if kind == "schedule":
        if not isinstance(value, str) or not value.strip():
            raise ArgsError(f"{where} = {short_repr(value)}: expected a schedule name, 'uniform' or 'none'")
        text = value.strip()
        lowered = text.lower()
        if lowered in (SCHEDULE_NONE, SCHEDULE_UNIFORM):
            return lowered
        return text
    if kind in ("interval", "depth", "downsample"):
        number = _number(value, where)
        if number != int(number):
            raise ArgsError(f"{where} = {short_repr(value)}: expected a whole number")
        integer = int(number)
        if kind == "interval" and not 1 <= integer <= MAX_INTERVAL:
            raise ArgsError(f"{where} = {short_repr(value)}: expected 1..{MAX_INTERVAL}")
        if kind == "depth" and not 0 <= integer <= MAX_DEPTH_LIMIT:
            raise ArgsError(f"{where} = {short_repr(value)}: expected 0..{MAX_DEPTH_LIMIT} "
                            f"(SD1.x: 0..{SD1_LAYOUT.max_depth})")
        if kind == "downsample" and integer not in DOWNSAMPLE_CHOICES:
            raise ArgsError(f"{where} = {short_repr(value)}: expected one of "
                            f"{', '.join(map(str, DOWNSAMPLE_CHOICES))}")
        return integer
    if kind == "prune_variant":
        key = value.strip().lower() if isinstance(value, str) else None
        if key not in PRUNE_VARIANTS:
            raise ArgsError(f"{where} = {value!r}: expected one of {', '.join(PRUNE_VARIANTS)}")
        return key
    if kind == "factor":
        number = _number(value, where)
        if not (number == 0 or 1 <= number <= 16):
            raise ArgsError(f"{where} = {value!r}: expected 0 (from the ratio) or a factor 1..16")
        return number
    if kind == "fraction":
        number = _number(value, where)
        if not 0 <= number <= 1:
            raise ArgsError(f"{where} = {value!r}: expected a fraction of the steps 0..1")
        return number
    if kind == "threshold":
        number = _number(value, where)
        if not 0 <= number <= 1:
            raise ArgsError(f"{where} = {short_repr(value)}: expected a threshold 0..1 (0 = off)")
        return number
    if kind == "cap":
        number = _number(value, where)
        if number != int(number) or not 1 <= number <= ADAPTIVE_CAP_LIMIT:
            raise ArgsError(f"{where} = {short_repr(value)}: expected a whole number 1..{ADAPTIVE_CAP_LIMIT}")
        return int(number)
    if kind == "target":
        number = _number(value, where)
        if number == 0:
            return 0.0
        try:
            return check_target(number, where)
        except TargetError as exc:
            raise ArgsError(f"{exc} or 0 = off") from None
    raise AssertionError(kind)


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ArgsError(f"{where} = {short_repr(value)}: expected a number") from None
    try:  # an integer too large for a float is refused like a non-number
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
        raise ArgsError(f"{where} = {short_repr(value)}: expected a number")
    return float(value)


# ------------------------------------------------------------------ schedules
def build_schedule(settings: PassSettings, load: Callable[[str], Schedule]) -> tuple[Schedule, Schedule | None]:
    """``(schedule to apply, the named schedule file it came from or None)`` for one pass.

    The token method and ratio replace the schedule's unless ``method`` is
    ``"schedule"``; a ratio a method cannot take raises :class:`ArgsError`.
    """
    source: Schedule | None = None
    if settings.schedule == SCHEDULE_NONE:
        base = Schedule.full(1, 0.0, "none", name="none")
    elif settings.schedule == SCHEDULE_UNIFORM:
        base = Schedule.uniform(max(50, settings.interval), settings.interval, settings.depth, 0.0, "none")
    else:
        source = base = load(settings.schedule)
    if settings.method == FROM_SCHEDULE:
        return base, source
    method, ratio = settings.method, float(settings.ratio)
    if method not in METHODS:
        raise ArgsError(f"method = {short_repr(method)}, expected one of {', '.join(METHODS)}")
    if method == "none":
        ratio = 0.0
    if not ratio_allowed(method, ratio):
        raise ArgsError(
            f"ratio = {ratio:g} is too large for {short_repr(method)}: prune and merge keep one token per 2x2 patch, "
            f"so they need ratio < {RATIO_LIMIT}; use 0.7 or the ToDo downsample method"
        )
    rule = dict(base.rule) if base.rule else None
    if rule is not None:
        rule["ratio"] = ratio
    return replace(base, method=method, ratio=(ratio,) * base.steps, rule=rule), source


def pass_summary(schedule: Schedule, steps: int) -> dict[str, Any]:
    """Per-step view of ``schedule`` at ``steps`` steps (for previews): actions, ratios, counts."""
    resampled = schedule.resample(steps)
    uses_tokens = resampled.method != "none" and any(r > 0 for r in resampled.ratio)
    return {
        "steps": steps,
        "method": resampled.method if uses_tokens else "none",
        "cache": [int(a) for a in resampled.cache],
        "ratio": [round(r, 4) if uses_tokens else 0.0 for r in resampled.ratio],
        "preview": resampled.preview(),
        "full": resampled.full_steps,
        "cached": steps - resampled.full_steps,
    }


# ------------------------------------------------------------------ infotext
#: PNG-parameter key of every argument; the accordion's paste fields use the same names.
INFOTEXT_KEYS: dict[str, str] = {
    "enabled": "DaTo", "method": "DaTo method", "ratio": "DaTo ratio", "schedule": "DaTo schedule",
    "interval": "DaTo interval", "depth": "DaTo depth", "max_downsample": "DaTo max downsample",
    "hr_mode": "DaTo hires", "hr_method": "DaTo hires method", "hr_ratio": "DaTo hires ratio",
    "hr_schedule": "DaTo hires schedule", "hr_interval": "DaTo hires interval", "hr_depth": "DaTo hires depth",
    "prune_variant": "DaTo prune variant", "downsample_factor": "DaTo ToDo factor",
    "downsample_factor2": "DaTo ToDo factor 2", "downsample_stop": "DaTo ToDo stop after",
    "speed_target": "DaTo speed target", "adaptive": "DaTo adaptive", "adaptive_cap": "DaTo adaptive cap",
}
#: Arguments written to the infotext only where they differ from this default (and restored to it on paste).
_OPTIONAL_KEYS: dict[str, Any] = {"prune_variant": "shared-plan", "downsample_factor": 0.0,
                                  "downsample_factor2": 0.0, "downsample_stop": 1.0, "adaptive": 0.0,
                                  "adaptive_cap": 3}
#: content hash of a named schedule file, beside its name; for a speed target, of the schedule it gave.
HASH_KEYS: dict[str, str] = {"schedule": "DaTo schedule hash", "hr_schedule": "DaTo hires schedule hash",
                             "speed_target": "DaTo speed target hash"}


def _encode_pass(settings: PassSettings, source: Schedule | None, prefix: str) -> dict[str, Any]:
    key = lambda name: INFOTEXT_KEYS[prefix + name]  # noqa: E731
    out: dict[str, Any] = {key("method"): settings.method}
    if settings.method not in ("none", FROM_SCHEDULE):
        out[key("ratio")] = round(float(settings.ratio), 4)
    out[key("schedule")] = settings.schedule
    if settings.schedule == SCHEDULE_UNIFORM:
        out[key("interval")] = settings.interval
        out[key("depth")] = settings.depth
    elif source is not None:
        out[HASH_KEYS[prefix + "schedule"]] = source.content_hash()
    return out


def infotext_params(args: DatoArgs, first_source: Schedule | None, hires_source: Schedule | None = None,
                    has_hires: bool = False) -> dict[str, Any]:
    """PNG-parameter entries for a run: empty when disabled; keys at their default value are left out."""
    if not args.enabled:
        return {}
    out: dict[str, Any] = {INFOTEXT_KEYS["enabled"]: True}
    out.update(_encode_pass(args.first_pass(), first_source, ""))
    if args.speed_target:  # the target replaced the schedule: record it and the hash of the schedule it gave
        out.pop(HASH_KEYS["schedule"], None)
        out[INFOTEXT_KEYS["speed_target"]] = args.speed_target
        if first_source is not None:
            out[HASH_KEYS["speed_target"]] = first_source.content_hash()
    if args.max_downsample != 1:
        out[INFOTEXT_KEYS["max_downsample"]] = args.max_downsample
    for name, default in _OPTIONAL_KEYS.items():
        if getattr(args, name) != default:
            out[INFOTEXT_KEYS[name]] = getattr(args, name)
    if has_hires and args.hr_mode != "same":
        out[INFOTEXT_KEYS["hr_mode"]] = args.hr_mode
        hires = args.hires_pass()
        if hires is not None:
            out.update(_encode_pass(hires, hires_source, "hr_"))
    return out


def normalize_pasted(params: dict[str, Any], lookup_hash: Callable[[str], str | None] | None = None,
                     find_by_hash: Callable[[str], str | None] | None = None) -> list[str]:
    """Prepare parsed PNG parameters for pasting into the controls (in place); messages about schedules.

    Without a ``DaTo`` entry the accordion is switched off. Keys left out
    because they were at their default get that default back, so a paste
    restores every control. ``lookup_hash(name)`` gives an installed schedule's
    content hash (or ``None``), ``find_by_hash(hash)`` the name of an installed
    schedule with that content: a renamed schedule is found by its hash; a
    changed or missing one keeps its name and yields a message.
    """
    if INFOTEXT_KEYS["enabled"] not in params:
        params[INFOTEXT_KEYS["enabled"]] = "False"
        return []
    params.setdefault(INFOTEXT_KEYS["max_downsample"], "1")
    params.setdefault(INFOTEXT_KEYS["hr_mode"], "same")
    for name, default in _OPTIONAL_KEYS.items():
        params.setdefault(INFOTEXT_KEYS[name], str(default))
    params.setdefault(INFOTEXT_KEYS["speed_target"], "0")
    messages: list[str] = []
    for field in ("schedule", "hr_schedule"):
        name_key, hash_key = INFOTEXT_KEYS[field], HASH_KEYS[field]
        wanted, name = params.get(hash_key), params.get(name_key)
        if not wanted or not name or lookup_hash is None:
            continue
        have = lookup_hash(str(name))
        if have == wanted:
            continue
        other = find_by_hash(str(wanted)) if find_by_hash is not None else None
        if other is not None:
            messages.append(f"schedule {short_repr(name)} (hash {wanted}) is installed as "
                            f"{short_repr(other)}; using it")
            params[name_key] = other
        elif have is None:
            messages.append(f"schedule {short_repr(name)} (hash {wanted}) is not installed; "
                            "this image cannot be reproduced until you add it")
        else:
            messages.append(f"schedule {short_repr(name)} has changed since this image was made "
                            f"(hash {wanted}, installed {have}); the image will not reproduce exactly")
    return messages
