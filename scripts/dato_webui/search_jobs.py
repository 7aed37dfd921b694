"""Searches of this WebUI session: start requests, the job registry, status, results and saving a front point.

The search itself is :mod:`dato.generators.search` (WebUI-free); its images
come from :class:`~dato_webui.backend.WebUIBackend`. ``JOBS`` keeps every job
of this WebUI process by run id, so a browser refresh finds a running search
again; after a restart, starting the same settings with the same run id
resumes from the last generation's checkpoint, and status and results come
from ``schedules/searches/<run id>/results.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dato.core.schedule import ScheduleError, short_repr
from dato.generators.search import SearchJob, SearchSettings, SettingsError, load_results, schedule_from_result
from dato.generators.search.results import REFERENCE_FILE, load_reference

from . import backend, store
from .jobs import JobRegistry
from .requests import RequestError, save_schedule

TAG = "sd-webui-dato"
JOBS = JobRegistry("search", id_of=lambda job: job.run_id, state_of=lambda job: job.progress.state)
WEBUI_FIELDS = {"sampler_name": "Euler", "width": 512, "height": 512, "cfg_scale": 7.0, "negative_prompt": ""}
PROMPT_SETS = ("imagenet",)
IMAGENET_TEMPLATE = "a photo of a {}"


# ------------------------------------------------------------------ requests
def imagenet_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` ImageNet class names (open_clip ships them with every WebUI) as prompts, spread over the list."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as exc:
        raise RequestError("the ImageNet prompt set needs open_clip (installed with the WebUI); "
                           "give prompts instead") from exc
    names = list(IMAGENET_CLASSNAMES)
    count = max(1, min(count, len(names)))
    offset = seed % len(names)
    return [IMAGENET_TEMPLATE.format(names[(offset + i * len(names) // count) % len(names)]) for i in range(count)]


def parse_request(body: Any) -> tuple[SearchSettings, dict[str, Any]]:
    """A start request -> (settings, WebUI sampling fields). Unknown fields are refused with their names.

    More lenient than :func:`dato_webui.requests.parse_sampling` (numbers may come as strings), as it always was.
    """
    if not isinstance(body, dict):
        raise RequestError("expected a JSON object with search settings")
    body = dict(body)
    webui = {k: body.pop(k, v) for k, v in WEBUI_FIELDS.items()}
    prompt_set = body.pop("prompt_set", None)
    if prompt_set is not None:
        if prompt_set not in PROMPT_SETS:
            raise RequestError(f"prompt_set = {short_repr(prompt_set)}, expected one of {', '.join(PROMPT_SETS)}")
        if "prompts" in body:
            raise RequestError("give either prompts or prompt_set, not both")
        body["prompts"] = imagenet_prompts(int(body.get("samples", 2)), int(body.get("seed", 0)))
    for key in ("results_dir", "preset_dirs"):
        if key in body:
            raise RequestError(f"{key} cannot be set through the WebUI (results go beside the schedules)")
    try:
        width, height = int(webui["width"]), int(webui["height"])
        cfg = float(webui["cfg_scale"])
    except (TypeError, ValueError) as exc:
        raise RequestError(f"width/height/cfg_scale must be numbers: {exc}") from None
    if width % 8 or height % 8 or not 64 <= width <= 2048 or not 64 <= height <= 2048:
        raise RequestError(f"size {width}x{height}: width and height must be multiples of 8 in 64..2048")
    if not math.isfinite(cfg) or not 1.0 <= cfg <= 30.0:
        raise RequestError(f"cfg_scale = {short_repr(cfg)}: expected 1..30")
    if not isinstance(webui["sampler_name"], str) or not webui["sampler_name"]:
        raise RequestError(f"sampler_name = {short_repr(webui['sampler_name'])}: expected a sampler name")
    if not isinstance(webui["negative_prompt"], str):
        raise RequestError("negative_prompt must be a string")
    webui.update(width=width, height=height, cfg_scale=cfg)
    body.setdefault("steps", 20)
    body["results_dir"] = str(store.search_dir())
    body["extra"] = {"webui": webui}
    try:
        settings = SearchSettings.from_dict(body)
    except (SettingsError, ScheduleError, TypeError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    return settings, webui


def _webui_backend(steps: int, webui: dict[str, Any]) -> backend.WebUIBackend:
    return backend.WebUIBackend(steps, webui["sampler_name"], int(webui["width"]), int(webui["height"]),
                                float(webui["cfg_scale"]), str(webui["negative_prompt"]))


# ------------------------------------------------------------------ jobs
def start(body: Any) -> SearchJob:
    """Validate and start a search (or resume the run id's checkpoint). One search runs at a time."""
    settings, webui = parse_request(body)
    backend.usable_model("the search", status=422)
    backend.check_token_merging("the search")
    backend.check_sampler(webui["sampler_name"])
    return JOBS.start(lambda: SearchJob(settings, _webui_backend(settings.steps, webui),
                                        log=lambda m: print(f"[{TAG}] search: {m}")))


def results_path(run_id: str) -> Path:
    return store.search_dir() / run_id / "results.json"


def _safe_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and bool(run_id) and "/" not in run_id and "\\" not in run_id and \
        run_id not in (".", "..")


def status(run_id: str) -> dict[str, Any]:
    """Live status of a job of this process, else what its results file says (after a restart)."""
    job = JOBS.get(run_id)
    if job is not None:
        data = job.status()
        data["source"] = "job"
        return data
    path = results_path(run_id)
    if not _safe_run_id(run_id) or not path.is_file():
        raise RequestError(f"no search named {short_repr(run_id)}", 404)
    results = read_results(path)
    try:
        return {"run_id": run_id, "state": file_state(results["status"]), "running": False, "source": "results",
                "front": list(results["front_points"]), "evaluations": len(results["evaluations"]),
                "results_path": str(path), "message": "not running in this WebUI session"
                + ("; start it again with the same settings and run id to resume"
                   if results["status"] != "done" else "")}
    except BAD_FILE as exc:
        raise _invalid(path, exc) from None


def file_state(state: Any) -> str:
    """The state a results file records; a run whose file says it runs but that no job of this WebUI session
    runs (the WebUI was restarted, or the process died) is ``interrupted``. Live jobs override this."""
    state = str(state)
    return "interrupted" if state in ("running", "starting", "preparing") else state


BAD_FILE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


def _invalid(path: Path, exc: BaseException) -> RequestError:
    """A results file that cannot be read or lacks what a route needs: 422 naming the file (never a 500)."""
    what = str(exc) if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__} {exc}"
    return RequestError(f"search results file {path.parent.name}/{path.name} is invalid: {short_repr(what, 200)}")


