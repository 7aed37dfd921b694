"""The "Calibrate (SmoothCache)" accordion of the Search tab: calibrate, pick, move the threshold, save.

Its curves are plotted per cacheable unit; the threshold slider spans the
measured errors and previews the schedule it gives, with the MACs speed-up.
On page load (or a browser refresh) it shows the loaded model's last
calibration, from its file after a restart.
"""

from __future__ import annotations

import html
import math
from typing import Any

from dato.core.layout import DEFAULT_LAYOUT
from dato.generators.calibrate import Calibration, alpha_range

from . import calibration_jobs as jobs
from . import widgets
from .requests import RequestError

SECTION = "dato_calibrate"


def calibration_frame(calibration: Calibration | None) -> Any:
    """Plot rows (step, error, unit) of the one-step-ahead curves; non-finite values are dropped, and no rows
    at all is None: an empty or NaN frame reaches the browser as NaN, which JSON.parse rejects."""
    import pandas as pd

    if calibration is None:
        return None
    rows = [{"step": s, "error": v, "unit": unit} for unit in calibration.errors
            for s, v in enumerate(calibration.curve(unit, 1)) if math.isfinite(v)]
    return pd.DataFrame(rows) if rows else None


def alpha_slider(calibration: Calibration | None) -> dict[str, Any]:
    """Slider range 0..a little above the largest error (beyond it nothing changes), value the median error."""
    import gradio as gr

    if calibration is None:
        return gr.update()
    hi = max(alpha_range(calibration)[1], 1e-6) * 1.05
    step = 10 ** math.floor(math.log10(hi / 500))
    top = math.ceil(hi / step) * step
    return gr.update(minimum=0.0, maximum=top, step=step, value=round(jobs.default_alpha(calibration) / step) * step)


def _status(cal_id: str, calibration: Calibration) -> str:
    info = calibration.info
    lo, hi = alpha_range(calibration)
    return (f"**{cal_id}**: {info.get('runs', '?')} prompt(s), {calibration.steps} steps, "
            f"{info.get('sampler_name', '?')} {info.get('width', '?')}x{info.get('height', '?')}, lookahead "
            f"{calibration.lookahead}; errors {lo:.3g}..{hi:.3g}. Move the threshold: below the smallest error "
            "every step is full, above the largest the schedule is as coarse as the lookahead allows.")


def tab_calibrate(prompts, negative, sampler, steps, cfg, width, height, seed, lookahead, allow_reuse,
                  max_depth) -> list:
    """"Calibrate": [status, calibration dropdown, plot, alpha slider, preview]."""
    import gradio as gr

    body = {**widgets.sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed),
            "lookahead": int(lookahead)}
    try:
        cal_id = jobs.calibrate_now(body)["id"]
    except (RequestError, RuntimeError, OSError) as exc:
        return [f"**Not calibrated:** {exc}", gr.update(), gr.update(), gr.update(), gr.update()]
    calibration = jobs.get_calibration(cal_id)
    return [_status(cal_id, calibration), gr.update(choices=jobs.list_calibrations(), value=cal_id),
            calibration_frame(calibration), alpha_slider(calibration),
            tab_preview(cal_id, jobs.default_alpha(calibration), allow_reuse, max_depth)]


def tab_show(cal_id: str | None) -> list:
    """A calibration picked (or the page loaded): [status, plot, alpha slider]."""
    import gradio as gr

    if not cal_id:
        return ["No calibration for this model yet. Set it up and press **Calibrate**.", None, gr.update()]
    try:
        calibration = jobs.get_calibration(cal_id)
    except RequestError as exc:
        return [str(exc), None, gr.update()]
    return [_status(cal_id, calibration), calibration_frame(calibration), alpha_slider(calibration)]


def tab_preview(cal_id: str | None, alpha: float, allow_reuse: bool, max_depth: float) -> str:
    """The schedule of the slider's threshold and its speed-up (or why there is none)."""
    if not cal_id:
        return ""
    try:
        calibration = jobs.get_calibration(cal_id)
        schedule, speedup = jobs.threshold_schedule(calibration, float(alpha), bool(allow_reuse),
                                                    min(int(max_depth), calibration.max_depth))
    except (RequestError, RuntimeError) as exc:
        return html.escape(str(exc))
    return widgets.generator_preview(schedule, speedup, f"alpha {float(alpha):.4g}")


