"""The "DaTo Search" tab (``on_ui_tabs``): the search's settings and its results, then the two other generators.

Settings, start/cancel, a status line that ``javascript/dato.js`` refreshes
every few seconds while a search runs, a cost/quality plot, a front-point
picker (Gradio 3.41's ScatterPlot has no select event) with the point's step
preview and its sample beside the baseline's, and "Save as schedule", which
also refreshes the accordions' schedule dropdowns (:data:`ui.SCHEDULE_DROPDOWNS`).
Below them, the calibration and gate-training accordions
(:mod:`~dato_webui.calibration_ui`, :mod:`~dato_webui.gates_ui`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from dato.core.layout import DEFAULT_LAYOUT
from dato.core.schedule import Schedule, ScheduleError, short_repr
from dato.generators.search import load_results, schedule_from_result

from . import calibration_ui, gates_ui, search_jobs, ui, widgets
from .requests import RequestError

RUNNING_MARK = '<span class="dato-search-running" hidden></span>'  # javascript/dato.js polls while it is shown


# ------------------------------------------------------------------ the results
def _front_table(run_id: str | None) -> tuple[Any, list[str], str]:
    """(scatter data, pick choices, status markdown) for the newest state of ``run_id``."""
    import pandas as pd

    # Gradio 3.41 serialises an empty frame with NaN, which the browser's JSON.parse rejects and every tab
    # stops sending events: an empty plot is sent as None, and non-finite points are left out.
    empty = None
    if not run_id:
        return empty, [], "No search yet. Set it up on the left and press **Start search**."
    try:
        st = search_jobs.status(run_id)
    except RequestError as exc:
        return empty, [], str(exc)
    path = Path(st.get("results_path") or search_jobs.results_path(run_id))
    rows, choices = [], []
    if path.is_file():
        results = load_results(path)
        front = set(results["front"])
        for e in results["evaluations"]:
            kind = "baseline" if e["origin"] == "baseline" else "preset" if e["origin"] in ("preset", "uniform") \
                else "front" if e["id"] in front else "evaluated"
            if e["id"] in front and kind != "baseline":
                kind = "front"
            if math.isfinite(e["cost"]) and math.isfinite(e["quality"]):
                rows.append({"cost": e["cost"], "quality": e["quality"], "kind": kind,
                             "label": f"#{e['id']} {e['preview']}"})
        for p in results["front_points"]:
            choices.append(f"#{p['id']}  cost {p['cost']:.3f}  quality {p['quality']:.4g}  {p['preview']}")
    data = pd.DataFrame(rows) if rows else empty
    eta = st.get("eta_seconds")
    parts = [f"stage {st['stage']}"] if st.get("stage") else []
    if st.get("generations"):  # a finished run started again, or one read from its file, has no live counters
        parts.append(f"generation {st.get('generation', 0)} of {st['generations']}")
    parts.append(f"{st.get('evaluations', 0)} evaluations")
    if eta and st.get("running"):
        parts.append(f"about {max(1, round(eta / 60))} min left")
    md = f"**{run_id}**: {st.get('state')} — {', '.join(parts)}\n\n{st.get('message', '')}"
    if st.get("running"):
        md += "\n\n" + RUNNING_MARK
    return data, choices, md


def _plot_limits(data: Any) -> tuple[list[float] | None, list[float] | None]:
    """Axis ranges with a margin, so that the baseline (cost 1, fidelity at its cap) is not cut at the corner."""
    if data is None or not len(data):
        return None, None
    lo, hi = float(data["quality"].min()), float(data["quality"].max())
    pad = max(0.06 * (hi - lo), 0.05 * max(abs(hi), 1.0) if hi == lo else 0.0)
    return [0.0, max(1.0, float(data["cost"].max())) * 1.05], [lo - pad, hi + pad]


def _pick_id(choice: str | None) -> int | None:
    if not choice or not choice.startswith("#"):
        return None
    try:
        return int(choice[1:].split()[0])
    except ValueError:
        return None


def _keep_pick(choices: list[str], current: str | None) -> str | None:
    """The pick after a refresh: the same evaluation if it is still on the front, else the first point."""
    wanted = _pick_id(current)
    for choice in choices:
        if wanted is not None and _pick_id(choice) == wanted:
            return choice
    return choices[0] if choices else None


def _picked(run_id: str | None, choice: str | None) -> Schedule | None:
    eval_id = _pick_id(choice)
    if not run_id or eval_id is None:
        return None
    path = search_jobs.results_path(run_id)
    if not path.is_file():
        return None
    try:
        return schedule_from_result(load_results(path), eval_id, f"pick-{eval_id}")
    except (KeyError, ScheduleError, ValueError):
        return None


def pick_preview(run_id: str | None, choice: str | None) -> str:
    """HTML for a picked front point: its steps and ratios, and the same cells the accordion's preview draws."""
    schedule = _picked(run_id, choice)
    if schedule is None:
        return ""
    ratios = " ".join(str(round(r * 10)) for r in schedule.ratio)
    text = (f"<code>{html.escape(schedule.preview())}</code> — F full, R reuse, digit = cache depth; "
            f"{html.escape(schedule.method)} ratios <code>{ratios}</code> (tenths)")
    return widgets.schedule_preview(schedule, f"front point #{_pick_id(choice)}", text, "dato-search-pick")


