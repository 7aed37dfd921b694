"""The script arguments, declared once: name, kind, range, default, help, infotext key, X/Y/Z axis.

The WebUI hands an AlwaysOn script its controls' values positionally, and the
API's ``alwayson_scripts`` takes the same positions. :data:`ARGS` is the one
table of those arguments; everything else is derived from it: the order
(:data:`ARG_NAMES`), the validated :class:`DatoArgs` and the per-pass
:class:`PassSettings` (both dataclasses built from the table), the coercion of
every value (each argument's :class:`Kind`), the infotext keys, the keys left
out at their default, the accordion's slider bounds, the Settings defaults, the
X/Y/Z axes and the ``/dato/v1/args`` answer.

Two rules hold for every argument:

* ``None`` (JSON ``null``) means "this argument's default": the accordion's
  starting value, i.e. the table's default unless Settings > DaTo sets another
  (:data:`NULL_MEANS`).
* A bad value raises :class:`ArgsError` naming the position, the name and the
  value, and saying what is expected.

Defaults that belong to the engine (the token and adaptive options of
:func:`dato.core.patch.apply_patch`) are read from the engine's
:class:`~dato.core.patch.PatchOptions`, so that each default is written once.
Nothing here imports the WebUI.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dato.core.layout import SD1_LAYOUT
from dato.core.patch import PatchOptions
from dato.core.schedule import MAX_DEPTH_LIMIT, RATIO_LIMIT, ScheduleError, short_repr
from dato.core.speed import TARGET_LIMIT
from dato.core.tokens import PRUNE_VARIANTS

__all__ = [
    "ARGS", "ARG_BY_NAME", "ARG_NAMES", "Arg", "ArgsError", "Choice", "DatoArgs", "FROM_SCHEDULE", "Flag",
    "HR_MODES", "Kind", "METHOD_CHOICES", "NULL_MEANS", "Number", "PassSettings", "RESERVED_SCHEDULE_NAMES",
    "SCHEDULE_NONE", "SCHEDULE_UNIFORM", "ScheduleName", "arg_spec",
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
#: What ``None`` (JSON ``null``) means for every argument.
NULL_MEANS = "the argument's default (the accordion's starting value: Settings > DaTo, else the table's default)"

#: the token levels ``max_downsample`` may name (downsample factors)
DOWNSAMPLE_CHOICES = (1, 2, 4, 8)
_ENGINE = {f.name: f.default for f in dataclasses.fields(PatchOptions) if f.default is not dataclasses.MISSING}


class ArgsError(ScheduleError):
    """Script arguments are invalid; the message names the argument (position and name) and the value."""


# ------------------------------------------------------------------ kinds
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


class Kind:
    """How one argument's value is read (:meth:`coerce`) and described (:meth:`spec`)."""

    def coerce(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Flag(Kind):
    """true/false; also 0/1 and the strings "true"/"false" (how Gradio and JSON send them)."""

    def coerce(self, value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ArgsError(f"{where} = {short_repr(value)}: expected true or false")

    def spec(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(Kind):
    """One of fixed values; a value's accordion label and the listed aliases are accepted too (any case)."""

    choices: tuple[tuple[str, Any], ...]  # (label, value)
    aliases: tuple[tuple[str, Any], ...] = ()
    numeric: bool = False  # the values are whole numbers (sent as numbers or strings)

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(value for _, value in self.choices)

    def coerce(self, value: Any, where: str) -> Any:
        expected = f"expected one of {', '.join(map(str, self.values))}"
        if self.numeric:
            number = _number(value, where)
            if number != int(number) or int(number) not in self.values:
                raise ArgsError(f"{where} = {short_repr(value)}: {expected}")
            return int(number)
        lookup = {str(v).lower(): v for v in self.values}
        lookup.update({label.lower(): v for label, v in self.choices})
        lookup.update({alias.lower(): v for alias, v in self.aliases})
        key = value.strip().lower() if isinstance(value, str) else None
        if key not in lookup:
            raise ArgsError(f"{where} = {short_repr(value)}: {expected}")
        return lookup[key]

    def spec(self) -> dict[str, Any]:
        return {"type": "integer" if self.numeric else "string", "choices": list(self.values),
                "labels": {str(v): label for label, v in self.choices}}


@dataclass(frozen=True)
class Number(Kind):
    """A number in ``low..high`` (whole if ``whole``); ``off``, when set, is a value outside it that means off."""

    low: float
    high: float
    expect: str  # the range as the error message states it, after "expected "
    whole: bool = False
    whole_expect: str = "a whole number"
    off: float | None = None

    def coerce(self, value: Any, where: str) -> float | int:
        number = _number(value, where)
        if self.off is not None and number == self.off:
            return int(number) if self.whole else number
        if self.whole and number != int(number):
            raise ArgsError(f"{where} = {short_repr(value)}: expected {self.whole_expect}")
        if not self.low <= number <= self.high:
            raise ArgsError(f"{where} = {short_repr(value)}: expected {self.expect}")
        return int(number) if self.whole else number

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.whole else "number", "minimum": self.low,
                               "maximum": self.high}
        if self.off is not None:
            out["off"] = self.off
        return out


@dataclass(frozen=True)
class ScheduleName(Kind):
    """An installed schedule's name (checked when the pass is planned), or one of the two rules."""

    def coerce(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ArgsError(f"{where} = {short_repr(value)}: expected a schedule name, 'uniform' or 'none'")
        text = value.strip()
        return text.lower() if text.lower() in RESERVED_SCHEDULE_NAMES else text

    def spec(self) -> dict[str, Any]:
        return {"type": "string", "rules": [SCHEDULE_UNIFORM, SCHEDULE_NONE]}


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Arg:
    """One script argument.

    ``scope``: ``run`` (the whole generation), ``pass`` (the first pass; ``hires_of`` names the first-pass
    argument an ``hr_*`` argument stands for in an own-settings hires pass), ``both`` (both passes alike)
    or ``first`` (the first pass, and the hires pass only when it has the same settings).
    ``omit_default``: the infotext leaves it out at its default and a paste restores the default.
    ``ui``: the accordion's slider (minimum, maximum, step) where it is narrower than the valid range.
    ``setting``: the Settings > DaTo option that holds the user's default for it.
    """

    name: str
    kind: Kind
    default: Any
    help: str
    infotext: str
    scope: str = "pass"
    hires_of: str | None = None
    omit_default: bool = False
    ui: tuple[float, float, float] | None = None
    xyz: str | None = None
    setting: str | None = None


_METHOD = Choice(METHOD_CHOICES, aliases=(("off", "none"), ("dato", "prune"), ("tome", "merge"),
                                          ("todo", "downsample")))
_RATIO = Number(0.0, RATIO_LIMIT, f"a number 0..{RATIO_LIMIT}")
_INTERVAL = Number(1, 1000, "1..1000", whole=True)
_DEPTH = Number(0, MAX_DEPTH_LIMIT, f"0..{MAX_DEPTH_LIMIT} (SD1.x: 0..{SD1_LAYOUT.max_depth})", whole=True)
_FACTOR = Number(1, 16, "0 (from the ratio) or a factor 1..16", off=0)
_DEFAULT_METHOD, _DEFAULT_RATIO, _DEFAULT_SCHEDULE = "prune", 0.4, "balanced"

ARGS: tuple[Arg, ...] = (
    Arg("enabled", Flag(), False, "turn the extension on for this generation", "DaTo", scope="run"),
    Arg("method", _METHOD, _DEFAULT_METHOD, "token method: prune (DaTo), merge (ToMe), downsample (ToDo), schedule "
        "(the schedule's own method and per-step ratios) or none", "DaTo method", xyz="[DaTo] Token method",
        setting="dato_default_method"),
    Arg("ratio", _RATIO, _DEFAULT_RATIO, f"token-reduction ratio for every step, 0-{RATIO_LIMIT} (prune/merge < "
        f"{RATIO_LIMIT})", "DaTo ratio", ui=(0.0, RATIO_LIMIT, 0.01), xyz="[DaTo] Token ratio",
        setting="dato_default_ratio"),
    Arg("schedule", ScheduleName(), _DEFAULT_SCHEDULE, "cache schedule: a preset or saved name, 'uniform' (every N "
        "steps) or 'none'", "DaTo schedule", xyz="[DaTo] Cache schedule", setting="dato_default_schedule"),
    Arg("interval", _INTERVAL, 5, "uniform schedule: a full step every N steps", "DaTo interval", ui=(1, 25, 1),
        setting="dato_default_interval"),
    Arg("depth", _DEPTH, 0, "uniform schedule: branch depth of the cached steps (0 = shallowest, fastest)",
        "DaTo depth", ui=(0, SD1_LAYOUT.max_depth, 1)),
    Arg("max_downsample", Choice(tuple((str(f), f) for f in DOWNSAMPLE_CHOICES), numeric=True),
        _ENGINE["max_downsample"],
        "token reduction on levels with at most this downsample factor (1 = 64x64 at 512 px only)",
        "DaTo max downsample", scope="both", omit_default=True),
    Arg("hr_mode", Choice(HR_MODES), "same", "hires-fix pass: same (first-pass settings), off, or own (the hr_* "
        "arguments)", "DaTo hires", scope="run", omit_default=True, setting="dato_default_hr_mode"),
    Arg("hr_method", _METHOD, _DEFAULT_METHOD, "hires pass (own): token method", "DaTo hires method",
        hires_of="method", setting="dato_default_method"),
    Arg("hr_ratio", _RATIO, _DEFAULT_RATIO, "hires pass (own): token ratio", "DaTo hires ratio", hires_of="ratio",
        ui=(0.0, RATIO_LIMIT, 0.01), setting="dato_default_ratio"),
    Arg("hr_schedule", ScheduleName(), _DEFAULT_SCHEDULE, "hires pass (own): cache schedule", "DaTo hires schedule",
        hires_of="schedule", setting="dato_default_schedule"),
    Arg("hr_interval", _INTERVAL, 3, "hires pass (own): uniform N", "DaTo hires interval", hires_of="interval",
        ui=(1, 25, 1)),
    Arg("hr_depth", _DEPTH, 0, "hires pass (own): uniform depth", "DaTo hires depth", hires_of="depth",
        ui=(0, SD1_LAYOUT.max_depth, 1)),
    Arg("prune_variant", Choice(tuple((v, v) for v in PRUNE_VARIANTS)), _ENGINE["prune_variant"],
        "how prune follows the DaTo paper: shared-plan (one plan per level, base-token restore), base-restore "
        "(per block) or faithful", "DaTo prune variant", scope="both", omit_default=True),
    Arg("downsample_factor", _FACTOR, _ENGINE["downsample_factor"], "downsample (ToDo): fixed key/value factor on "
        "the first level, grid int(h / factor); 0 = from the ratio", "DaTo ToDo factor", scope="both",
        omit_default=True, ui=(0.0, 5.0, 0.5)),
    Arg("downsample_factor2", _FACTOR, _ENGINE["downsample_factor2"], "downsample (ToDo): factor on the second "
        "level (0 = the first's)", "DaTo ToDo factor 2", scope="both", omit_default=True, ui=(0.0, 5.0, 0.5)),
    Arg("downsample_stop", Number(0, 1, "a fraction of the steps 0..1"), _ENGINE["downsample_stop"],
        "downsample (ToDo): stop after this fraction of the steps (1 = never)", "DaTo ToDo stop after",
        scope="both", omit_default=True, ui=(0.0, 1.0, 0.05)),
    Arg("speed_target", Number(1, TARGET_LIMIT, f"a speed-up factor 1 <= N <= {TARGET_LIMIT:g} (1 = every step "
                               "full) or 0 = off", off=0),
        0.0, f"make it N x faster (1..{TARGET_LIMIT:g}; 0 = off): replaces the schedule and ratio with the "
        "best-quality rule that meets N at the run's steps, sampler and size", "DaTo speed target", scope="first",
        omit_default=True, ui=(0.0, 10.0, 0.5), xyz="[DaTo] Speed target"),
    Arg("adaptive", Number(0, 1, "a threshold 0..1 (0 = off)"), 0.0, "adaptive caching (0 = off, else 0..1): a "
        "step is cached at depth 0 when the first block's output changed by less than this since the last full "
        "step; replaces the schedule's cache cells, keeps its token ratios", "DaTo adaptive", scope="both",
        omit_default=True, ui=(0.0, 1.0, 0.01), xyz="[DaTo] Adaptive threshold"),
    Arg("adaptive_cap", Number(1, 20, "a whole number 1..20", whole=True, whole_expect="a whole number 1..20"),
        _ENGINE["adaptive_cap"], "adaptive caching: at most this many cached steps in a row (1..20)",
        "DaTo adaptive cap", scope="both", omit_default=True, ui=(1, 20, 1)),
)
ARG_NAMES: tuple[str, ...] = tuple(a.name for a in ARGS)
ARG_BY_NAME: dict[str, Arg] = {a.name: a for a in ARGS}
PASS_ARGS: tuple[Arg, ...] = tuple(a for a in ARGS if a.scope in ("pass", "both", "first") and a.hires_of is None)
HIRES_ARGS: tuple[Arg, ...] = tuple(a for a in ARGS if a.hires_of is not None)
#: :class:`PassSettings` fields that are :func:`dato.core.patch.apply_patch` keywords of the same name
ENGINE_OPTIONS: tuple[str, ...] = tuple(a.name for a in PASS_ARGS if a.scope == "both")


def arg_spec(arg: Arg, default: Any = None) -> dict[str, Any]:
    """What ``GET /dato/v1/args`` says of one argument (``default``: the effective one, e.g. from Settings)."""
    return {"index": ARG_NAMES.index(arg.name), "name": arg.name, **arg.kind.spec(),
            "default": arg.default if default is None else default, "help": arg.help, "infotext": arg.infotext,
            "null": "default"}


# ------------------------------------------------------------------ the argument values
def _where(position: int) -> str:
    return f"argument {position} ({ARG_NAMES[position]})"


class _ArgsMethods:
    """Behaviour of :class:`DatoArgs`; its fields come from :data:`ARGS`."""

    def __post_init__(self) -> None:
        for position, arg in enumerate(ARGS):
            object.__setattr__(self, arg.name, arg.kind.coerce(getattr(self, arg.name), _where(position)))
        if self.speed_target and self.adaptive:
            raise ArgsError(f"speed_target = {self.speed_target:g} and adaptive = {self.adaptive:g}: use one of the "
                            "two (a target fixes the speed-up before the run; adaptive caching decides it during "
                            "the run)")

    @classmethod
    def from_args(cls, args: Sequence[Any] | Mapping[str, Any], defaults: Any = None) -> Any:
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
            positional = cls._merge_positional(values[1:len(ARGS)], base, offset=1, allow_bad=True)
            return cls.from_dict(named, replace(positional, enabled=base.enabled))
        if len(values) > len(ARGS):
            raise ArgsError(f"got {len(values)} arguments; sd-webui-dato takes at most {len(ARGS)}: "
                            f"{', '.join(ARG_NAMES)}")
        return cls._merge_positional(values, base, offset=0)

    @classmethod
    def _merge_positional(cls, values: Sequence[Any], base: Any, offset: int, allow_bad: bool = False) -> Any:
        merged = {}
        for i, value in enumerate(values):
            position = offset + i
            if value is None:
                continue
            try:
                merged[ARG_NAMES[position]] = ARGS[position].kind.coerce(value, _where(position))
            except ArgsError:
                if not allow_bad:  # padding after a named dict: UI defaults, never user input
                    raise
        return replace(base, **merged)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: Any = None) -> Any:
        """Named form; unknown keys are refused so a typo never passes silently."""
        unknown = sorted(str(k) for k in data if k not in ARG_BY_NAME)
        if unknown:
            raise ArgsError(f"unknown argument(s) {', '.join(map(repr, unknown))}; known: {', '.join(ARG_NAMES)}")
        values = {k: v for k, v in data.items() if v is not None}
        values.setdefault("enabled", True)
        return replace(defaults or cls(), **values)

    def to_args(self) -> list[Any]:
        return [getattr(self, name) for name in ARG_NAMES]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ARG_NAMES}

    def first_pass(self) -> PassSettings:
        return PassSettings(**{a.name: getattr(self, a.name) for a in PASS_ARGS})

    def hires_pass(self) -> PassSettings | None:
        """Settings of the hires-fix pass, or ``None`` when the extension stays off for it."""
        if self.hr_mode == "off":
            return None
        if self.hr_mode == "same":
            return self.first_pass()
        own = {a.hires_of: getattr(self, a.name) for a in HIRES_ARGS}
        return replace(self.first_pass(), speed_target=ARG_BY_NAME["speed_target"].kind.off, **own)  # no target

    def with_overrides(self, overrides: Mapping[str, Any]) -> Any:
        """Apply X/Y/Z-style overrides (named, validated)."""
        unknown = sorted(set(overrides) - set(ARG_NAMES))
        if unknown:
            raise ArgsError(f"unknown override(s) {', '.join(map(repr, unknown))}")
        return replace(self, **dict(overrides))


class _PassMethods:
    """Behaviour of :class:`PassSettings`; its fields are the first-pass arguments of :data:`ARGS`."""

    def patch_options(self) -> dict[str, Any]:
        """The :func:`dato.core.patch.apply_patch` keywords these settings give (adaptive 0 = off = ``None``)."""
        options = {name: getattr(self, name) for name in ENGINE_OPTIONS}
        options["adaptive"] = options["adaptive"] or None
        return options


def _fields(args: Sequence[Arg]) -> list[tuple[str, type, Any]]:
    return [(a.name, type(a.default), dataclasses.field(default=a.default)) for a in args]


#: The validated script arguments, in :data:`ARG_NAMES` order (fields and defaults from :data:`ARGS`).
DatoArgs = dataclasses.make_dataclass("DatoArgs", _fields(ARGS), bases=(_ArgsMethods,), frozen=True,
                                      namespace={"__module__": __name__})
#: What one sampling pass uses: the first-pass arguments of :data:`ARGS` (an own-settings hires pass maps its
#: ``hr_*`` arguments onto the same fields).
PassSettings = dataclasses.make_dataclass("PassSettings", _fields(PASS_ARGS), bases=(_PassMethods,), frozen=True,
                                          namespace={"__module__": __name__})
