"""The Search tab and its routes: NSGA-II schedule search against the live model, in the background.

The search itself is :mod:`dato.search` (WebUI-free); this module only
supplies its backend and its surfaces:

* :class:`WebUIBackend` makes each evaluation's images with the WebUI's own
  processing (``process_images`` on a txt2img job with the user's sampler,
  steps, size and CFG), one evaluation at a time inside
  ``modules.call_queue.queue_lock``, so user generations queue between
  evaluations instead of colliding. The patch goes on just before an
  evaluation and comes off right after: between evaluations the UNet is
  unpatched. The step clock is the WebUI's denoiser (``on_cfg_denoiser``).
* ``JOBS`` keeps every job of this WebUI process by run id, so a browser
  refresh finds a running search again; after a restart, starting the same
  settings with the same run id resumes from the last generation's checkpoint.
* Routes (``register(app)``): ``POST /dato/v1/search`` start,
  ``GET /dato/v1/search`` list, ``GET /dato/v1/search/{run_id}`` status with
  the Pareto front, ``DELETE /dato/v1/search/{run_id}`` cancel,
  ``GET /dato/v1/search/{run_id}/results`` the whole results file (every evaluation, settings, model),
  ``POST /dato/v1/search/{run_id}/save`` save a front point as a schedule.
* The tab (``on_ui_tabs``): settings, start/cancel, a status line that ``javascript/dato.js`` refreshes every
  few seconds while a search runs, a cost/quality plot, a front-point picker (Gradio 3.41's ScatterPlot has
  no select event) with the point's step preview and its sample beside the baseline's, and "Save as
  schedule", which also refreshes the accordions' schedule dropdowns (:data:`ui.SCHEDULE_DROPDOWNS`).
"""

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import dato
from dato.macs import trace_unet_cost
from dato.schedule import Schedule, ScheduleError
from dato.search import SearchCancelled, SearchJob, SearchSettings, SettingsError, load_results, schedule_from_result
from dato.search.objectives import Samples
from dato.search.results import REFERENCE_FILE, load_reference

from . import store

PREFIX = "/dato/v1/search"
TAG = "sd-webui-dato"
JOBS: dict[str, SearchJob] = {}
_JOBS_LOCK = threading.Lock()
_ACTIVE: dict[str, Any] = {"p": None, "unet": None}  # the evaluation in flight (for the step clock)
WEBUI_FIELDS = {"sampler_name": "Euler", "width": 512, "height": 512, "cfg_scale": 7.0, "negative_prompt": ""}
PROMPT_SETS = ("imagenet",)
IMAGENET_TEMPLATE = "a photo of a {}"
STEP_CLOCK = "dato_search_step_clock"


