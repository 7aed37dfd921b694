"""X/Y/Z plot axes: the arguments the table marks (token method, ratio, cache schedule, speed target, adaptive).

An axis value is written onto the plot cell's processing copy
(``xyz_grid`` applies axes to ``copy(p)``), never into ``shared.opts``; the
script merges it over its arguments for that cell only, and an axis turns the
extension on ("Disabled" on the method axis turns it off, for a baseline
column).
"""

from __future__ import annotations

from typing import Any

from dato.core.arguments import ARGS, METHOD_CHOICES, ArgsError, DatoArgs
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

    def confirm(field: str):
        def check(p, xs):  # the argument's own check, so the message is the one the API gives
            for x in xs:
                try:
                    DatoArgs.from_dict({field: x})
                except ArgsError as exc:
                    raise RuntimeError(f"[DaTo] {exc}") from None
                known = store.names()
                if field == "schedule" and x not in known:
                    raise RuntimeError(f"[DaTo] unknown schedule {short_repr(x)}; installed: "
                                       f"{', '.join(sorted(known))}")

        return check

    axes = []
    for arg in ARGS:  # the table says which arguments are axes
        if arg.xyz is None:
            continue
        if arg.name == "method":
            axes.append(xyz.AxisOption(arg.xyz, str, _setter("method", _method),
                                       choices=lambda: [DISABLED] + [label for label, _ in METHOD_CHOICES]))
        elif arg.name == "schedule":
            axes.append(xyz.AxisOption(arg.xyz, str, _setter("schedule"), confirm=confirm("schedule"),
                                       choices=store.names))
        else:
            convert = type(arg.default)
            axes.append(xyz.AxisOption(arg.xyz, convert, _setter(arg.name, convert), confirm=confirm(arg.name)))
    for axis in axes:
        axis.dato_axis = True
    xyz.axis_options.extend(axes)
    return True