def tab_save(cal_id, alpha, allow_reuse, max_depth, name) -> list:
    """"Save as schedule" of the calibration section."""
    if not cal_id:
        return widgets.save_outputs("Calibrate first.", False)

    def save(schedule_name: str) -> dict[str, Any]:
        depth = min(int(max_depth), jobs.get_calibration(cal_id).max_depth)
        return jobs.calibration_schedule(cal_id, {"alpha": float(alpha), "allow_reuse": bool(allow_reuse),
                                                  "max_depth": depth, "name": schedule_name})

    return widgets.save_generated(name, save)


def tab_load() -> list:
    """Page load (or a browser refresh): the loaded model's last calibration."""
    import gradio as gr

    cal_id = jobs.latest_calibration()
    return [gr.update(choices=jobs.list_calibrations(), value=cal_id), *tab_show(cal_id)]


def _section() -> dict[str, Any]:
    import gradio as gr

    c: dict[str, Any] = {}
    with widgets.section("Calibrate (SmoothCache)", SECTION,
                         "One unaccelerated generation per prompt measures how much each cacheable feature changes "
                         "from step to step; one threshold then turns the curves into a schedule."):
        with gr.Column(scale=5):
            c["inputs"] = widgets.sampling_controls(SECTION, widgets.webui_samplers())
            c["lookahead"] = gr.Slider(1, jobs.MAX_LOOKAHEAD, value=3, step=1, label="Lookahead k (steps a "
                                       "feature may be reused for)", elem_id="dato_calibrate_lookahead")
            c["run"] = gr.Button("Calibrate", variant="primary", elem_id="dato_calibrate_run")
        with gr.Column(scale=6):
            c["status"] = gr.Markdown(elem_id="dato_calibrate_status")
            c["pick"] = gr.Dropdown([], label="Calibration", elem_id="dato_calibrate_pick")
            c["plot"] = gr.LinePlot(x="step", y="error", color="unit", tooltip=["unit", "step", "error"],
                                    title="Relative L1 change to the next step", x_title="step",
                                    y_title="error", width=520, height=300, elem_id="dato_calibrate_plot")
            c["alpha"] = gr.Slider(0.0, 1.0, value=0.1, step=0.001, label="Threshold alpha",
                                   elem_id="dato_calibrate_alpha")
            with gr.Row():
                c["reuse"] = gr.Checkbox(value=True, label="Allow whole-output reuse", elem_id="dato_calibrate_reuse")
                deepest = DEFAULT_LAYOUT.max_depth  # a calibration of a deeper UNet is capped when it is used
                c["depth"] = gr.Slider(-1, deepest, value=deepest, step=1, label="Deepest cache branch",
                                       elem_id="dato_calibrate_depth")
            c.update(widgets.schedule_foot(SECTION))
    return c


def build_section(tab: Any, dropdowns: list[Any]) -> None:
    """Inside the Search tab ``tab``: the accordion, its events, its page load; a save refreshes ``dropdowns``."""
    c = _section()
    threshold = [c["pick"], c["alpha"], c["reuse"], c["depth"]]
    c["run"].click(tab_calibrate, inputs=[*c["inputs"], c["lookahead"], c["reuse"], c["depth"]],
                   outputs=[c["status"], c["pick"], c["plot"], c["alpha"], c["preview"]])
    c["pick"].change(tab_show, inputs=[c["pick"]], outputs=[c["status"], c["plot"], c["alpha"]],
                     show_progress=False)
    for control in (c["alpha"], c["reuse"], c["depth"]):
        control.change(tab_preview, inputs=threshold, outputs=[c["preview"]], show_progress=False)
    c["save"].click(tab_save, inputs=[*threshold, c["save_name"]], outputs=[c["save_msg"], *dropdowns])
    tab.load(tab_load, outputs=[c["pick"], c["status"], c["plot"], c["alpha"]])
