"""The accordion: controls built from the argument table (:data:`dato.core.arguments.ARGS`), the preview, paste fields.

The controls are returned in ``ARG_NAMES`` order, which is the API's
positional order. The preview is computed here (the engine resamples the
schedule) and drawn by ``javascript/dato.js``; the script forwards the tab's
step count, hires steps and denoising strength into a hidden textbox so the
preview follows them whatever the layout order of the page.
"""

from __future__ import annotations

import html
import json
from typing import Any

import gradio as gr

from dato.core.arguments import (
    ARG_BY_NAME,
    ARG_NAMES,
    DOWNSAMPLE_CHOICES,
    SCHEDULE_UNIFORM,
    ArgsError,
    DatoArgs,
)
from dato.core.infotext import INFOTEXT_KEYS
from dato.core.plan import RunPlan, plan_run
from dato.core.schedule import RATIO_LIMIT, ScheduleError

from . import settings, store
from .host import geometry_from_request, host_facts

HINTS = {
    "enabled": "Open to accelerate this generation; closed = the WebUI runs unchanged.",
    "method": "How self-attention gets cheaper: DaTo prunes tokens by temporal dynamics, ToMe merges similar "
              "tokens, ToDo downsamples keys/values. 'As scheduled' uses the schedule's own method and "
              "per-step ratios; 'Off' keeps caching only.",
    "ratio": "Share of tokens removed in the high-resolution self-attention at every step. Higher is faster "
             f"and blurrier; 0.3-0.5 is a good start. Prune/merge need < {RATIO_LIMIT}.",
    "schedule": "Which steps run the whole UNet and which reuse cached deep features. 'uniform' = a full "
                "step every N steps; 'none' = every step full (token reduction only). Presets and your "
                "saved or searched schedules follow; 🔄 rescans the folders.",
    "interval": "uniform: a full step every N steps (DeepCache's N). Larger is faster.",
    "depth": "uniform: how much of the UNet a cached step still computes (0 = shallowest, fastest).",
    "max_downsample": "Which resolution levels get token reduction: the finest level with attention (64×64: SD1.x "
                      "at 512 px, SDXL at 1024 px), or deeper too.",
    "prune_variant": "faithful = as the DaTo paper (per block, restore from the most similar kept token); "
                     "base-restore and shared-plan are cheaper shortcuts. See docs/design.md.",
    "todo": "ToDo downsample only: keys/values on an int(h / factor) grid, as the ToDo extension; "
            "0 = from the token ratio.",
    "hr_mode": "Hires. fix second pass: the same settings, no acceleration, or its own settings below.",
    "speed_target": "Make it N× faster (analytic MACs, at this step count, sampler and size): picks the "
                    "best-quality schedule and ratio that meet N, replacing the two above. 0 = off.",
    "adaptive": "Adaptive caching (0 = off): each step is cached when the first block's output changed by less "
                "than this since the last full step (0.1-0.3 to start); replaces the schedule's cells, keeps its "
                "token ratios. Its speed-up is known after the run (the console line counts full and cached calls).",
    "adaptive_cap": "Adaptive caching: at most this many cached steps in a row, then a full one.",
}


def _level_label(factor: int, side: int = 64) -> str:
    """A token-level choice by the latent grid it adds at 512 px (a 64×64 latent)."""
    if factor == 1:
        return f"{side}×{side} only"
    return "all levels" if factor == max(DOWNSAMPLE_CHOICES) else f"+{side // factor}×{side // factor}"


LEVEL_CHOICES = tuple((_level_label(factor), factor) for factor in DOWNSAMPLE_CHOICES)


