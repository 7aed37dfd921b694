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

from dato.core.options import HR_MODES, METHOD_CHOICES, ArgsError, DatoArgs

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


def defaults() -> DatoArgs:
    """The accordion's initial values from Settings; a broken setting falls back to the built-in default."""
    base = DatoArgs()
    wanted = {
        "method": _get("dato_default_method", base.method),
        "ratio": _get("dato_default_ratio", base.ratio),
        "schedule": _get("dato_default_schedule", base.schedule),
        "interval": _get("dato_default_interval", base.interval),
        "hr_mode": _get("dato_default_hr_mode", base.hr_mode),
    }
    wanted["hr_method"], wanted["hr_ratio"], wanted["hr_schedule"] = (
        wanted["method"], wanted["ratio"], wanted["schedule"])
    out = base
    for key, value in wanted.items():
        try:
            out = DatoArgs.from_dict({key: value, "enabled": False}, out)
        except ArgsError:
            continue
    return out


def img2img_fix_steps() -> bool:
    return bool(_get("img2img_fix_steps", False))


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    from . import store

    def schedule_names():
        return {"choices": store.names()}

    options = {
        "dato_explanation": shared.OptionHTML(
            "Defaults for the <b>DaTo acceleration</b> accordion in txt2img and img2img, and for API requests "
            "that leave its arguments out. Each generation records what it used in the image's parameters."),
        "dato_default_method": shared.OptionInfo(
            "prune", "Default token method", gr.Radio, {"choices": list(METHOD_CHOICES)},
        ).needs_reload_ui(),
        "dato_default_ratio": shared.OptionInfo(
            0.4, "Default token ratio", gr.Slider, {"minimum": 0.0, "maximum": 0.75, "step": 0.01},
        ).info("prune/merge need < 0.75").needs_reload_ui(),
        "dato_default_schedule": shared.OptionInfo(
            "balanced", "Default cache schedule", gr.Dropdown, lambda: schedule_names(), refresh=store.names,
        ).needs_reload_ui(),
        "dato_default_interval": shared.OptionInfo(
            5, "Default N for 'uniform' (a full step every N)", gr.Slider, {"minimum": 1, "maximum": 25, "step": 1},
        ).needs_reload_ui(),
        "dato_default_hr_mode": shared.OptionInfo(
            "same", "Default for the hires. fix pass", gr.Radio, {"choices": list(HR_MODES)},
        ).needs_reload_ui(),
        "dato_schedule_dir": shared.OptionInfo(
            "", "Folder for your schedules (uploads through the API are saved here)",
        ).info("empty = schedules/user inside the extension"),
    }
    for name, option in shared.options_section(SECTION, options).items():
        shared.opts.add_option(name, option)
