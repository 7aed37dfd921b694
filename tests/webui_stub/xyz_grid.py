"""Stand-in for the WebUI's ``scripts/xyz_grid.py`` (v1.10.1): ``AxisOption``, ``axis_options``, one-axis ``run``.

Loaded through ``modules.scripts.load_scripts`` like the real file, so its
module is named ``xyz_grid.py`` and extensions find it in
``scripts.scripts_data`` the same way. ``run`` applies an axis to
``copy(p)`` per cell and calls ``process_images``, as the real ``cell`` does.
"""

from copy import copy

from modules import processing, scripts


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


def apply_override(field, boolean: bool = False):
    def fun(p, x, xs):
        if boolean:
            x = True if x.lower() == "true" else False
        p.override_settings[field] = x

    return fun


def format_value_add_label(p, opt, x):
    if type(x) == float:  # noqa: E721  (as in the WebUI)
        x = round(x, 8)
    return f"{opt.label}: {x}"


def do_nothing(p, x, xs):
    pass


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def run(self, p, axis_label, values):
        opt = next(o for o in axis_options if o.label == axis_label)
        xs = [opt.type(v) for v in values]
        if opt.confirm:
            opt.confirm(p, xs)
        results = []
        for x in xs:
            pc = copy(p)
            opt.apply(pc, x, xs)
            results.append(processing.process_images(pc))
        return results
