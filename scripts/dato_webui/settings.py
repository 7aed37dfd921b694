"""Settings > DaTo acceleration: defaults for the accordion (and so for API requests that omit arguments).

Only defaults live here. What a generation actually used is in its script
arguments and infotext, never in a setting: the WebUI does not restore
``override_settings`` keys missing from ``config.json`` after a request
(``processing.process_images``, v1.10.1), so a per-run value kept in a setting
would leak into later generations. That is also why no option here carries
``infotext=``: pasting an image restores the accordion's controls instead.
"""

from __future__ import annotations

from typing import Any

from dato.core.arguments import ARG_BY_NAME, ARGS, HR_MODES, METHOD_CHOICES, ArgsError, DatoArgs
from dato.core.schedule import RATIO_LIMIT

SECTION = ("dato", "DaTo acceleration")


def _opts():
    try:
        from modules import shared

        return shared.opts
    except Exception:
        return None


def _get(name: str, default: Any) -> Any:
    opts = _opts()
    if opts is None:
        return default
    try:
        value = getattr(opts, name)
    except AttributeError:
        return default
    return default if value is None else value


_REPORTED: set[str] = set()


def defaults() -> DatoArgs:
    """The accordion's initial values: each argument's Settings option where the table names one (the hires
    pass's arguments share the first pass's), else the table's default; a broken setting keeps the default."""
    out = DatoArgs()
    for arg in ARGS:
        if arg.setting is None:
            continue
        try:
            out = DatoArgs.from_dict({arg.name: _get(arg.setting, arg.default), "enabled": False}, out)
        except ArgsError as exc:
            message = f"Settings > DaTo > {arg.setting}: {exc}; the accordion starts at {arg.default!r}"
            if message not in _REPORTED:  # defaults() runs for every request: say it once
                _REPORTED.add(message)
                print(f"[sd-webui-dato] {message}")
    return out


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    from . import store

    def schedule_names():
        return {"choices": store.names()}

    def default(name: str):
        return ARG_BY_NAME[name].default

    def slider(name: str) -> dict:
        low, high, step = ARG_BY_NAME[name].ui
        return {"minimum": low, "maximum": high, "step": step}

    options = {
        "dato_explanation": shared.OptionHTML(
            "Defaults for the <b>DaTo acceleration</b> accordion in txt2img and img2img, and for API requests "
            "that leave its arguments out. Each generation records what it used in the image's parameters."),
        "dato_default_method": shared.OptionInfo(
            default("method"), "Default token method", gr.Radio, {"choices": list(METHOD_CHOICES)},
        ).needs_reload_ui(),
        "dato_default_ratio": shared.OptionInfo(
            default("ratio"), "Default token ratio", gr.Slider, slider("ratio"),
        ).info(f"prune/merge need < {RATIO_LIMIT}").needs_reload_ui(),
        "dato_default_schedule": shared.OptionInfo(
            default("schedule"), "Default cache schedule", gr.Dropdown, lambda: schedule_names(), refresh=store.names,
        ).needs_reload_ui(),
        "dato_default_interval": shared.OptionInfo(
            default("interval"), "Default N for 'uniform' (a full step every N)", gr.Slider, slider("interval"),
        ).needs_reload_ui(),
        "dato_default_hr_mode": shared.OptionInfo(
            default("hr_mode"), "Default for the hires. fix pass", gr.Radio, {"choices": list(HR_MODES)},
        ).needs_reload_ui(),
        "dato_schedule_dir": shared.OptionInfo(
            "", "Folder for your schedules (uploads through the API are saved here)",
        ).info("empty = schedules/user inside the extension"),
    }
    for name, option in shared.options_section(SECTION, options).items():
        shared.opts.add_option(name, option)
