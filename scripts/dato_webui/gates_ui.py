"""The "Gradient gates (DiP-GO)" accordion of the Search tab: start, follow the loss, pick a speed-up, save.

On page load (or a browser refresh) it shows the newest gate training of this
session, or the newest result file after a restart.
"""

from __future__ import annotations

import html
import math
from typing import Any

from dato.core.schedule import Schedule

from . import backend, widgets
from . import gates_jobs as jobs
from .requests import RequestError

SECTION = "dato_gates"


def history_frame(history: list[dict[str, Any]]) -> Any:
    """Plot rows (iteration, value, term) of the gates' training loss; non-finite values are dropped."""
    import pandas as pd

    rows = [{"iteration": int(h.get("iteration", i + 1)), "value": float(h[term]), "term": term}
            for i, h in enumerate(history) for term in ("loss", "consistency")
            if isinstance(h.get(term), (int, float)) and math.isfinite(h[term])]
    return pd.DataFrame(rows) if rows else None


def status_md(gate_id: str | None) -> str:
    """One status line: iteration i of N, loss terms, hard speed-up, ETA, or the error."""
    if not gate_id:
        return "No gate training yet. Set it up and press **Start**."
    try:
        st = jobs.gate_status(gate_id)
    except RequestError as exc:
        return str(exc)
    latest = st.get("latest") or {}
    parts = [f"iteration {st.get('iteration', 0)} of {st.get('iterations', '?')}"]
    for key, label in (("loss", "loss"), ("consistency", "consistency")):
        if isinstance(latest.get(key), (int, float)):
            parts.append(f"{label} {latest[key]:.4g}")
    if isinstance(latest.get("hard_speedup"), (int, float)):
        parts.append(f"gates now {latest['hard_speedup']:.2f}x")
    if st.get("eta_seconds") and st.get("running"):
        parts.append(f"about {max(1, round(st['eta_seconds'] / 60))} min left")
    error = f"\n\n**Error:** {st['error']}" if st.get("error") else ""
    return f"**{gate_id}**: {st['state']} — {', '.join(parts)}{error}"


def tab_start(prompts, negative, sampler, steps, cfg, width, height, seed, target, iterations, batch) -> list:
    """"Start": [status, gate-run dropdown]."""
    import gradio as gr

    body = {**widgets.sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed),
            "target_speedup": float(target), "iterations": int(iterations or 1), "batch_size": int(batch or 1)}
    try:
        job = jobs.start_gates(body)
    except (RequestError, OSError) as exc:
        return [f"**Not started:** {exc}", gr.update()]
    return [status_md(job.gate_id), gr.update(choices=[g["id"] for g in jobs.list_gates()], value=job.gate_id)]


def tab_refresh(gate_id: str | None) -> list:
    """[status, loss plot] of the picked gate run."""
    return [status_md(gate_id), history_frame(jobs.history(gate_id))]


def tab_cancel(gate_id: str | None) -> str:
    if not gate_id:
        return "Nothing to cancel."
    try:
        jobs.cancel_gates(gate_id)
    except RequestError as exc:
        return str(exc)
    return status_md(gate_id) + " — cancelling after the current iteration"


def tab_preview(gate_id: str | None, target: float) -> str:
    if not gate_id:
        return ""
    try:
        answer = jobs.gates_schedule(gate_id, {"target_speedup": float(target)})
    except RequestError as exc:
        return html.escape(str(exc))
    return widgets.generator_preview(Schedule.from_dict(answer["schedule"]), answer["macs_speedup"],
                                     f"gates at {float(target):g}x")


def tab_save(gate_id, target, name) -> list:
    if not gate_id:
        return widgets.save_outputs("Train gates first.", False)
    return widgets.save_generated(name, lambda n: jobs.gates_schedule(gate_id, {"target_speedup": float(target),
                                                                                "name": n}))


def tab_load() -> list:
    """Page load (or a browser refresh): the newest gate run."""
    import gradio as gr

    gates = [g["id"] for g in jobs.list_gates()]
    gate_id = gates[0] if gates else None
    return [gr.update(choices=gates, value=gate_id), *tab_refresh(gate_id)]


def _section() -> dict[str, Any]:
    import gradio as gr

    g: dict[str, Any] = {}
    with widgets.section("Gradient gates (DiP-GO)", SECTION,
                         "Learns which step may skip which part of the UNet by backpropagating through a few-step "
                         "sampler (dato's own: Euler, Euler a, Heun or DDIM). It runs in the background; your "
                         "generations wait at most one training iteration."):
        with gr.Column(scale=5):
            g["inputs"] = widgets.sampling_controls(SECTION, list(backend.GATE_SAMPLERS))
            with gr.Row():
                g["target"] = gr.Number(value=2.0, label="Target speed-up (MACs)", elem_id="dato_gates_target")
                g["iterations"] = gr.Number(value=100, precision=0, label="Iterations",
                                            elem_id="dato_gates_iterations")
                g["batch"] = gr.Number(value=4, precision=0, label="Batch size", elem_id="dato_gates_batch")
            with gr.Row():
                g["start"] = gr.Button("Start", variant="primary", elem_id="dato_gates_start")
                g["cancel"] = gr.Button("Cancel", elem_id="dato_gates_cancel")
                g["refresh"] = gr.Button("Refresh", elem_id="dato_gates_refresh")
        with gr.Column(scale=6):
            g["pick"] = gr.Dropdown([], label="Gate training", elem_id="dato_gates_pick")
            g["status"] = gr.Markdown(elem_id="dato_gates_status")
            g["plot"] = gr.LinePlot(x="iteration", y="value", color="term", title="Training loss",
                                    x_title="iteration", y_title="loss", width=520, height=260,
                                    elem_id="dato_gates_plot")
            g["post_target"] = gr.Number(value=2.0, label="Schedule at speed-up (MACs)",
                                         elem_id="dato_gates_post_target")
            g.update(widgets.schedule_foot(SECTION))
    return g


def build_section(tab: Any, dropdowns: list[Any]) -> None:
    """Inside the Search tab ``tab``: the accordion, its events, its page load; a save refreshes ``dropdowns``."""
    g = _section()
    view = [g["status"], g["plot"]]
    g["start"].click(tab_start, inputs=[*g["inputs"], g["target"], g["iterations"], g["batch"]],
                     outputs=[g["status"], g["pick"]])
    g["cancel"].click(tab_cancel, inputs=[g["pick"]], outputs=[g["status"]])
    g["refresh"].click(tab_refresh, inputs=[g["pick"]], outputs=view, show_progress=False)
    g["pick"].change(tab_refresh, inputs=[g["pick"]], outputs=view, show_progress=False)
    g["post_target"].change(tab_preview, inputs=[g["pick"], g["post_target"]], outputs=[g["preview"]],
                            show_progress=False)
    g["save"].click(tab_save, inputs=[g["pick"], g["post_target"], g["save_name"]],
                    outputs=[g["save_msg"], *dropdowns])
    tab.load(tab_load, outputs=[g["pick"], *view])