class SearchRequestError(ValueError):
    """A start request that cannot be served; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ backend
class WebUIBackend:
    """Evaluations through the WebUI's processing (see the module docstring)."""

    def __init__(self, steps: int, sampler_name: str = "Euler", width: int = 512, height: int = 512,
                 cfg_scale: float = 7.0, negative_prompt: str = "", max_downsample: int = 1) -> None:
        self.steps = int(steps)
        self.sampler_name = str(sampler_name)
        self.width, self.height = int(width), int(height)
        self.cfg_scale = float(cfg_scale)
        self.negative_prompt = str(negative_prompt)
        self.max_downsample = int(max_downsample)

    def describe(self) -> dict[str, Any]:
        from modules import shared

        model = shared.sd_model
        info = getattr(model, "sd_checkpoint_info", None)
        return {
            "backend": "webui", "steps": self.steps, "sampler": self.sampler_name, "cfg_scale": self.cfg_scale,
            "width": self.width, "height": self.height, "negative_prompt": self.negative_prompt,
            "latent_shape": [4, self.height // 8, self.width // 8],
            "model_name": getattr(info, "name_for_extra", None) or getattr(info, "title", None) or "",
            "model_hash": getattr(model, "sd_model_hash", None) or getattr(info, "shorthash", None) or "",
            "device": str(next(dato.find_unet(model).parameters()).device),
        }

    def macs(self, schedule: Schedule) -> float:
        from modules import shared

        cost = trace_unet_cost(shared.sd_model)
        return cost.schedule_macs(schedule.resample(self.steps), self.height // 8, self.width // 8,
                                  self.max_downsample)

    def generate(self, schedule: Schedule | None, pairs) -> Samples:
        from modules import call_queue

        ensure_step_clock()  # "Reload UI" clears callbacks; this module stays imported
        arrays, images, seconds = [], [], 0.0
        for prompt, seed in pairs:
            with call_queue.queue_lock:  # one image at a time: user jobs interleave between them
                array, image, elapsed = self._one(schedule, str(prompt), int(seed))
            arrays.append(array)
            if image is not None:
                images.append(image)
            seconds += elapsed
        latents = _stack(arrays)
        return Samples([(str(p), int(s)) for p, s in pairs], latents,
                       _stack(images) if len(images) == len(arrays) else None, seconds)

    def _one(self, schedule: Schedule | None, prompt: str, seed: int):
        from modules import processing, shared

        from .runtime import private_txt2img

        p = private_txt2img("search evaluation", prompt=prompt, negative_prompt=self.negative_prompt, seed=seed,
                            steps=self.steps, cfg_scale=self.cfg_scale, width=self.width, height=self.height,
                            sampler_name=self.sampler_name)  # the search patches by itself
        unet = dato.find_unet(shared.sd_model)
        shared.state.begin(job="dato_search")
        try:
            patch = None
            if schedule is not None:
                patch = dato.apply_patch(unet, schedule, clock="manual", max_downsample=self.max_downsample,
                                         seed=seed % (2**31))
            _ACTIVE["p"], _ACTIVE["unet"] = p, unet
            t0 = time.perf_counter()
            processed = processing.process_images(p)
            elapsed = time.perf_counter() - t0
            if shared.state.interrupted or shared.state.skipped:
                raise SearchCancelled("interrupted from the WebUI")
            if patch is not None and patch.stats["calls"] == 0:
                raise RuntimeError("the step clock never reached the patch (on_cfg_denoiser did not run), so the "
                                   "evaluation was not accelerated; is another extension replacing the sampler?")
        finally:
            _ACTIVE["p"], _ACTIVE["unet"] = None, None
            dato.remove_patch(unet)
            close = getattr(p, "close", None)
            if callable(close):
                close()
            shared.state.end()
        return (*_to_tensors(processed.images[0]), elapsed)


def _to_tensors(image: Any):
    """(array to compare, image in [0, 1] or None): a PIL image gives both; a tensor (no VAE) is the array."""
    import torch

    if isinstance(image, torch.Tensor):
        return image.detach().float().cpu(), None
    import numpy as np

    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr, arr


def _stack(tensors: list):
    import torch

    return torch.stack(tensors)


def on_cfg_denoiser(params: Any) -> None:
    """The search's step clock: the WebUI's denoiser knows the step of the evaluation in flight."""
    p, unet = _ACTIVE["p"], _ACTIVE["unet"]
    denoiser = getattr(params, "denoiser", None)
    if p is None or unet is None or getattr(denoiser, "p", None) is not p:
        return
    step = int(getattr(denoiser, "step", 0) or 0)
    total = int(getattr(denoiser, "total_steps", 0) or 0) or max(step + 1, 1)
    dato.set_step(unet, step, total)


# ------------------------------------------------------------------ requests
def imagenet_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` ImageNet class names (open_clip ships them with every WebUI) as prompts, spread over the list."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as exc:
        raise SearchRequestError("the ImageNet prompt set needs open_clip (installed with the WebUI); "
                                 "give prompts instead") from exc
    names = list(IMAGENET_CLASSNAMES)
    count = max(1, min(count, len(names)))
    offset = seed % len(names)
    return [IMAGENET_TEMPLATE.format(names[(offset + i * len(names) // count) % len(names)]) for i in range(count)]


def parse_request(body: Any) -> tuple[SearchSettings, dict[str, Any]]:
    """A start request -> (settings, WebUI sampling fields). Unknown fields are refused with their names."""
    if not isinstance(body, dict):
        raise SearchRequestError("expected a JSON object with search settings")
    body = dict(body)
    webui = {k: body.pop(k, v) for k, v in WEBUI_FIELDS.items()}
    prompt_set = body.pop("prompt_set", None)
    if prompt_set is not None:
        if prompt_set not in PROMPT_SETS:
            raise SearchRequestError(f"prompt_set = {prompt_set!r}, expected one of {', '.join(PROMPT_SETS)}")
        if "prompts" in body:
            raise SearchRequestError("give either prompts or prompt_set, not both")
        body["prompts"] = imagenet_prompts(int(body.get("samples", 2)), int(body.get("seed", 0)))
    for key in ("results_dir", "preset_dirs"):
        if key in body:
            raise SearchRequestError(f"{key} cannot be set through the WebUI (results go beside the schedules)")
    try:
        width, height = int(webui["width"]), int(webui["height"])
        cfg = float(webui["cfg_scale"])
    except (TypeError, ValueError) as exc:
        raise SearchRequestError(f"width/height/cfg_scale must be numbers: {exc}") from None
    if width % 8 or height % 8 or not 64 <= width <= 2048 or not 64 <= height <= 2048:
        raise SearchRequestError(f"size {width}x{height}: width and height must be multiples of 8 in 64..2048")
    if not math.isfinite(cfg) or not 1.0 <= cfg <= 30.0:
        raise SearchRequestError(f"cfg_scale = {cfg!r}: expected 1..30")
    if not isinstance(webui["sampler_name"], str) or not webui["sampler_name"]:
        raise SearchRequestError(f"sampler_name = {webui['sampler_name']!r}: expected a sampler name")
    if not isinstance(webui["negative_prompt"], str):
        raise SearchRequestError("negative_prompt must be a string")
    webui.update(width=width, height=height, cfg_scale=cfg)
    body.setdefault("steps", 20)
    body["results_dir"] = str(store.search_dir())
    body["extra"] = {"webui": webui}
    try:
        settings = SearchSettings.from_dict(body)
    except (SettingsError, ScheduleError, TypeError, ValueError) as exc:
        raise SearchRequestError(str(exc)) from None
    return settings, webui


def start(body: Any) -> SearchJob:
    """Validate and start a search (or resume the run id's checkpoint). One search runs at a time."""
    settings, webui = parse_request(body)
    _check_host(webui)
    with _JOBS_LOCK:
        running = [j for j in JOBS.values() if j.running]
        if running:
            raise SearchRequestError(f"search {running[0].run_id!r} is still running; cancel it first", 409)
        backend = WebUIBackend(settings.steps, webui["sampler_name"], webui["width"], webui["height"],
                               webui["cfg_scale"], webui["negative_prompt"])
        job = SearchJob(settings, backend, log=lambda m: print(f"[{TAG}] search: {m}"))
        JOBS[job.run_id] = job
        job.start()
    return job


def _check_host(webui: dict[str, Any]) -> None:
    from modules import shared

    try:
        dato.find_unet(shared.sd_model)
    except (dato.UnsupportedModelError, AttributeError) as exc:
        raise SearchRequestError(f"the loaded model cannot be searched: {exc}") from None
    tome = float(getattr(shared.opts, "token_merging_ratio", 0) or 0)
    if tome > 0:
        raise SearchRequestError(f"the WebUI's Token merging ratio is {tome:g}: it would change every evaluation. "
                                 "Set Settings > Optimizations > Token merging ratio to 0 for the search.", 409)
    try:
        from modules import sd_samplers

        names = sd_samplers.visible_sampler_names() if hasattr(sd_samplers, "visible_sampler_names") else None
    except ImportError:
        names = None
    if names and webui["sampler_name"] not in names:
        raise SearchRequestError(f"sampler {webui['sampler_name']!r} is not available; known: {', '.join(names)}")


def status(run_id: str) -> dict[str, Any]:
    """Live status of a job of this process, else what its results file says (after a restart)."""
    job = JOBS.get(run_id)
    if job is not None:
        data = job.status()
        data["source"] = "job"
        return data
    path = store.search_dir() / run_id / "results.json"
    if not _safe_run_id(run_id) or not path.is_file():
        raise SearchRequestError(f"no search named {run_id!r}", 404)
    results = load_results(path)
    return {"run_id": run_id, "state": results["status"], "running": False, "source": "results",
            "front": results["front_points"], "evaluations": len(results["evaluations"]),
            "results_path": str(path), "message": "not running in this WebUI session"
            + ("; start it again with the same settings and run id to resume" if results["status"] != "done" else "")}


def results_of(run_id: str) -> dict[str, Any]:
    """The results file of ``run_id`` as written so far (the search rewrites it after every generation)."""
    path = store.search_dir() / run_id / "results.json"
    if not _safe_run_id(run_id) or not path.is_file():
        raise SearchRequestError(f"no results for a search named {run_id!r}" + (" yet" if run_id in JOBS else ""),
                                 404)
    return load_results(path)


def list_runs() -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    folder = store.search_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*/results.json")):
            try:
                results = load_results(path)
            except (ValueError, OSError, json.JSONDecodeError):
                continue
            runs[results["run_id"]] = {"run_id": results["run_id"], "state": results["status"],
                                       "evaluations": len(results["evaluations"]), "date": results.get("date")}
    for run_id, job in JOBS.items():
        runs[run_id] = {"run_id": run_id, "state": job.progress.state, "evaluations": job.progress.evaluations,
                        "running": job.running}
    return list(runs.values())


def cancel(run_id: str) -> dict[str, Any]:
    job = JOBS.get(run_id)
    if job is None:
        raise SearchRequestError(f"no search named {run_id!r} in this WebUI session", 404)
    if not job.running:
        raise SearchRequestError(f"search {run_id!r} is not running (state {job.progress.state})", 409)
    job.cancel()
    return {"run_id": run_id, "state": job.progress.state}


def save_point(run_id: str, eval_id: Any, name: Any) -> dict[str, Any]:
    """Save evaluation ``eval_id`` of ``run_id`` as a schedule: it appears in the accordion's dropdown."""
    if not _safe_run_id(run_id):
        raise SearchRequestError(f"no search named {run_id!r}", 404)
    path = store.search_dir() / run_id / "results.json"
    if not path.is_file():
        raise SearchRequestError(f"no results for search {run_id!r} yet", 404)
    if isinstance(eval_id, bool) or not isinstance(eval_id, int):
        raise SearchRequestError(f"id = {eval_id!r}: expected the integer id of an evaluated schedule")
    results = load_results(path)
    try:
        schedule = schedule_from_result(results, eval_id, name)
    except KeyError as exc:
        raise SearchRequestError(str(exc.args[0]), 404) from None
    except (ScheduleError, TypeError) as exc:
        raise SearchRequestError(str(exc)) from None
    try:
        entry = store.save(schedule, store.SEARCH)
    except store.StoreError as exc:
        raise SearchRequestError(str(exc), exc.status) from None
    return store.describe(entry, schedule)


def _safe_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and bool(run_id) and "/" not in run_id and "\\" not in run_id and \
        run_id not in (".", "..")


# ------------------------------------------------------------------ routes
def register(app: Any) -> None:
    """Mount the search routes on the WebUI's FastAPI ``app`` (``on_app_started``)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    ensure_step_clock()

    # no ``from __future__ import annotations`` in this module: FastAPI must see ``Request`` itself, not a string
    def error(exc: SearchRequestError):
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.post(PREFIX, tags=["sd-webui-dato"], status_code=202)
    async def start_route(request: Request):
        try:
            body = json.loads((await request.body()).decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError) as exc:
            return JSONResponse(status_code=400, content={"detail": f"body is not valid JSON: {exc}"})
        try:
            job = start(body)
        except SearchRequestError as exc:
            return error(exc)
        return JSONResponse(status_code=202, content={"run_id": job.run_id, "status": f"{PREFIX}/{job.run_id}",
                                                      "state": job.progress.state})

    @app.get(PREFIX, tags=["sd-webui-dato"])
    def list_route():
        return {"searches": list_runs()}

    @app.get(PREFIX + "/{run_id}", tags=["sd-webui-dato"])
    def status_route(run_id: str):
        try:
            return status(run_id)
        except SearchRequestError as exc:
            return error(exc)

    @app.get(PREFIX + "/{run_id}/results", tags=["sd-webui-dato"])
    def results_route(run_id: str):
        try:
            return results_of(run_id)
        except SearchRequestError as exc:
            return error(exc)

    @app.delete(PREFIX + "/{run_id}", tags=["sd-webui-dato"])
    def cancel_route(run_id: str):
        try:
            return cancel(run_id)
        except SearchRequestError as exc:
            return error(exc)

    @app.post(PREFIX + "/{run_id}/save", tags=["sd-webui-dato"], status_code=201)
    async def save_route(run_id: str, request: Request):
        try:
            body = json.loads((await request.body()).decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError) as exc:
            return JSONResponse(status_code=400, content={"detail": f"body is not valid JSON: {exc}"})
        if not isinstance(body, dict) or set(body) - {"id", "name"} or "id" not in body or "name" not in body:
            return JSONResponse(status_code=422, content={"detail": "expected {\"id\": <evaluation id>, "
                                                                    "\"name\": <new schedule name>}"})
        try:
            return JSONResponse(status_code=201, content=save_point(run_id, body["id"], body["name"]))
        except SearchRequestError as exc:
            return error(exc)


# ------------------------------------------------------------------ the tab
RUNNING_MARK = '<span class="dato-search-running" hidden></span>'  # javascript/dato.js polls while it is shown


def _front_table(run_id: str | None) -> tuple[Any, list[str], str]:
    """(scatter data, pick choices, status markdown) for the newest state of ``run_id``."""
    import pandas as pd

    # Gradio 3.41 serialises an empty frame with NaN, which the browser's JSON.parse rejects and every tab
    # stops sending events: an empty plot is sent as None, and non-finite points are left out.
    empty = None
    if not run_id:
        return empty, [], "No search yet. Set it up on the left and press **Start search**."
    try:
        st = status(run_id)
    except SearchRequestError as exc:
        return empty, [], str(exc)
    path = Path(st.get("results_path") or store.search_dir() / run_id / "results.json")
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


def _latest_run() -> str | None:
    """The run to show when the tab opens: the newest job of this process, else the newest results file."""
    if JOBS:
        return list(JOBS)[-1]
    folder = store.search_dir()
    found = sorted(folder.glob("*/results.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1].parent.name if found else None


def _keep_pick(choices: list[str], current: str | None) -> str | None:
    """The pick after a refresh: the same evaluation if it is still on the front, else the first point."""
    wanted = _pick_id(current)
    for choice in choices:
        if wanted is not None and _pick_id(choice) == wanted:
            return choice
    return choices[0] if choices else None


def pick_preview(run_id: str | None, choice: str | None) -> str:
    """HTML for a picked front point: its steps and ratios, and the same cells the accordion's preview draws."""
    import html

    schedule = _picked(run_id, choice)
    if schedule is None:
        return ""
    from dato.options import pass_summary

    data = {"passes": [{**pass_summary(schedule, schedule.steps), "label": f"front point #{_pick_id(choice)}",
                        "name": schedule.name}], "context": ""}
    ratios = " ".join(str(round(r * 10)) for r in schedule.ratio)
    text = (f"<code>{html.escape(schedule.preview())}</code> — F full, R reuse, digit = cache depth; "
            f"{html.escape(schedule.method)} ratios <code>{ratios}</code> (tenths)")
    payload = html.escape(json.dumps(data, separators=(",", ":")), quote=True)
    return (f'<div class="dato-search-pick">{text}<div class="dato-preview" data-dato="{payload}">'
            f'<div class="dato-preview-text"></div></div></div>')


def _run_backend(run_id: str) -> tuple[Any, list]:
    """(backend, first (prompt, seed) pair) of a run: its live job's, or rebuilt from its results file."""
    job = JOBS.get(run_id)
    if job is not None and job.search.backend is not None:
        return job.search.backend, [tuple(p) for p in job.search.settings.pairs()[:1]]
    results = load_results(store.search_dir() / run_id / "results.json")
    webui = {**WEBUI_FIELDS, **dict(results["settings"].get("extra", {}).get("webui", {}))}
    backend = WebUIBackend(int(results["settings"]["steps"]), webui["sampler_name"], int(webui["width"]),
                           int(webui["height"]), float(webui["cfg_scale"]), str(webui["negative_prompt"]))
    return backend, [tuple(p) for p in results["pairs"][:1]]


def _baseline_images(run_id: str, backend: Any, pairs: list):
    """The unaccelerated sample of ``pairs[0]``: the search's reference when it has images, else made now."""
    job = JOBS.get(run_id)
    reference = getattr(job.search, "reference", None) if job is not None else None
    images = getattr(reference, "images", None)
    if images is None:
        data = load_reference(store.search_dir() / run_id / REFERENCE_FILE)
        if data is not None and data["pairs"][:1] == [list(pairs[0])]:
            images = data["images"]
    if images is not None:
        return images[:1]
    return backend.generate(None, pairs).images


def show_samples(run_id: str | None, choice: str | None) -> list:
    """Gallery items: the picked schedule's sample of the run's first (prompt, seed), then the baseline's."""
    schedule = _picked(run_id, choice)
    if schedule is None:
        return []
    backend, pairs = _run_backend(run_id)
    picked = backend.generate(schedule, pairs).images
    return _gallery([picked, _baseline_images(run_id, backend, pairs)])


def save_from_tab(run_id: str | None, choice: str | None, name: str | None) -> list:
    """The tab's "Save as schedule": [message, then one update per accordion schedule dropdown on the page]."""
    import gradio as gr

    from . import ui

    dropdowns = len(ui.schedule_dropdowns())
    unchanged = [gr.update() for _ in range(dropdowns)]
    if _picked(run_id, choice) is None:
        return ["Pick a front point first.", *unchanged]
    try:
        info = save_point(run_id, _pick_id(choice), (name or "").strip())
    except SearchRequestError as exc:
        return [f"**Not saved:** {exc}", *unchanged]
    where = " in the txt2img and img2img accordions' *Cache schedule* lists" if dropdowns else ""
    return [f"Saved **{info['name']}**; it is now{where or ' installed'}.", *ui.refreshed_choices(dropdowns)]


def on_ui_tabs():
    """``script_callbacks.on_ui_tabs``: the "DaTo Search" tab."""
    import gradio as gr

    from . import ui

    ensure_step_clock()
    try:
        from modules import sd_samplers

        samplers = list(sd_samplers.visible_sampler_names())
    except Exception:  # noqa: BLE001 - stand-ins and old versions
        samplers = ["Euler"]
    state = {"run_id": None}

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column(scale=5):
                source = gr.Radio(["Prompts below", "Prompt file", "ImageNet class names"], value="Prompts below",
                                  label="Prompt source", elem_id="dato_search_prompt_source")
                prompts = gr.Textbox(lines=4, label="Prompts (one per line)", elem_id="dato_search_prompts",
                                     value="a photo of a red fox in the snow\na watercolor painting of a lighthouse")
                prompt_file = gr.File(label="Prompt file (.txt, one per line)", file_types=[".txt"],
                                      elem_id="dato_search_prompt_file")
                negative = gr.Textbox(label="Negative prompt", elem_id="dato_search_negative")
                with gr.Row():
                    sampler = gr.Dropdown(samplers, value="Euler" if "Euler" in samplers else samplers[0],
                                          label="Sampler", elem_id="dato_search_sampler")
                    steps = gr.Slider(4, 100, value=20, step=1, label="Steps", elem_id="dato_search_steps")
                    cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id="dato_search_cfg")
                with gr.Row():
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="dato_search_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="dato_search_height")
                with gr.Row():
                    samples = gr.Number(value=2, precision=0, label="Images per evaluation",
                                        elem_id="dato_search_samples")
                    population = gr.Number(value=8, precision=0, label="Population", elem_id="dato_search_pop")
                    generations = gr.Number(value=5, precision=0, label="Generations", elem_id="dato_search_gens")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="dato_search_seed")
                with gr.Row():
                    mode = gr.Radio(["joint", "two-stage", "cache"], value="joint", label="Search",
                                    info="two-stage: cache depths first, then token ratios (DaTo)",
                                    elem_id="dato_search_mode")
                    method = gr.Dropdown(["prune", "merge", "downsample", "none"], value="prune",
                                         label="Token method", elem_id="dato_search_method")
                    max_depth = gr.Slider(0, 11, value=2, step=1, label="Deepest cache branch",
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
                    start_btn = gr.Button("Start search", variant="primary", elem_id="dato_search_start")
                    cancel_btn = gr.Button("Cancel", elem_id="dato_search_cancel")
                    refresh_btn = gr.Button("Refresh", elem_id="dato_search_refresh")
            with gr.Column(scale=6):
                status_md = gr.Markdown(elem_id="dato_search_status")
                plot = gr.ScatterPlot(x="cost", y="quality", color="kind", tooltip=["label", "cost", "quality"],
                                      title="Pareto front (cost relative to the unaccelerated run)",
                                      x_title="cost", y_title="quality", width=520, height=360,
                                      elem_id="dato_search_plot")
                # Gradio 3.41's ScatterPlot has no select event: the front point is picked here
                pick = gr.Dropdown([], label="Front point", elem_id="dato_search_pick")
                preview = gr.HTML(elem_id="dato_search_preview")
                show_btn = gr.Button("Show samples (picked vs baseline)", elem_id="dato_search_show")
                gallery = gr.Gallery(label="Picked schedule | baseline", columns=2, height=300,
                                     elem_id="dato_search_gallery")
                with gr.Row():
                    save_name = gr.Textbox(label="Save as schedule named", elem_id="dato_search_save_name")
                    save_btn = gr.Button("Save as schedule", elem_id="dato_search_save")
                save_md = gr.Markdown(elem_id="dato_search_save_msg")

        inputs = [source, prompts, prompt_file, negative, sampler, steps, cfg, width, height, samples, population,
                  generations, seed, mode, method, max_depth, reuse, quality, cost, min_quality, run_id]

        def refresh(current=None):
            if state["run_id"] is None:  # after "Reload UI" or a restart: the running job or the last results
                state["run_id"] = _latest_run()
            data, choices, md = _front_table(state["run_id"])
            # the plot's postprocess draws with the component's own limits (an update cannot carry them)
            plot.x_lim, plot.y_lim = _plot_limits(data)
            return data, gr.update(choices=choices, value=_keep_pick(choices, current)), md

        def do_start(*values):
            try:
                body = tab_request(*values)
                job = start(body)
            except (SearchRequestError, OSError) as exc:
                return gr.update(), gr.update(), f"**Not started:** {exc}"
            state["run_id"] = job.run_id
            return refresh()

        def do_cancel(current):
            if state["run_id"]:
                try:
                    cancel(state["run_id"])
                except SearchRequestError as exc:
                    return gr.update(), gr.update(), str(exc)
            return refresh(current)

        # the accordions' schedule dropdowns (built before on_ui_tabs runs): a saved schedule shows up at once
        dropdowns = ui.schedule_dropdowns()
        start_btn.click(do_start, inputs=inputs, outputs=[plot, pick, status_md])
        cancel_btn.click(do_cancel, inputs=[pick], outputs=[plot, pick, status_md])
        refresh_btn.click(refresh, inputs=[pick], outputs=[plot, pick, status_md], show_progress=False)
        pick.change(lambda c: pick_preview(state["run_id"], c), inputs=[pick], outputs=[preview],
                    show_progress=False)
        show_btn.click(lambda c: show_samples(state["run_id"], c), inputs=[pick], outputs=[gallery])
        save_btn.click(lambda c, n: save_from_tab(state["run_id"], c, n), inputs=[pick, save_name],
                       outputs=[save_md, *dropdowns])
        tab.load(refresh, outputs=[plot, pick, status_md])
        from . import generators  # SmoothCache calibration and DiP-GO gates: two accordions below the search

        generators.build_sections(tab)
    return [(tab, "DaTo Search", "dato_search")]


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
            raise SearchRequestError("choose a prompt file")
        path = getattr(prompt_file, "name", prompt_file)
        body["prompts"] = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        body["prompts"] = [ln.strip() for ln in (prompts or "").splitlines() if ln.strip()]
    if str(min_quality or "").strip():
        try:
            body["min_quality"] = float(min_quality)
        except ValueError:
            raise SearchRequestError(f"minimum quality {min_quality!r} is not a number") from None
    if str(run_id or "").strip():
        body["run_id"] = str(run_id).strip()
    return body


def _pick_id(choice: str | None) -> int | None:
    if not choice or not choice.startswith("#"):
        return None
    try:
        return int(choice[1:].split()[0])
    except ValueError:
        return None


def _picked(run_id: str | None, choice: str | None) -> Schedule | None:
    eval_id = _pick_id(choice)
    if not run_id or eval_id is None:
        return None
    path = store.search_dir() / run_id / "results.json"
    if not path.is_file():
        return None
    try:
        return schedule_from_result(load_results(path), eval_id, f"pick-{eval_id}")
    except (KeyError, ScheduleError, ValueError):
        return None


def _gallery(images: list) -> list:
    """Gallery items from sample tensors (B, 3, H, W) in [0, 1]."""
    from dato.search.objectives import to_pil

    out = []
    for batch in images:
        if batch is not None:
            out.extend(to_pil(batch))
    return out


def ensure_step_clock() -> None:
    """This module's step clock, registered once (see :func:`runtime.register_cfg_denoiser_once`)."""
    from .runtime import register_cfg_denoiser_once

    register_cfg_denoiser_once(on_cfg_denoiser, STEP_CLOCK)

ensure_step_clock()

__all__ = ["JOBS", "WebUIBackend", "cancel", "list_runs", "on_ui_tabs", "parse_request", "pick_preview", "register",
           "results_of", "save_from_tab", "save_point", "show_samples", "start", "status"]
