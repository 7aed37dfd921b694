"""The image's parameters (infotext): what a run writes under stable keys, and how a paste reads it back.

Every key lives here or in the argument table (:data:`dato.core.arguments.ARGS`, one ``infotext`` key per
argument): the arguments, the content hash beside a named schedule (:data:`HASH_KEYS`), and the notes that say
where a run departed from its arguments (:data:`NOTE_KEYS`, e.g. ``DaTo off: speed target 50x unreachable at 8
steps; nearest reachable 4.21x``). Notes are for readers and scripts; a paste ignores them (no control takes
them), so they are harmless to paste back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dato.core.arguments import ARG_BY_NAME, ARGS, FROM_SCHEDULE, SCHEDULE_UNIFORM, PassSettings
from dato.core.schedule import Schedule, short_repr

__all__ = ["HASH_KEYS", "INFOTEXT_KEYS", "NOTE_KEYS", "infotext_params", "normalize_pasted"]

#: PNG-parameter key of every argument; the accordion's paste fields use the same names.
INFOTEXT_KEYS: dict[str, str] = {a.name: a.infotext for a in ARGS}
#: content hash of a named schedule file, beside its name; for a speed target, of the schedule it gave.
HASH_KEYS: dict[str, str] = {"schedule": "DaTo schedule hash", "hr_schedule": "DaTo hires schedule hash",
                             "speed_target": "DaTo speed target hash"}
#: why a pass ran unaccelerated although the extension was on (the first pass / the whole run; the hires pass)
NOTE_KEYS: dict[str, str] = {"first": "DaTo off", "hires": "DaTo hires off"}
#: every key this extension writes (a run clears them before it writes its own)
ALL_KEYS: frozenset[str] = frozenset([*INFOTEXT_KEYS.values(), *HASH_KEYS.values(), *NOTE_KEYS.values()])
_OMITTED_AT_DEFAULT = tuple(a for a in ARGS if a.omit_default)


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


def infotext_params(args: Any, first_source: Schedule | None, hires_source: Schedule | None = None,
                    has_hires: bool = False, notes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """PNG-parameter entries for a run (``args``: the :class:`~dato.core.arguments.DatoArgs` that describe what
    runs): empty when disabled; arguments at their default are left out where the table says so; ``notes`` by
    :data:`NOTE_KEYS` name (``first``, ``hires``)."""
    if not args.enabled:
        return {}
    out: dict[str, Any] = {INFOTEXT_KEYS["enabled"]: True}
    out.update(_encode_pass(args.first_pass(), first_source, ""))
    if args.speed_target:  # the target replaced the schedule: record it and the hash of the schedule it gave
        out.pop(HASH_KEYS["schedule"], None)
        if first_source is not None:
            out[HASH_KEYS["speed_target"]] = first_source.content_hash()
    for arg in _OMITTED_AT_DEFAULT:
        if arg.scope != "run" and getattr(args, arg.name) != arg.default:
            out[arg.infotext] = getattr(args, arg.name)
    if has_hires and args.hr_mode != ARG_BY_NAME["hr_mode"].default:
        out[INFOTEXT_KEYS["hr_mode"]] = args.hr_mode
        hires = args.hires_pass()
        if hires is not None:
            out.update(_encode_pass(hires, hires_source, "hr_"))
    for name, text in (notes or {}).items():
        out[NOTE_KEYS[name]] = text
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
    for arg in _OMITTED_AT_DEFAULT:
        params.setdefault(arg.infotext, str(arg.default))
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
