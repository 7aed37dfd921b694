"""X/Y/Z plot axes: token method, token ratio, cache schedule, speed target, adaptive threshold.

An axis value is written onto the plot cell's processing copy
(``xyz_grid`` applies axes to ``copy(p)``), never into ``shared.opts``; the
script merges it over its arguments for that cell only, and an axis turns the
extension on ("Disabled" on the method axis turns it off, for a baseline
column).
"""

from __future__ import annotations

from typing import Any

from dato.core.options import METHOD_CHOICES, ArgsError, DatoArgs
from dato.core.schedule import short_repr

from . import store

ATTR = "dato_xyz_overrides"
DISABLED = "Disabled"


def overrides_of(p: Any) -> dict[str, Any]:
    return dict(getattr(p, ATTR, None) or {})


def _setter(field: str, convert=lambda v: v):
    def apply(p, x, xs):
        merged = overrides_of(p)  # a new dict: the cell's copy shares the parent's attribute
        value = convert(x)
        if field == "method" and value == DISABLED:
            merged["enabled"] = False
        else:
            merged[field] = value
            merged.setdefault("enabled", True)
        setattr(p, ATTR, merged)

    return apply


def _method(value: str) -> str:
    labels = {label: v for label, v in METHOD_CHOICES}
    return value if value == DISABLED else labels.get(value, value)


def find_xyz_module():
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ == "xyz_grid.py":
            return data.module
    return None


def add_axes() -> bool:
    """Register the axes once per ``xyz_grid`` module (``on_before_ui``); ``False`` when there is no plot script."""
    xyz = find_xyz_module()
    if xyz is None:
        return False
    if any(getattr(opt, "dato_axis", False) for opt in xyz.axis_options):
        return True

    def confirm_ratio(p, xs):
        for x in xs:
            if not 0.0 <= float(x) <= 0.75:
                raise RuntimeError(f"[DaTo] Token ratio {x} is outside 0..0.75")

    def confirm_schedule(p, xs):
        known = set(store.names())
        for x in xs:
            if x not in known:
                raise RuntimeError(f"[DaTo] unknown schedule {short_repr(x)}; installed: {', '.join(sorted(known))}")

    def confirm_named(field: str):
        def confirm(p, xs):  # the argument's own check, so the message is the one the API gives
            for x in xs:
                try:
                    DatoArgs.from_dict({field: float(x)})
                except (ArgsError, ValueError) as exc:
                    raise RuntimeError(f"[DaTo] {exc}") from None

        return confirm

    axes = [
        xyz.AxisOption("[DaTo] Token method", str, _setter("method", _method),
                       choices=lambda: [DISABLED] + [label for label, _ in METHOD_CHOICES]),
        xyz.AxisOption("[DaTo] Token ratio", float, _setter("ratio", float), confirm=confirm_ratio),
        xyz.AxisOption("[DaTo] Cache schedule", str, _setter("schedule"), confirm=confirm_schedule,
                       choices=store.names),
        xyz.AxisOption("[DaTo] Speed target", float, _setter("speed_target", float),
                       confirm=confirm_named("speed_target")),
        xyz.AxisOption("[DaTo] Adaptive threshold", float, _setter("adaptive", float),
                       confirm=confirm_named("adaptive")),
    ]
    for axis in axes:
        axis.dato_axis = True
    xyz.axis_options.extend(axes)
    return True