def read_results(path: Path) -> dict[str, Any]:
    """:func:`load_results`, a broken file answered as :func:`_invalid`."""
    try:
        return load_results(path)
    except BAD_FILE as exc:
        raise _invalid(path, exc) from None


def results_of(run_id: str) -> dict[str, Any]:
    """The results file of ``run_id`` as written so far (the search rewrites it after every generation)."""
    path = results_path(run_id)
    if not _safe_run_id(run_id) or not path.is_file():
        raise RequestError(f"no results for a search named {short_repr(run_id)}"
                           + (" yet" if run_id in JOBS else ""), 404)
    return read_results(path)


def list_runs(invalid: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every run of this session and every results file; a broken file is skipped (and named in ``invalid``)."""
    runs: dict[str, dict[str, Any]] = {}
    folder = store.search_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*/results.json")):
            try:
                results = load_results(path)
                run_id = results["run_id"]
                runs[str(run_id)] = {"run_id": str(run_id), "state": file_state(results["status"]),
                                     "evaluations": len(results["evaluations"]), "date": results.get("date")}
            except BAD_FILE as exc:
                if invalid is not None:
                    invalid.append({"run_id": path.parent.name, "error": str(_invalid(path, exc))})
    for run_id, job in JOBS.items():
        runs[run_id] = {"run_id": run_id, "state": job.progress.state, "evaluations": job.progress.evaluations,
                        "running": job.running}
    return list(runs.values())


def latest_run() -> str | None:
    """The run to show when the tab opens: the newest job of this process, else the newest results file."""
    if JOBS:
        return list(JOBS)[-1]
    folder = store.search_dir()
    found = sorted(folder.glob("*/results.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1].parent.name if found else None


def cancel(run_id: str) -> dict[str, Any]:
    job = JOBS.cancel(run_id)
    return {"run_id": run_id, "state": job.progress.state}


def save_point(run_id: str, eval_id: Any, name: Any) -> dict[str, Any]:
    """Save evaluation ``eval_id`` of ``run_id`` as a schedule: it appears in the accordion's dropdown."""
    if not _safe_run_id(run_id):
        raise RequestError(f"no search named {short_repr(run_id)}", 404)
    path = results_path(run_id)
    if not path.is_file():
        raise RequestError(f"no results for search {short_repr(run_id)} yet", 404)
    if isinstance(eval_id, bool) or not isinstance(eval_id, int):
        raise RequestError(f"id = {short_repr(eval_id)}: expected the integer id of an evaluated schedule")
    results = read_results(path)
    try:
        schedule = schedule_from_result(results, eval_id, name)
    except KeyError as exc:
        raise RequestError(short_repr(str(exc.args[0]), 200), 404) from None
    except ScheduleError as exc:
        raise RequestError(str(exc)) from None
    except BAD_FILE as exc:
        raise _invalid(path, exc) from None
    return save_schedule(schedule, store.SEARCH)


# ------------------------------------------------------------------ samples of a run
def run_backend(run_id: str) -> tuple[Any, list]:
    """(backend, first (prompt, seed) pair) of a run: its live job's, or rebuilt from its results file."""
    job = JOBS.get(run_id)
    if job is not None and job.search.backend is not None:
        return job.search.backend, [tuple(p) for p in job.search.settings.pairs()[:1]]
    results = load_results(results_path(run_id))
    webui = {**WEBUI_FIELDS, **dict(results["settings"].get("extra", {}).get("webui", {}))}
    return _webui_backend(int(results["settings"]["steps"]), webui), [tuple(p) for p in results["pairs"][:1]]


def baseline_images(run_id: str, images_from: Any, pairs: list):
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
    return images_from.generate(None, pairs).images