# The accordions' controls and schedule dropdowns on the page, by tab ("txt2img", "img2img"): those of the build
# that wires the events (later ``ui()`` calls for the API's defaults build throwaway copies); "Reload UI" replaces
# them. The Search tab updates the dropdowns' choices when it saves a schedule, so the new one is there without
# pressing 🔄.
PAGE_CONTROLS: dict[str, list[Any]] = {}
SCHEDULE_DROPDOWNS: dict[str, list[Any]] = {}
#: the script file name in the accordion's ``ui-config.json`` keys (``customscript/dato.py/txt2img/...``): the
#: entry script's name before it became ``dato_script.py``, kept so that saved defaults still apply
UI_CONFIG_SOURCE = "dato.py"


def schedule_choices() -> list[str]:
    return store.names()


def schedule_dropdowns() -> list[Any]:
    """The page's schedule dropdowns (first pass and hires pass of each tab), for events that refresh them."""
    return [dropdown for tab in ("txt2img", "img2img") for dropdown in SCHEDULE_DROPDOWNS.get(tab, [])]


def refreshed_choices(count: int) -> list[Any]:
    """``count`` Gradio updates that give schedule dropdowns the installed schedules as choices."""
    fresh = schedule_choices()
    return [gr.update(choices=fresh) for _ in range(count)]


def _elem(script: Any, name: str) -> str:
    return script.elem_id(name)


