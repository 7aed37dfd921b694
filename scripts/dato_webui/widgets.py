"""Gradio pieces the Search tab's three sections (search, calibration, gates) share.

Sampling controls with per-section ``elem_id`` prefixes, the "Save as schedule"
row and its answer (which refreshes the accordions' schedule dropdowns), a
schedule's preview with the accordion's step cells, and the sections' own
``ui-config.json`` keys.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator
from typing import Any

import gradio as gr

from dato.core.plan import pass_summary
from dato.core.schedule import Schedule

from . import backend, ui
from .requests import RequestError

EXAMPLE_PROMPTS = "a photo of a red fox in the snow\na watercolor painting of a lighthouse"


def webui_samplers() -> list[str]:
    return backend.visible_samplers() or ["Euler"]


def sampler_row(prefix: str, samplers: list[str]) -> list[Any]:
    """[sampler, steps, CFG] in one row."""
    with gr.Row():
        sampler = gr.Dropdown(samplers, value="Euler" if "Euler" in samplers else samplers[0], label="Sampler",
                              elem_id=f"{prefix}_sampler")
        steps = gr.Slider(4, 100, value=20, step=1, label="Steps", elem_id=f"{prefix}_steps")
        cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id=f"{prefix}_cfg")
    return [sampler, steps, cfg]


def size_sliders(prefix: str) -> list[Any]:
    """[width, height] (in the caller's row)."""
    return [gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{prefix}_width"),
            gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{prefix}_height")]


def sampling_controls(prefix: str, samplers: list[str]) -> list[Any]:
    """Prompts, negative prompt, sampler, steps, CFG, size and seed (the search's controls, own elem_ids)."""
    prompts = gr.Textbox(lines=3, label="Prompts (one per line)", elem_id=f"{prefix}_prompts", value=EXAMPLE_PROMPTS)
    negative = gr.Textbox(label="Negative prompt", elem_id=f"{prefix}_negative")
    sampler, steps, cfg = sampler_row(prefix, samplers)
    with gr.Row():
        width, height = size_sliders(prefix)
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id=f"{prefix}_seed")
    return [prompts, negative, sampler, steps, cfg, width, height, seed]


def lines(text: str | None) -> list[str]:
    """The non-blank lines of a textbox, stripped (prompts)."""
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed) -> dict[str, Any]:
    """:func:`sampling_controls`' values as the fields of a request."""
    return {"prompts": lines(prompts), "negative_prompt": negative or "", "sampler_name": sampler,
            "steps": int(steps), "cfg_scale": float(cfg), "width": int(width), "height": int(height),
            "seed": int(seed or 0)}


@contextlib.contextmanager
def section(label: str, section_id: str, intro: str) -> Iterator[None]:
    """A closed accordion of the Search tab around a row (settings left, results right) with its own
    ``ui-config.json`` keys (:func:`own_ui_config_keys`)."""
    with gr.Accordion(label, open=False, elem_id=section_id) as accordion:
        gr.Markdown(intro)
        with gr.Row():
            yield
    own_ui_config_keys(accordion, section_id)


def save_row(prefix: str) -> dict[str, Any]:
    """The "Save as schedule" row of a section and its message (save_name, save, save_msg)."""
    with gr.Row():
        out = {"save_name": gr.Textbox(label="Save as schedule named", elem_id=f"{prefix}_save_name"),
               "save": gr.Button("Save as schedule", elem_id=f"{prefix}_save")}
    out["save_msg"] = gr.Markdown(elem_id=f"{prefix}_save_msg")
    return out


def schedule_foot(prefix: str) -> dict[str, Any]:
    """A generator section's last controls: the schedule's preview, then its "Save as schedule" row."""
    return {"preview": gr.HTML(elem_id=f"{prefix}_preview"), **save_row(prefix)}


def save_outputs(message: str, saved: bool) -> list:
    """[message, one update per accordion schedule dropdown on the page (new choices only after a save)]."""
    count = len(ui.schedule_dropdowns())
    return [message, *(ui.refreshed_choices(count) if saved else [gr.update() for _ in range(count)])]


def save_generated(name: str | None, save: Any) -> list:
    """"Save as schedule" of a generator's section: ``save(name)`` installs it and answers as the route does."""
    try:
        if not (name or "").strip():
            raise RequestError("give the schedule a name")
        saved = save(name.strip())["saved"]
    except RequestError as exc:
        return save_outputs(f"**Not saved:** {exc}", False)
    return save_outputs(f"Saved **{saved['name']}** ({saved['preview']}); the accordions list it now.", True)


def schedule_preview(schedule: Schedule, label: str, text: str, css_class: str) -> str:
    """``text`` (HTML) about ``schedule`` above the accordion's step cells for it (drawn by ``javascript/dato.js``)."""
    data = {"passes": [{**pass_summary(schedule, schedule.steps), "label": label, "name": schedule.name}],
            "context": ""}
    return f'<div class="{html.escape(css_class)}">{text}{ui.preview_box(data)}</div>'


def generator_preview(schedule: Schedule, speedup: float | None, label: str) -> str:
    """A generated schedule: its steps as text, its MACs speed-up, and the accordion's step cells."""
    gain = f"{speedup:.2f}x fewer UNet MACs" if speedup else "speed-up unknown"
    text = (f"<code>{html.escape(schedule.preview())}</code> — {gain}; {schedule.full_steps} of {schedule.steps} "
            "steps full (F full, R reuse, digit = cache depth)")
    return schedule_preview(schedule, label, text, "dato-generator-preview")


def own_ui_config_keys(block: Any, section: str) -> None:
    """Give every component under ``block`` its own ``ui-config.json`` keys.

    The WebUI keys a tab's saved defaults by tab id and label only (``dato_search/Sampler/value``), so these
    sections' "Sampler", "Steps", "Deepest cache branch" ... would share the search's entries: the first
    component registered wins and the others are set to its value and range (seen in v1.10.1: the calibration's
    depth slider came up at 2 with minimum 0, its sampler at the search's). ``custom_script_source`` is the
    WebUI's own key prefix (``customscript/<source>/...``, set on scripts' controls); here it names the section.
    """
    for child in getattr(block, "children", None) or ():
        child.custom_script_source = section
        own_ui_config_keys(child, section)