def _gallery(images: list) -> list:
    """Gallery items from sample tensors (B, 3, H, W) in [0, 1]."""
    from dato.generators.search.objectives import to_pil

    out = []
    for batch in images:
        if batch is not None:
            out.extend(to_pil(batch))
    return out


def show_samples(run_id: str | None, choice: str | None) -> list:
    """Gallery items: the picked schedule's sample of the run's first (prompt, seed), then the baseline's."""
    schedule = _picked(run_id, choice)
    if schedule is None:
        return []
    backend, pairs = search_jobs.run_backend(run_id)
    picked = backend.generate(schedule, pairs).images
    return _gallery([picked, search_jobs.baseline_images(run_id, backend, pairs)])


def save_from_tab(run_id: str | None, choice: str | None, name: str | None) -> list:
    """The tab's "Save as schedule": [message, then one update per accordion schedule dropdown on the page]."""
    if _picked(run_id, choice) is None:
        return widgets.save_outputs("Pick a front point first.", False)
    try:
        info = search_jobs.save_point(run_id, _pick_id(choice), (name or "").strip())
    except RequestError as exc:
        return widgets.save_outputs(f"**Not saved:** {exc}", False)
    where = " in the txt2img and img2img accordions' *Cache schedule* lists" if ui.schedule_dropdowns() else ""
    return widgets.save_outputs(f"Saved **{info['name']}**; it is now{where or ' installed'}.", True)


# ------------------------------------------------------------------ the tab
def tab_request(source, prompts, prompt_file, negative, sampler, steps, cfg, width, height, samples, population,
                generations, seed, mode, method, max_depth, reuse, quality, cost, min_quality, run_id) -> dict:
    """The tab's inputs as a start request (the same JSON the API takes)."""
    body: dict[str, Any] = {
        "steps": int(steps), "sampler_name": sampler, "cfg_scale": float(cfg), "width": int(width),
        "height": int(height), "negative_prompt": negative or "", "samples": int(samples or 1),
        "population": int(population or 8), "generations": int(generations or 1), "seed": int(seed or 0),
        "mode": mode, "method": method, "max_depth": int(max_depth), "allow_reuse": bool(reuse),
        "quality": quality, "cost": cost,
    }
    if method == "none":
        body["ratio_levels"] = [0.0]
        if mode != "cache":
            body["mode"] = "cache"
    if source == "ImageNet class names":
        body["prompt_set"] = "imagenet"
    elif source == "Prompt file":
        if prompt_file is None:
            raise RequestError("choose a prompt file")
        body["prompts"] = widgets.lines(Path(getattr(prompt_file, "name", prompt_file)).read_text(encoding="utf-8"))
    else:
        body["prompts"] = widgets.lines(prompts)
    if str(min_quality or "").strip():
        try:
            body["min_quality"] = float(min_quality)
        except ValueError:
            raise RequestError(f"minimum quality {short_repr(min_quality)} is not a number") from None
    if str(run_id or "").strip():
        body["run_id"] = str(run_id).strip()
    return body