def build(script: Any, is_img2img: bool) -> list[Any]:
    """Create the accordion; returns the controls in API order and sets the paste fields on ``script``."""
    from modules.infotext_utils import PasteField
    from modules.ui_components import FormRow, InputAccordion, ToolButton

    d = settings.defaults()
    choices = schedule_choices()
    c: dict[str, Any] = {}

    def schedule_dropdown(name: str, value: str, label: str) -> gr.Dropdown:
        if value not in choices:
            value = choices[0]
        return gr.Dropdown(label=label, choices=choices, value=value, elem_id=_elem(script, name),
                           info=HINTS["schedule"] if name == "schedule" else "hires pass: " + HINTS["schedule"])

    def slider(name: str, label: str, info: str) -> gr.Slider:
        low, high, step = ARG_BY_NAME[name].ui
        return gr.Slider(label=label, minimum=low, maximum=high, step=step, value=getattr(d, name),
                         elem_id=_elem(script, name), info=info)

    def radio(name: str, label: str, info: str, choices: Any = None) -> gr.Radio:
        return gr.Radio(label=label, choices=list(choices or ARG_BY_NAME[name].kind.choices), value=getattr(d, name),
                        elem_id=_elem(script, name), info=info)

    with InputAccordion(d.enabled, label="DaTo acceleration", elem_id=_elem(script, "enabled")) as enabled:
        c["enabled"] = enabled
        with enabled.extra():
            gr.HTML(value="", elem_id=_elem(script, "summary"), elem_classes=["dato-summary"])
        with FormRow(elem_classes=["dato-row"]):
            c["method"] = radio("method", "Token method", HINTS["method"])
        with FormRow(elem_classes=["dato-row"]):
            c["ratio"] = slider("ratio", "Token ratio", HINTS["ratio"])
            c["max_downsample"] = radio("max_downsample", "Token levels", HINTS["max_downsample"], LEVEL_CHOICES)
        with gr.Accordion("Token method details", open=False, elem_classes=["dato-details"]):
            with FormRow(elem_classes=["dato-row"]):
                c["prune_variant"] = radio("prune_variant", "DaTo prune variant", HINTS["prune_variant"],
                                           ARG_BY_NAME["prune_variant"].kind.values)
            with FormRow(elem_classes=["dato-row"]):
                c["downsample_factor"] = slider("downsample_factor", "ToDo factor", HINTS["todo"])
                c["downsample_factor2"] = slider("downsample_factor2", "ToDo factor, second level",
                                                 "0 = the first level's factor")
                c["downsample_stop"] = slider("downsample_stop", "ToDo stop after",
                                              "fraction of the steps; 1 = never stop")
        with FormRow(elem_classes=["dato-row"]):
            c["schedule"] = schedule_dropdown("schedule", d.schedule, "Cache schedule")
            refresh = ToolButton(value="\U0001f504", elem_id=_elem(script, "refresh"))
        with FormRow(elem_classes=["dato-row"]):
            c["speed_target"] = slider("speed_target", "Speed target (× faster, 0 = off)", HINTS["speed_target"])
        with gr.Accordion("Adaptive caching", open=False, elem_classes=["dato-details"]):
            with FormRow(elem_classes=["dato-row"]):
                c["adaptive"] = slider("adaptive", "Adaptive threshold (0 = off)", HINTS["adaptive"])
                c["adaptive_cap"] = slider("adaptive_cap", "Adaptive: cached in a row at most", HINTS["adaptive_cap"])
        with FormRow(elem_classes=["dato-row"], visible=d.schedule == SCHEDULE_UNIFORM) as uniform_row:
            c["interval"] = slider("interval", "Uniform: full step every N", HINTS["interval"])
            c["depth"] = slider("depth", "Uniform: cache depth", HINTS["depth"])
        with gr.Group(visible=not is_img2img, elem_classes=["dato-hires"]):
            c["hr_mode"] = radio("hr_mode", "Hires. fix pass", HINTS["hr_mode"])
            with gr.Group(visible=d.hr_mode == "own") as hr_group:
                with FormRow(elem_classes=["dato-row"]):
                    c["hr_method"] = radio("hr_method", "Hires token method", "hires pass: " + HINTS["method"])
                    c["hr_ratio"] = slider("hr_ratio", "Hires token ratio", "hires pass: " + HINTS["ratio"])
                with FormRow(elem_classes=["dato-row"]):
                    c["hr_schedule"] = schedule_dropdown("hr_schedule", d.hr_schedule, "Hires cache schedule")
                    c["hr_interval"] = slider("hr_interval", "Hires uniform: every N",
                                              "hires pass: " + HINTS["interval"])
                    c["hr_depth"] = slider("hr_depth", "Hires uniform: depth", "hires pass: " + HINTS["depth"])
        context = gr.Textbox(value="{}", visible=False, elem_id=_elem(script, "context"),
                             elem_classes=["dato-context"])
        preview = gr.HTML(value=preview_html(_values_of(d), "{}", is_img2img), elem_id=_elem(script, "preview"),
                          elem_classes=["dato-preview-box"])

    controls = [c[name] for name in ARG_NAMES]

    if not getattr(script, "_dato_events_wired", False):  # ui() runs again for API defaults: no events then
        script._dato_events_wired = True
        PAGE_CONTROLS["img2img" if is_img2img else "txt2img"] = controls
        SCHEDULE_DROPDOWNS["img2img" if is_img2img else "txt2img"] = [c["schedule"], c["hr_schedule"]]
        inputs = controls[1:] + [context]

        def update_preview(*values):
            return preview_html(dict(zip(ARG_NAMES[1:], values[:-1], strict=True)), values[-1], is_img2img)

        for component in inputs:
            component.change(fn=update_preview, inputs=inputs, outputs=[preview], show_progress=False)
        c["schedule"].change(fn=lambda s: gr.update(visible=s == SCHEDULE_UNIFORM), inputs=[c["schedule"]],
                             outputs=[uniform_row], show_progress=False)
        c["hr_mode"].change(fn=lambda m: gr.update(visible=m == "own"), inputs=[c["hr_mode"]],
                            outputs=[hr_group], show_progress=False)

        refresh.click(fn=lambda: refreshed_choices(2), inputs=[], outputs=[c["schedule"], c["hr_schedule"]],
                      show_progress=False)

    script.infotext_fields = [PasteField(c[name], INFOTEXT_KEYS[name], api=None) for name in ARG_NAMES]
    script.paste_field_names = [INFOTEXT_KEYS[name] for name in ARG_NAMES]
    return controls


