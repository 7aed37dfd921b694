"""The Schedule: which sampling step is computed how.

Per step ``i`` of ``steps``:

* ``cache[i]`` is ``FULL`` (the whole UNet runs), a branch depth ``d >= 0``
  (only the shallow branch runs, see :mod:`dato.core.layout`), or ``REUSE`` (the
  previous UNet output is returned whole, DaTo's extreme case);
* ``ratio[i]`` is the token-reduction ratio of that step's self-attention.

Everything else in the project (the patch, the presets, the WebUI preview, the
search genome, calibration) reads and writes this one structure. It is
immutable; the ``with_*``/``resample`` methods return new schedules.

In JSON a cache action is ``"full"``, ``"reuse"`` or an integer depth.

Length: the structure and every check of its JSON (per-step fields, the
regenerating ``rule``, the short quoting of bad values) stay in one module, so
what a schedule file may contain is read in one place.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dato.core.fileio import atomic_write_bytes

__all__ = [
    "FULL",
    "REUSE",
    "METHODS",
    "FORMAT_VERSION",
    "Schedule",
    "ScheduleError",
    "builtin_schedule_dir",
    "find_schedules",
    "schedule_catalog",
    "load_schedule",
    "ratio_allowed",
    "ratio_range",
    "RATIO_LIMIT",
    "MAX_STEPS",
    "MAX_DEPTH_LIMIT",
    "RULE_KINDS",
    "short_repr",
    "user_schedule_dir",
]

FULL = -1
REUSE = -2
METHODS = ("prune", "merge", "downsample", "none")
FORMAT_VERSION = 1
MAX_DEPTH_LIMIT = 63
MAX_STEPS = 10_000  # the one step limit: schedules, resampling and every command's --steps
RULE_KINDS = ("uniform", "cycle")
_RULE_KEYS = {"uniform": ("kind", "interval", "depth", "ratio"), "cycle": ("kind", "cycle", "ratio")}
_FLAT_LIST_RE = re.compile(r"\[\s+([^\[\]{}\"]*(?:\"[^\"\[\]]*\"[^\[\]{}\"]*)*)\s+\]")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")


class ScheduleError(ValueError):
    """A schedule or an option is invalid; the message names the field and the value."""


_SHORT = reprlib.Repr()
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8
_SHORT.maxlevel = 3


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters so a huge bad value never comes back whole.

    Strings and containers are shortened before they are formatted (a 50 MB name
    costs nothing); what was cut is marked ``...`` with the full length.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    _SHORT.maxstring = _SHORT.maxother = max(limit, 8)
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


RATIO_LIMIT = 0.75


def ratio_allowed(method: str, ratio: float) -> bool:
    """prune/merge keep one base token per 2x2 patch, so r < 0.75; ToDo may go to a half-size grid (0.75)."""
    if not math.isfinite(ratio) or ratio < 0.0:
        return False
    return ratio <= RATIO_LIMIT if method == "downsample" else ratio < RATIO_LIMIT


def ratio_range(method: str) -> str:
    """The range :func:`ratio_allowed` accepts for ``method``, as every message states it."""
    return f"0 <= r <= {RATIO_LIMIT}" if method == "downsample" else f"0 <= r < {RATIO_LIMIT}"


def builtin_schedule_dir() -> Path:
    """``schedules/`` of this checkout: presets shipped with the extension."""
    return Path(__file__).resolve().parents[2] / "schedules"


def _action_from_json(value: Any, where: str) -> int:
    if value == "full":
        return FULL
    if value == "reuse":
        return REUSE
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScheduleError(
            f"{where} = {short_repr(value)}: expected 'full', 'reuse' or a depth 0..{MAX_DEPTH_LIMIT}")
    if not 0 <= value <= MAX_DEPTH_LIMIT:
        raise ScheduleError(f"{where} = {short_repr(value)}: depth must be in 0..{MAX_DEPTH_LIMIT}")
    return value


def _action_to_json(action: int) -> str | int:
    return "full" if action == FULL else "reuse" if action == REUSE else action


def action_label(action: int) -> str:
    """One character per step for previews: F full, R reuse, 0-9/a-z depth."""
    if action == FULL:
        return "F"
    if action == REUSE:
        return "R"
    return "0123456789abcdefghijklmnopqrstuvwxyz"[action] if action < 36 else "+"


@dataclass(frozen=True)
class Schedule:
    """Per-step cache actions and token ratios, with a name and provenance.

    Build one with :meth:`uniform`, :meth:`full`, :meth:`from_dict`/:meth:`load`
    or the constructor (which validates).
    """

    name: str
    cache: tuple[int, ...]
    ratio: tuple[float, ...]
    method: str = "prune"
    description: str = ""
    rule: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", tuple(int(a) for a in self.cache))
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        self.validate()

    # ----------------------------------------------------------------- checks
    @property
    def steps(self) -> int:
        return len(self.cache)

    def validate(self) -> None:
        """Raise :class:`ScheduleError` naming the first bad field and value."""
        label = f"schedule {short_repr(self.name)}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ScheduleError(
                f"schedule name {short_repr(self.name)}: use 1-64 letters, digits, space, '_', '-' or '.'"
            )
        if self.method not in METHODS:
            raise ScheduleError(f"{label}: method = {short_repr(self.method)}, expected one of "
                                f"{', '.join(METHODS)}")
        if self.steps < 1:
            raise ScheduleError(f"{label}: cache is empty; a schedule needs at least one step")
        if self.steps > MAX_STEPS:
            raise ScheduleError(f"{label}: cache has {self.steps} steps; at most {MAX_STEPS}")
        if len(self.ratio) != self.steps:
            raise ScheduleError(
                f"{label}: ratio has {len(self.ratio)} entries but cache has {self.steps}; they must match"
            )
        for i, action in enumerate(self.cache):
            if action not in (FULL, REUSE) and not 0 <= action <= MAX_DEPTH_LIMIT:
                raise ScheduleError(f"{label}: cache[{i}] = {short_repr(action)} is not full, reuse or a depth")
        if self.cache[0] != FULL:
            raise ScheduleError(
                f"{label}: cache[0] = {short_repr(_action_to_json(self.cache[0]))}; the first step must be 'full'"
            )
        for i, r in enumerate(self.ratio):
            if not ratio_allowed(self.method, r):
                raise ScheduleError(f"{label}: ratio[{i}] = {short_repr(r)}; {self.method!r} needs "
                                    f"{ratio_range(self.method)}")
        if self.rule is not None:
            _validate_rule(self, label)

    # ------------------------------------------------------------ builders
    @classmethod
    def full(cls, steps: int, ratio: float = 0.0, method: str = "prune", name: str = "full") -> Schedule:
        """Every step computed; token reduction at a constant ratio."""
        _check_steps(steps)
        return cls(name, (FULL,) * steps, (ratio,) * steps, method)

    @classmethod
    def uniform(
        cls,
        steps: int,
        interval: int,
        depth: int = 0,
        ratio: float = 0.0,
        method: str = "prune",
        name: str | None = None,
    ) -> Schedule:
        """DeepCache's uniform schedule: a full step every ``interval`` steps, cached at ``depth`` between."""
        _check_steps(steps)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ScheduleError(f"uniform schedule: interval = {short_repr(interval)}, expected an integer >= 1")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH_LIMIT:
            raise ScheduleError(
                f"uniform schedule: depth = {short_repr(depth)}, expected an integer 0..{MAX_DEPTH_LIMIT}")
        cache = tuple(FULL if i % interval == 0 else depth for i in range(steps))
        rule = {"kind": "uniform", "interval": interval, "depth": depth, "ratio": ratio}
        return cls(name or f"uniform-{interval}-d{depth}", cache, (ratio,) * steps, method, rule=rule)

    @classmethod
    def cycle(
        cls,
        steps: int,
        cycle: Sequence[int | str],
        ratio: float = 0.0,
        method: str = "prune",
        name: str | None = None,
    ) -> Schedule:
        """A repeating pattern of actions, e.g. ``["full", 0, "reuse", 0]``: step ``i`` takes ``cycle[i % len]``.

        Regenerates exactly at any step count (the rule is kept), so its speed-up holds at
        every step count up to the rounding of the last, partial cycle.
        """
        _check_steps(steps)
        rule = {"kind": "cycle", "cycle": [_action_to_json(a) if _is_int(a) else a for a in cycle], "ratio": ratio}
        actions = _cycle_actions(rule["cycle"], "cycle schedule: cycle")
        cache = tuple(actions[i % len(actions)] for i in range(steps))
        label = name or "cycle-" + "".join(action_label(a) for a in actions)[:40]
        return cls(label, cache, (ratio,) * steps, method, rule=rule)

    @classmethod
    def from_rule(cls, rule: Mapping[str, Any], steps: int, method: str = "prune", name: str = "rule") -> Schedule:
        """The schedule a rule (``uniform`` or ``cycle``, as in a schedule file) gives at ``steps`` steps."""
        kind = rule.get("kind") if isinstance(rule, Mapping) else None
        if kind == "uniform":
            return cls.uniform(steps, rule.get("interval"), rule.get("depth"), float(rule.get("ratio", 0.0)),
                               method, name)
        if kind == "cycle":
            return cls.cycle(steps, rule.get("cycle"), float(rule.get("ratio", 0.0)), method, name)
        raise ScheduleError(f"rule.kind = {short_repr(kind)}; expected one of {', '.join(RULE_KINDS)}")

    def with_ratio(self, ratio: float | Sequence[float]) -> Schedule:
        """Same cache actions, a constant or per-step token ratio."""
        ratios = (float(ratio),) * self.steps if isinstance(ratio, (int, float)) else tuple(ratio)
        rule = dict(self.rule) if self.rule else None
        if rule and isinstance(ratio, (int, float)):
            rule["ratio"] = float(ratio)
        elif rule:
            rule = None
        return replace(self, ratio=ratios, rule=rule)

    def with_method(self, method: str) -> Schedule:
        return replace(self, method=method)

    # ---------------------------------------------------------- resampling
    def resample(self, steps: int) -> Schedule:
        """This schedule for ``steps`` sampling steps, on normalised progress.

        A rule (uniform, cycle) regenerates exactly (every 5 stays every 5). Otherwise
        step ``i`` takes the action and ratio found at progress ``i/steps`` of
        the original; the first step is always full, so no cached step ever
        comes before a full one.
        """
        _check_steps(steps)
        if steps == self.steps:
            return self
        if self.rule:
            regenerated = Schedule.from_rule(self.rule, steps, self.method, self.name)
            return replace(regenerated, description=self.description, provenance=self.provenance)
        src = [min(self.steps - 1, (i * self.steps) // steps) for i in range(steps)]
        cache = [self.cache[j] for j in src]
        cache[0] = FULL
        return replace(self, cache=tuple(cache), ratio=tuple(self.ratio[j] for j in src))

    # ------------------------------------------------------------- summary
    @property
    def full_steps(self) -> int:
        return sum(a == FULL for a in self.cache)

    @property
    def max_cache_depth(self) -> int:
        depths = [a for a in self.cache if a >= 0]
        return max(depths) if depths else -1

    def preview(self) -> str:
        """One character per step: ``F`` full, ``R`` reuse, digit = cached at that depth."""
        return "".join(action_label(a) for a in self.cache)

    def content_hash(self) -> str:
        """Short hash of what changes images (steps, actions, ratios, method), not of the name."""
        payload = json.dumps(
            {"cache": [_action_to_json(a) for a in self.cache], "ratio": [round(r, 6) for r in self.ratio],
             "method": self.method},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "steps": self.steps,
            "method": self.method,
            "cache": [_action_to_json(a) for a in self.cache],
            "ratio": list(self.ratio),
            "provenance": dict(self.provenance),
        }
        if self.rule is not None:
            data["rule"] = dict(self.rule)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "schedule") -> Schedule:
        """Validate and build; unknown fields are refused so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise ScheduleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {"format_version", "name", "description", "steps", "method", "cache", "ratio", "provenance",
                 "rule"}
        unknown = sorted(set(data) - known)
        if unknown:
            shown = ", ".join(short_repr(k, 40) for k in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
            raise ScheduleError(f"{source}: unknown field(s) {shown}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ScheduleError(
                f"{source}: format_version = {short_repr(version)}; this version reads {FORMAT_VERSION}")
        for key in ("name", "cache"):
            if key not in data:
                raise ScheduleError(f"{source}: missing field {key!r}")
        name = data["name"]
        cache_raw = data["cache"]
        if not isinstance(cache_raw, list):
            raise ScheduleError(f"{source}: cache = {short_repr(cache_raw)}, expected a list")
        cache = tuple(_action_from_json(v, f"{source}: cache[{i}]") for i, v in enumerate(cache_raw))
        ratio_raw = data.get("ratio", [0.0] * len(cache))
        if not isinstance(ratio_raw, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratio_raw
        ):
            raise ScheduleError(f"{source}: ratio = {short_repr(ratio_raw)}, expected a list of numbers")
        steps = data.get("steps", len(cache))
        if steps != len(cache):
            raise ScheduleError(f"{source}: steps = {short_repr(steps)} but cache has {len(cache)} entries")
        provenance = data.get("provenance", {})
        if not isinstance(provenance, Mapping):
            raise ScheduleError(f"{source}: provenance = {short_repr(provenance)}, expected an object")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise ScheduleError(f"{source}: description = {short_repr(description)}, expected a string")
        return cls(
            name=name, cache=cache, ratio=tuple(ratio_raw), method=data.get("method", "prune"),
            description=description, rule=data.get("rule"), provenance=dict(provenance),
        )

    def to_json(self) -> str:
        """Readable JSON: one field per line, per-step lists on one line each."""
        text = json.dumps(self.to_dict(), indent=1)
        return _FLAT_LIST_RE.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "schedule") -> Schedule:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScheduleError(f"cannot read schedule file {short_repr(str(path))}: {exc.strerror}") from None
        return cls.from_json(text, source=path.name)

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half a schedule."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ScheduleError(f"a schedule file {short_repr(path.name)} already exists; choose another name")
        return atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def with_provenance(self, **info: Any) -> Schedule:
        merged = dict(self.provenance)
        merged.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        merged.update(info)
        return replace(self, provenance=merged)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ScheduleError(f"steps = {short_repr(steps)}, expected an integer 1..{MAX_STEPS}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cycle_actions(raw: Any, where: str) -> tuple[int, ...]:
    """A cycle's JSON actions as cache actions: a non-empty list starting with 'full'."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STEPS:
        raise ScheduleError(f"{where} = {short_repr(raw)}, expected a list of 1..{MAX_STEPS} actions "
                            "starting with 'full'")
    actions = tuple(_action_from_json(v, f"{where}[{i}]") for i, v in enumerate(raw))
    if actions[0] != FULL:
        raise ScheduleError(f"{where}[0] = {short_repr(raw[0])}; a cycle starts with 'full'")
    return actions


def _validate_rule(schedule: Schedule, label: str) -> None:
    """A rule must be complete, in range, and describe exactly the schedule's cache actions and ratios."""
    rule = schedule.rule
    if not isinstance(rule, Mapping):
        raise ScheduleError(f"{label}: rule = {short_repr(rule)}, expected an object like "
                            "{'kind': 'uniform', 'interval': 5, 'depth': 0, 'ratio': 0.0}")
    kind = rule.get("kind")
    if kind not in RULE_KINDS:
        raise ScheduleError(f"{label}: rule.kind = {short_repr(kind)}; the rule kinds are "
                            f"{', '.join(map(repr, RULE_KINDS))}")
    keys = _RULE_KEYS[kind]
    unknown = [k for k in rule if k not in keys]
    if unknown:
        raise ScheduleError(f"{label}: rule has unknown field(s) {short_repr(', '.join(map(str, unknown[:8])))}; "
                            f"a {kind} rule has {', '.join(keys)}")
    for key in keys[1:]:
        if key not in rule:
            raise ScheduleError(f"{label}: rule is missing {key!r}")
    ratio = rule["ratio"]
    if kind == "uniform":
        interval, depth = rule["interval"], rule["depth"]
        if not _is_int(interval) or not 1 <= interval <= MAX_STEPS:
            raise ScheduleError(
                f"{label}: rule.interval = {short_repr(interval)}, expected an integer 1..{MAX_STEPS}")
        if not _is_int(depth) or not 0 <= depth <= MAX_DEPTH_LIMIT:
            raise ScheduleError(
                f"{label}: rule.depth = {short_repr(depth)}, expected an integer 0..{MAX_DEPTH_LIMIT}")
        pattern = (FULL,) + (depth,) * (interval - 1)
        described = f"uniform, interval {interval}, depth {depth}"
    else:
        pattern = _cycle_actions(rule["cycle"], f"{label}: rule.cycle")
        described = "cycle " + "".join(action_label(a) for a in pattern)[:40]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio_allowed(schedule.method, ratio):
        raise ScheduleError(f"{label}: rule.ratio = {short_repr(ratio)}; {schedule.method!r} needs "
                            f"{ratio_range(schedule.method)}")
    for i, action in enumerate(schedule.cache):
        expected = pattern[i % len(pattern)]
        if action != expected:
            raise ScheduleError(
                f"{label}: rule ({described}) contradicts cache[{i}] = "
                f"{short_repr(_action_to_json(action))}; the rule gives {_action_to_json(expected)!r} "
                "(fix the rule or drop it)")
    for i, r in enumerate(schedule.ratio):
        if abs(r - float(ratio)) > 1e-9:
            raise ScheduleError(f"{label}: rule.ratio = {ratio!r} contradicts ratio[{i}] = {short_repr(r)} "
                                "(fix the rule or drop it)")


def user_schedule_dir() -> Path:
    """``schedules/user/``: where the commands' ``--save``/``--save-best`` write by default."""
    return builtin_schedule_dir() / "user"


def schedule_catalog(folders: Iterable[tuple[str, str | os.PathLike[str]]]) -> dict[str, tuple[Path, str]]:
    """Schedule name -> (file, source label) over labelled folders, in order (later folders win a name): the one
    listing behind :func:`find_schedules` and the WebUI's store."""
    found: dict[str, tuple[Path, str]] = {}
    for source, folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            found[path.stem] = (path, source)
    return found


def find_schedules(dirs: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Path]:
    """Schedule name -> file, from the built-in presets and any extra folders (later folders win)."""
    folders = [("preset", builtin_schedule_dir()), *(("folder", d) for d in (dirs or ()))]
    return {name: path for name, (path, _) in schedule_catalog(folders).items()}


def load_schedule(name_or_path: str | os.PathLike[str] | Schedule,
                  dirs: Iterable[str | os.PathLike[str]] | None = None) -> Schedule:
    """A :class:`Schedule` from itself, a preset name, or a JSON file path."""
    if isinstance(name_or_path, Schedule):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".json") and Path(text).is_file():
        return Schedule.load(text)
    known = find_schedules(dirs)
    if text in known:
        return Schedule.load(known[text])
    raise ScheduleError(
        f"unknown schedule {short_repr(text)}; known: {', '.join(sorted(known)) or 'none'} (or give a .json path)"
    )