def _settings_column(samplers: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """The search's inputs (in :func:`tab_request`'s order) and its buttons."""
    import gradio as gr

    source = gr.Radio(["Prompts below", "Prompt file", "ImageNet class names"], value="Prompts below",
                      label="Prompt source", elem_id="dato_search_prompt_source")
    prompts = gr.Textbox(lines=4, label="Prompts (one per line)", elem_id="dato_search_prompts",
                         value=widgets.EXAMPLE_PROMPTS)
    prompt_file = gr.File(label="Prompt file (.txt, one per line)", file_types=[".txt"],
                          elem_id="dato_search_prompt_file")
    negative = gr.Textbox(label="Negative prompt", elem_id="dato_search_negative")
    sampler, steps, cfg = widgets.sampler_row("dato_search", samplers)
    with gr.Row():
        width, height = widgets.size_sliders("dato_search")
    with gr.Row():
        samples = gr.Number(value=2, precision=0, label="Images per evaluation", elem_id="dato_search_samples")
        population = gr.Number(value=8, precision=0, label="Population", elem_id="dato_search_pop")
        generations = gr.Number(value=5, precision=0, label="Generations", elem_id="dato_search_gens")
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="dato_search_seed")
    with gr.Row():
        mode = gr.Radio(["joint", "two-stage", "cache"], value="joint", label="Search",
                        info="two-stage: cache depths first, then token ratios (DaTo)", elem_id="dato_search_mode")
        method = gr.Dropdown(["prune", "merge", "downsample", "none"], value="prune", label="Token method",
                             elem_id="dato_search_method")
        max_depth = gr.Slider(0, DEFAULT_LAYOUT.max_depth, value=2, step=1, label="Deepest cache branch",
                              elem_id="dato_search_depth")
        reuse = gr.Checkbox(value=True, label="Allow whole-output reuse", elem_id="dato_search_reuse")
    with gr.Row():
        quality = gr.Radio(["fidelity", "imagereward"], value="fidelity", label="Quality",
                           info="fidelity: PSNR to the unaccelerated image; ImageReward downloads 1.7 GB",
                           elem_id="dato_search_quality")
        cost = gr.Radio(["macs", "time"], value="macs", label="Cost", elem_id="dato_search_cost")
        min_quality = gr.Textbox(value="", label="Minimum quality (optional)",
                                 info="fidelity: dB; ImageReward: change vs the baseline, e.g. -0.2",
                                 elem_id="dato_search_min_quality")
    run_id = gr.Textbox(value="", label="Run id (empty = new; an unfinished run's id resumes it)",
                        elem_id="dato_search_run_id")
    with gr.Row():
        buttons = {"start": gr.Button("Start search", variant="primary", elem_id="dato_search_start"),
                   "cancel": gr.Button("Cancel", elem_id="dato_search_cancel"),
                   "refresh": gr.Button("Refresh", elem_id="dato_search_refresh")}
    return [source, prompts, prompt_file, negative, sampler, steps, cfg, width, height, samples, population,
            generations, seed, mode, method, max_depth, reuse, quality, cost, min_quality, run_id], buttons


def _results_column() -> dict[str, Any]:
    import gradio as gr

    r = {"status": gr.Markdown(elem_id="dato_search_status"),
         "plot": gr.ScatterPlot(x="cost", y="quality", color="kind", tooltip=["label", "cost", "quality"],
                                title="Pareto front (cost relative to the unaccelerated run)", x_title="cost",
                                y_title="quality", width=520, height=360, elem_id="dato_search_plot"),
         # Gradio 3.41's ScatterPlot has no select event: the front point is picked here
         "pick": gr.Dropdown([], label="Front point", elem_id="dato_search_pick"),
         "preview": gr.HTML(elem_id="dato_search_preview"),
         "show": gr.Button("Show samples (picked vs baseline)", elem_id="dato_search_show"),
         "gallery": gr.Gallery(label="Picked schedule | baseline", columns=2, height=300,
                               elem_id="dato_search_gallery")}
    r.update(widgets.save_row("dato_search"))
    return r


def on_ui_tabs():
    """``script_callbacks.on_ui_tabs``: the "DaTo Search" tab."""
    import gradio as gr

    state = {"run_id": None}
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column(scale=5):
                inputs, buttons = _settings_column(widgets.webui_samplers())
            with gr.Column(scale=6):
                r = _results_column()
        plot, pick, status_md = r["plot"], r["pick"], r["status"]

        def refresh(current=None):
            if state["run_id"] is None:  # after "Reload UI" or a restart: the running job or the last results
                state["run_id"] = search_jobs.latest_run()
            data, choices, md = _front_table(state["run_id"])
            # the plot's postprocess draws with the component's own limits (an update cannot carry them)
            plot.x_lim, plot.y_lim = _plot_limits(data)
            return data, gr.update(choices=choices, value=_keep_pick(choices, current)), md

        def do_start(*values):
            try:
                job = search_jobs.start(tab_request(*values))
            except (RequestError, OSError) as exc:
                return gr.update(), gr.update(), f"**Not started:** {exc}"
            state["run_id"] = job.run_id
            return refresh()

        def do_cancel(current):
            if state["run_id"]:
                try:
                    search_jobs.cancel(state["run_id"])
                except RequestError as exc:
                    return gr.update(), gr.update(), str(exc)
            return refresh(current)

        # the accordions' schedule dropdowns (built before on_ui_tabs runs): a saved schedule shows up at once
        dropdowns = ui.schedule_dropdowns()
        view = [plot, pick, status_md]
        buttons["start"].click(do_start, inputs=inputs, outputs=view)
        buttons["cancel"].click(do_cancel, inputs=[pick], outputs=view)
        buttons["refresh"].click(refresh, inputs=[pick], outputs=view, show_progress=False)
        pick.change(lambda c: pick_preview(state["run_id"], c), inputs=[pick], outputs=[r["preview"]],
                    show_progress=False)
        r["show"].click(lambda c: show_samples(state["run_id"], c), inputs=[pick], outputs=[r["gallery"]])
        r["save"].click(lambda c, n: save_from_tab(state["run_id"], c, n), inputs=[pick, r["save_name"]],
                        outputs=[r["save_msg"], *dropdowns])
        tab.load(refresh, outputs=view)
        calibration_ui.build_section(tab, dropdowns)  # two accordions below the search
        gates_ui.build_section(tab, dropdowns)
    return [(tab, "DaTo Search", "dato_search")]