def keep_ui_config_keys() -> list:
    """``on_ui_tabs``: the accordion's controls keep their ``ui-config.json`` keys (see :data:`UI_CONFIG_SOURCE`).

    The WebUI keys a script's controls by its file name, set after ``ui()`` returns; ``on_ui_tabs`` runs after
    txt2img and img2img are built and before the keys are read (``modules/ui.py: create_ui``). No tab is added.
    """
    for controls in PAGE_CONTROLS.values():
        for control in controls:
            control.custom_script_source = UI_CONFIG_SOURCE
    return []


def _values_of(args: DatoArgs) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ARG_NAMES[1:]}


# ------------------------------------------------------------------ preview
def _context(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw or "{}")
    except (TypeError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _int(value: Any, default: int) -> int:
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError):
        return default


#: what the page script sends (``javascript/dato.js``), under the names of the txt2img/img2img API's fields
PAGE_DEFAULTS = {"steps": 20}


def preview_plan(values: dict[str, Any], context: dict[str, Any], is_img2img: bool) -> RunPlan:
    """The plan the run would make for these control values on this page: the same planner, the page's
    geometry (steps, size, sampler, hires fix, denoising strength) and the loaded model's facts."""
    args = DatoArgs.from_args([True] + [values.get(n) for n in ARG_NAMES[1:]])
    geometry = geometry_from_request({**PAGE_DEFAULTS, **context}, is_img2img)
    return plan_run(args, geometry, host_facts(None, is_img2img), store.load)


def preview_data(values: dict[str, Any], context: dict[str, Any], is_img2img: bool) -> dict[str, Any]:
    """The per-step preview of both passes (what ``dato.js`` draws)."""
    return preview_plan(values, context, is_img2img).preview()


def preview_html(values: dict[str, Any], raw_context: str, is_img2img: bool) -> str:
    try:
        data = preview_data(values, _context(raw_context), is_img2img)
    except (ArgsError, ScheduleError, ValueError) as exc:
        echo = html.escape(json.dumps({"context": raw_context}), quote=True)
        return f'<div class="dato-preview dato-preview-error" data-dato="{echo}">{html.escape(str(exc))}</div>'
    data["context"] = raw_context  # the page script re-sends the step counts if this is not what it last sent
    lines = []
    for p in data["passes"]:
        calls = f", {p['calls']} model calls" if p.get("calls", p["steps"]) != p["steps"] else ""
        if p.get("off"):
            lines.append(f"{p['label']} ({p['steps']} steps): off" + (f" ({p['reason']})" if p.get("reason") else ""))
        else:
            ratio = f", {p['method']} {max(p['ratio']):.2f}" if p["method"] != "none" else ""
            if p.get("adaptive"):
                a = p["adaptive"]
                lines.append(f"{p['label']} ({p['steps']} steps{calls}{ratio}): adaptive caching, threshold "
                             f"{a['threshold']:g}, at most {a['cap']} cached in a row: at most about "
                             f"{p['speedup']:.2f}x faster in MACs, decided during the run")
            else:
                lines.append(f"{p['label']} ({p['steps']} steps{calls}, {p['full']} full{ratio}, about "
                             f"{p['speedup']:.2f}x faster in MACs): {p['preview']}")
        lines.extend(p.get("notes", ()))
    return preview_box(data, "<br>".join(html.escape(line) for line in lines))


def preview_box(data: dict[str, Any], text: str = "") -> str:
    """The step cells ``javascript/dato.js`` draws from ``data`` (``{"passes": [...], "context": ...}``), and
    ``text`` (HTML) beside them; the Search tab's sections show their schedules with it too."""
    payload = html.escape(json.dumps(data, separators=(",", ":")), quote=True)
    return f'<div class="dato-preview" data-dato="{payload}"><div class="dato-preview-text">{text}</div></div>'


__all__ = ["PAGE_CONTROLS", "SCHEDULE_DROPDOWNS", "UI_CONFIG_SOURCE", "build", "keep_ui_config_keys",
           "preview_box", "preview_data", "preview_html", "preview_plan", "refreshed_choices", "schedule_choices",
           "schedule_dropdowns"]
