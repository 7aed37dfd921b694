"""Two schedule generators beside the search: SmoothCache-style calibration and DiP-GO-style gradient gates.

The engine does the work (:mod:`dato.calibrate`, :mod:`dato.gates`); this
module supplies the WebUI's model, lock and step clock, and three surfaces:

* **Calibration** runs one unaccelerated generation per prompt through the
  WebUI's own processing (the user's sampler, size and CFG), one prompt at a
  time inside ``modules.call_queue.queue_lock``, with a
  :class:`~dato.calibrate.CalibrationRecorder` whose hooks are on the UNet
  only while our generation runs and whose step is set from
  ``on_cfg_denoiser`` (the WebUI's denoiser knows the step; counting UNet
  calls does not). The recorder is made at the first step, with the
  denoiser's ``total_steps`` as its step count: that is the count the
  accordion's patch resamples a schedule to (second-order samplers report
  their model calls). The calibration is kept per model in memory and as
  ``schedules/calibrations/<id>.json`` (beside ``searches/``), so a threshold
  can be tried again after a browser refresh or a restart.
* **Gates** train in a background thread with :class:`~dato.gates.GateJob` on a
  :class:`~dato.search.standalone.StandaloneBackend` around the live UNet (the
  WebUI's samplers run under ``no_grad``; gate training backpropagates through
  dato's own sampler). The thread holds ``queue_lock`` from the first UNet use
  of an iteration to its end (forward, backward and optimiser step): user
  generations run between iterations, never while the gates' hooks are on.
  Results go to ``schedules/gates/<id>.json`` (:meth:`GateResult.load` reads it).
* Routes (``register(app)``), all under ``/dato/v1``: ``POST /calibrate``,
  ``GET /calibrate/{id}``, ``POST /calibrate/{id}/schedule``; ``POST /gates``,
  ``GET /gates``, ``GET /gates/{id}``, ``DELETE /gates/{id}``,
  ``POST /gates/{id}/schedule``. Bad input answers 422 naming the field.
* Two accordions in the Search tab (:func:`build_sections`).

No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a string.
"""

import contextlib
import dataclasses
import html
import json
import math
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dato
from dato.calibrate import Calibration, CalibrationRecorder, alpha_range, schedule_from_calibration
from dato.fileio import atomic_write_bytes
from dato.gates import GateConfig, GateJob, GateResult
from dato.macs import trace_unet_cost
from dato.schedule import Schedule, ScheduleError

from . import store

PREFIX = "/dato/v1"
TAG = "sd-webui-dato"
STEP_CLOCK = "dato_generators_step_clock"
MAX_PROMPTS = 64
MAX_LOOKAHEAD = 10
TURN_GAP = 0.05  # seconds the gate thread waits after an iteration before taking queue_lock again
#: WebUI sampler name -> dato's own sampler (gate training cannot use the WebUI's samplers: they run no_grad)
GATE_SAMPLERS = {"Euler": "euler", "Euler a": "euler_a", "Heun": "heun", "DDIM": "ddim"}
GATE_LIMITS: dict[str, tuple[float, float]] = {"target_speedup": (1.0, 50.0), "iterations": (1, 100_000),
                                               "batch_size": (1, 64), "pool": (1, 4096)}
SAMPLING_DEFAULTS: dict[str, Any] = {"negative_prompt": "", "steps": 20, "sampler_name": "Euler", "width": 512,
                                     "height": 512, "cfg_scale": 7.0, "seed": 0}
CALIBRATIONS: dict[str, Calibration] = {}  # id -> calibration (this session's, and those read from files)
LATEST: dict[str, str] = {}  # model key -> id of its newest calibration in this session
GATE_JOBS: dict[str, "WebUIGateJob"] = {}
_JOBS_LOCK = threading.Lock()
_ACTIVE: dict[str, Any] = {"run": None}  # the calibration generation in flight (for the step clock)
_COSTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_MISSING = object()


class GeneratorRequestError(ValueError):
    """A request that cannot be served; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ requests
@dataclasses.dataclass(frozen=True)
class Sampling:
    """What both generators sample with: the txt2img fields of the Search tab."""

    prompts: tuple[str, ...]
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "Euler"
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["prompts"] = list(self.prompts)
        return data


def _expected(kind: type, lo: Any, hi: Any) -> str:
    what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    if lo is not None and hi is not None:
        return f"{what} {lo}..{hi}"
    return what + (f" >= {lo}" if lo is not None else "")


def check_field(name: str, value: Any, kind: type, lo: Any = None, hi: Any = None) -> Any:
    """``value`` as ``kind`` within ``lo..hi``, else a 422 naming ``name`` (JSON booleans are not numbers)."""
    bad = GeneratorRequestError(f"{name} = {value!r}: expected {_expected(kind, lo, hi)}")
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise bad
        value = int(value)
    else:
        value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad
    return value


def _take(body: dict, name: str, kind: type, lo: Any = None, hi: Any = None, default: Any = _MISSING) -> Any:
    value = body.pop(name, default)
    if value is _MISSING:
        raise GeneratorRequestError(f"{name} is required")
    if value is None and default is None:
        return None
    return check_field(name, value, kind, lo, hi)


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise GeneratorRequestError(f"expected a JSON object, got {type(body).__name__}")
    return dict(body)


def _no_unknown(body: dict, known: list[str]) -> None:
    if body:
        raise GeneratorRequestError(f"unknown field(s) {', '.join(sorted(map(str, body)))}; "
                                    f"known: {', '.join(known)}")


def _prompts(body: dict) -> tuple[str, ...]:
    value = body.pop("prompts", _MISSING)
    if value is _MISSING:
        raise GeneratorRequestError("prompts is required: a list of prompt strings")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise GeneratorRequestError(f"prompts = {value!r}: expected a list of strings")
    prompts = tuple(p.strip() for p in value if p.strip())
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise GeneratorRequestError(f"prompts: expected 1..{MAX_PROMPTS} non-empty prompts, got {len(prompts)}")
    return prompts


def parse_sampling(body: dict) -> Sampling:
    """Pop the sampling fields from ``body`` (a dict the caller owns) into a :class:`Sampling`."""
    d = SAMPLING_DEFAULTS
    sampling = Sampling(
        prompts=_prompts(body),
        negative_prompt=_take(body, "negative_prompt", str, default=d["negative_prompt"]),
        steps=_take(body, "steps", int, 2, 150, d["steps"]),
        sampler_name=_take(body, "sampler_name", str, default=d["sampler_name"]),
        width=_take(body, "width", int, 64, 2048, d["width"]),
        height=_take(body, "height", int, 64, 2048, d["height"]),
        cfg_scale=_take(body, "cfg_scale", float, 1.0, 30.0, d["cfg_scale"]),
        seed=_take(body, "seed", int, 0, 2**32 - 1, d["seed"]),
    )
    for name in ("width", "height"):
        if getattr(sampling, name) % 8:
            raise GeneratorRequestError(f"{name} = {getattr(sampling, name)}: expected a multiple of 8")
    if not sampling.sampler_name:
        raise GeneratorRequestError("sampler_name = '': expected a sampler name")
    return sampling


def parse_calibration_request(body: Any) -> tuple[Sampling, int]:
    """A calibration request -> (sampling, lookahead). Unknown fields are refused with their names."""
    body = _object(body)
    sampling = parse_sampling(body)
    lookahead = _take(body, "lookahead", int, 1, min(MAX_LOOKAHEAD, sampling.steps - 1), 3)
    _no_unknown(body, ["prompts", *SAMPLING_DEFAULTS, "lookahead"])
    return sampling, lookahead


def _config_field(body: dict, field: dataclasses.Field) -> Any:
    """One :class:`GateConfig` field from the body, typed by its default (fields may be added to the engine)."""
    value = body.pop(field.name)
    kind = type(field.default) if type(field.default) in (bool, int, float, str) else None
    if kind is None:
        return value
    lo, hi = GATE_LIMITS.get(field.name, (None, None))
    return check_field(field.name, value, kind, lo, hi)


def parse_gate_request(body: Any) -> tuple[Sampling, GateConfig]:
    """A gate-training request -> (sampling, config); config fields come from :class:`GateConfig` itself."""
    body = _object(body)
    sampling = parse_sampling(body)
    if gate_sampler(sampling.sampler_name) is None:
        raise GeneratorRequestError(f"sampler_name = {sampling.sampler_name!r}: gate training samples with dato's "
                                    f"own sampler; expected one of {', '.join(GATE_SAMPLERS)}")
    fields = [f for f in dataclasses.fields(GateConfig) if f.name != "seed"]
    values: dict[str, Any] = {"seed": sampling.seed}
    for field in fields:
        if field.name in body:
            values[field.name] = _config_field(body, field)
    defaults = GateConfig()
    if "pool" not in values:  # a bigger batch than the default pool would be refused: grow the pool with it
        values["pool"] = max(defaults.pool, values.get("batch_size", defaults.batch_size))
    _no_unknown(body, ["prompts", *SAMPLING_DEFAULTS, *(f.name for f in fields)])
    try:
        config = GateConfig(**values)
        config.validate(sampling.steps)
    except (TypeError, ValueError) as exc:
        raise GeneratorRequestError(str(exc)) from None
    return sampling, config


def gate_sampler(name: str) -> str | None:
    """dato's sampler for a WebUI sampler name (or dato's own name), None when gates cannot use it."""
    if name in GATE_SAMPLERS:
        return GATE_SAMPLERS[name]
    return name if name in GATE_SAMPLERS.values() else None


def _save_name(body: dict) -> str | None:
    name = _take(body, "name", str, default=None)
    if name is None:
        return None
    return name.strip() or None


# ------------------------------------------------------------------ the host
def model_info() -> dict[str, str]:
    """Name and hash of the loaded checkpoint (what calibrations and gate results are keyed and labelled by)."""
    from modules import shared

    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    return {"model_name": str(getattr(info, "name_for_extra", None) or getattr(info, "title", None) or ""),
            "model_hash": str(getattr(model, "sd_model_hash", None) or getattr(info, "shorthash", None) or "")}


def model_key() -> str:
    info = model_info()
    return info["model_hash"] or info["model_name"]


def _check_host(sampling: Sampling, gates: bool = False) -> Any:
    """The loaded model, if these settings can run on it now; a 409/422 saying why not otherwise."""
    from modules import shared

    model = shared.sd_model
    try:
        unet = dato.find_unet(model)
    except (dato.UnsupportedModelError, AttributeError) as exc:
        raise GeneratorRequestError(f"the loaded model cannot be used: {exc}", 409) from None
    if gates:  # dato's own sampler: the WebUI's Token Merging (applied inside process_images) stays out
        _check_gate_model(model, unet)
        return model
    tome = float(getattr(shared.opts, "token_merging_ratio", 0) or 0)
    if tome > 0:
        raise GeneratorRequestError(f"the WebUI's Token merging ratio is {tome:g}: it would change what is measured. "
                                    "Set Settings > Optimizations > Token merging ratio to 0 first.", 409)
    _check_sampler(sampling.sampler_name)
    return model


def _check_gate_model(model: Any, unet: Any) -> None:
    if not callable(getattr(model, "get_learned_conditioning", None)):
        raise GeneratorRequestError("the loaded model has no text encoder (get_learned_conditioning)", 409)
    if int(getattr(unet, "in_channels", 4)) != 4:
        raise GeneratorRequestError("gate training needs a 4-channel latent UNet (not an inpainting model)", 409)


def _check_sampler(name: str) -> None:
    try:
        from modules import sd_samplers

        names = list(sd_samplers.visible_sampler_names())
    except (ImportError, AttributeError):
        return
    if names and name not in names:
        raise GeneratorRequestError(f"sampler_name = {name!r} is not available; known: {', '.join(names)}")


def unet_cost(model: Any) -> Any:
    """The UNet's MACs table; traced once per UNet inside ``queue_lock`` (the trace runs the UNet)."""
    unet = dato.find_unet(model)
    cost = _COSTS.get(unet)
    if cost is None:
        from modules import call_queue

        with call_queue.queue_lock:
            cost = trace_unet_cost(unet)
        _COSTS[unet] = cost
    return cost


def macs_speedup(schedule: Schedule, width: int, height: int) -> float:
    """Analytic UNet MACs of all-full sampling over the schedule's (one UNet pass per step, same size)."""
    from modules import shared

    cost = unet_cost(shared.sd_model)
    h, w = height // 8, width // 8
    return cost.full_step_macs(h, w) * schedule.steps / cost.schedule_macs(schedule, h, w)


def json_safe(value: Any) -> Any:
    """Non-finite floats become null: Starlette refuses NaN, and a NaN reaching a Gradio plot freezes the page."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _new_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _safe_id(item_id: Any) -> bool:
    return isinstance(item_id, str) and bool(_ID_RE.match(item_id))


def calibrations_dir() -> Path:
    return store.search_dir().parent / "calibrations"


def gates_dir() -> Path:
    return store.search_dir().parent / "gates"


def save_schedule(schedule: Schedule) -> dict[str, Any]:
    """Install ``schedule`` in the user folder (the accordions list it); a taken name is a 409."""
    try:
        entry = store.save(schedule, store.USER)
    except store.StoreError as exc:
        raise GeneratorRequestError(str(exc), exc.status) from None
    return store.describe(entry, schedule)


def schedule_answer(schedule: Schedule, speedup: float | None, save: bool) -> dict[str, Any]:
    """What the schedule routes return: the schedule, its one-line preview, the MACs speed-up, what was saved."""
    data = {"schedule": schedule.to_dict(), "preview": schedule.preview(), "macs_speedup": speedup}
    if save:
        data["saved"] = save_schedule(schedule)
    return json_safe(data)


# ------------------------------------------------------------------ calibration
class CalibrationRun:
    """The recorder of one calibration across its prompts; hooks are on only during our own generations.

    It is made at the first step because its step count is the denoiser's ``total_steps`` (see the module
    docstring). Errors inside ``on_cfg_denoiser`` are kept, not raised: the WebUI swallows callback errors.
    """

    def __init__(self, model: Any, lookahead: int) -> None:
        self.model, self.lookahead = model, lookahead
        self.recorder: CalibrationRecorder | None = None
        self.entered = False
        self.p: Any = None
        self.error: Exception | None = None

    def on_step(self, step: int, total: int) -> None:
        try:
            if self.recorder is None:
                self.recorder = CalibrationRecorder(self.model, total, self.lookahead)
            elif total != self.recorder.steps:
                raise ValueError(f"the sampler reported {total} steps after {self.recorder.steps}")
            if not self.entered:
                self.recorder.__enter__()
                self.entered = True
            self.recorder.set_step(step)
        except Exception as exc:  # noqa: BLE001 - raised after the generation (see the class docstring)
            self.error = self.error or exc

    def pause(self) -> None:
        """Hooks off (between prompts and after the last): user generations must not be recorded."""
        if self.entered:
            self.entered = False
            self.recorder.__exit__(None, None, None)

    def result(self, **info: Any) -> Calibration:
        self.pause()
        if self.error is not None:
            raise RuntimeError(f"calibration failed: {self.error}")
        if self.recorder is None:
            raise RuntimeError("the step clock never reached the calibration (on_cfg_denoiser did not run); "
                               "is another extension replacing the sampler?")
        return self.recorder.result(**info)


def on_cfg_denoiser(params: Any) -> None:
    """The calibration's step clock: the denoiser of our own generation says which step comes next."""
    run = _ACTIVE["run"]
    denoiser = getattr(params, "denoiser", None)
    if run is None or run.p is None or getattr(denoiser, "p", None) is not run.p:
        return
    step = int(getattr(denoiser, "step", 0) or 0)
    total = int(getattr(denoiser, "total_steps", 0) or 0) or max(step + 1, 1)
    run.on_step(step, total)


def _calibration_pass(run: CalibrationRun, sampling: Sampling, prompt: str, seed: int) -> None:
    """One unaccelerated generation through the WebUI's processing (caller holds ``queue_lock``)."""
    from modules import processing, shared

    from .runtime import private_txt2img

    p = private_txt2img("calibration", prompt=prompt, negative_prompt=sampling.negative_prompt, seed=seed,
                        steps=sampling.steps, cfg_scale=sampling.cfg_scale, width=sampling.width,
                        height=sampling.height, sampler_name=sampling.sampler_name)
    shared.state.begin(job="dato_calibrate")
    run.p, _ACTIVE["run"] = p, run
    try:
        processing.process_images(p)
        if shared.state.interrupted or shared.state.skipped:
            raise GeneratorRequestError("calibration interrupted from the WebUI", 409)
    finally:
        _ACTIVE["run"], run.p = None, None
        run.pause()
        close = getattr(p, "close", None)
        if callable(close):
            close()
        shared.state.end()


def calibrate_now(body: Any) -> dict[str, Any]:
    """Validate, calibrate on the loaded model (one generation per prompt), save and remember the result."""
    from modules import call_queue

    sampling, lookahead = parse_calibration_request(body)
    model = _check_host(sampling)
    ensure_step_clock()
    run = CalibrationRun(model, lookahead)
    try:
        for i, prompt in enumerate(sampling.prompts):
            with call_queue.queue_lock:  # one generation at a time: user jobs interleave between them
                _calibration_pass(run, sampling, prompt, (sampling.seed + i) % 2**32)
    finally:
        run.pause()
    cal_id = _new_id()
    info = {**model_info(), "calibration_id": cal_id, "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **{("sampling_steps" if k == "steps" else k): v for k, v in sampling.to_dict().items()}}
    calibration = run.result(**info)
    unet_cost(model)  # traced now (under the lock), so the threshold slider never waits for it
    atomic_write_bytes(calibrations_dir() / f"{cal_id}.json", calibration.to_json().encode("utf-8"))
    CALIBRATIONS[cal_id] = calibration
    LATEST[model_key()] = cal_id
    return describe_calibration(cal_id, calibration)


def describe_calibration(cal_id: str, calibration: Calibration) -> dict[str, Any]:
    lo, hi = alpha_range(calibration)
    return json_safe({"id": cal_id, "calibration": calibration.to_dict(), "alpha_range": [lo, hi],
                      "alpha_default": default_alpha(calibration),
                      "path": str(calibrations_dir() / f"{cal_id}.json")})


def get_calibration(cal_id: Any) -> Calibration:
    """A calibration of this session, else from its file (after a restart); 404 when there is none."""
    if not _safe_id(cal_id):
        raise GeneratorRequestError(f"no calibration named {cal_id!r}", 404)
    if cal_id not in CALIBRATIONS:
        path = calibrations_dir() / f"{cal_id}.json"
        if not path.is_file():
            raise GeneratorRequestError(f"no calibration named {cal_id!r}", 404)
        try:
            CALIBRATIONS[cal_id] = Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GeneratorRequestError(f"calibration file {path.name!r} is unreadable: {exc}", 500) from None
    return CALIBRATIONS[cal_id]


def list_calibrations(current_model_only: bool = True) -> list[str]:
    """Calibration ids, newest first (ids start with the date); only the loaded model's by default."""
    folder = calibrations_dir()
    ids = set(CALIBRATIONS) | ({p.stem for p in folder.glob("*.json")} if folder.is_dir() else set())
    ids = {i for i in ids if _safe_id(i)}
    if current_model_only:
        key = model_key()
        ids = {i for i in ids if not key or _calibration_model(i) in (key, "")}
    return sorted(ids, reverse=True)


def _calibration_model(cal_id: str) -> str | None:
    try:
        info = get_calibration(cal_id).info
    except GeneratorRequestError:
        return None
    return str(info.get("model_hash") or info.get("model_name") or "")


def latest_calibration() -> str | None:
    """The loaded model's newest calibration: this session's, else the newest file."""
    remembered = LATEST.get(model_key())
    if remembered:
        return remembered
    ids = list_calibrations()
    return ids[0] if ids else None


def default_alpha(calibration: Calibration) -> float:
    """The median measured error: a middle threshold to start from."""
    values = sorted(v for rows in calibration.errors.values() for row in rows for v in row if math.isfinite(v))
    return values[len(values) // 2] if values else 0.0


def parse_calibration_schedule(body: Any, calibration: Calibration) -> tuple[float, bool, int | None, str | None]:
    """(alpha, allow_reuse, max_depth, save name) of a schedule request."""
    body = _object(body)
    alpha = _take(body, "alpha", float, 0.0)
    allow_reuse = _take(body, "allow_reuse", bool, default=True)
    max_depth = _take(body, "max_depth", int, -1, calibration.max_depth, None)
    name = _save_name(body)
    _no_unknown(body, ["alpha", "allow_reuse", "max_depth", "name"])
    return alpha, allow_reuse, max_depth, name


def calibration_schedule(cal_id: Any, body: Any) -> dict[str, Any]:
    """The schedule of one threshold (and its MACs speed-up); with ``name`` it is also installed."""
    calibration = get_calibration(cal_id)
    alpha, allow_reuse, max_depth, name = parse_calibration_schedule(body, calibration)
    try:
        schedule = schedule_from_calibration(calibration, alpha, allow_reuse=allow_reuse, max_depth=max_depth,
                                             name=name)
    except ScheduleError as exc:
        raise GeneratorRequestError(str(exc)) from None
    return schedule_answer(schedule, _calibration_speedup(calibration, schedule), save=name is not None)


def _calibration_speedup(calibration: Calibration, schedule: Schedule) -> float:
    info = calibration.info
    return macs_speedup(schedule, int(info.get("width", 512)), int(info.get("height", 512)))


# ------------------------------------------------------------------ gates
class QueueTurn:
    """``queue_lock`` held by the gate thread from the start of an iteration to its end.

    :meth:`iteration` wraps every training iteration (the engine's ``step_context``): it holds the lock before
    the gated UNet's hooks go on and releases it after the optimiser step. :meth:`hold` is also called, as a
    backstop, before each sampling of the UNet (a no-op within a turn), and :meth:`release` when the job ends
    however it ends. Taking the turn also removes a stale accordion patch (gate training needs the bare UNet)
    and notices a checkpoint change. Only the thread that first took it (the job's) takes it again.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.held = False
        self.owner: threading.Thread | None = None

    def hold(self) -> None:
        if self.held:
            return
        from modules import call_queue, shared

        from .runtime import RUNTIME

        call_queue.queue_lock.acquire()
        self.held = True
        self.owner = threading.current_thread()
        if shared.sd_model is not self.model:
            raise RuntimeError("the checkpoint changed during gate training; start it again")
        RUNTIME.remove("gate training")

    def release(self) -> None:
        if self.held:
            from modules import call_queue

            self.held = False
            call_queue.queue_lock.release()

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        """One training iteration's turn: user generations wait for it, and run between iterations.

        ``queue_lock`` is a plain ``threading.Lock``, which is not fair: released and taken again a few
        statements later by the same thread, it kept a waiting generation out for up to 66 iterations in a
        CPython 3.11 check (loop with GIL-bound work). A short pause after the release lets the woken waiter
        take it first.
        """
        self.hold()
        try:
            yield
        finally:
            was_held = self.held
            self.release()
            if was_held:
                time.sleep(TURN_GAP)


def _standalone_class() -> type:
    from dato.search.standalone import StandaloneBackend

    class LockedBackend(StandaloneBackend):
        """Every sampling of the UNet (targets and gated trajectories) takes the queue turn first."""

        turn: QueueTurn

        def sample_latents(self, *args: Any, **kwargs: Any) -> Any:
            self.turn.hold()
            return super().sample_latents(*args, **kwargs)

    return LockedBackend


def _encoder(model: Any) -> Any:
    """Prompts -> conditioning with the WebUI's text encoder, no autograd (only the gates learn)."""
    import contextlib

    import torch

    try:
        from modules import devices

        autocast = devices.autocast
    except (ImportError, AttributeError):
        autocast = contextlib.nullcontext

    def encode(prompts: list[str]) -> Any:
        with torch.no_grad(), autocast():
            return model.get_learned_conditioning(list(prompts))

    return encode


def gate_backend(sampling: Sampling, turn: QueueTurn) -> Any:
    """A StandaloneBackend around the live UNet (built in the job thread, inside the queue turn)."""
    turn.hold()
    model = turn.model
    unet = dato.find_unet(model)
    encode = _encoder(model)
    null = encode([sampling.negative_prompt])
    alphas = getattr(model, "alphas_cumprod", None)
    backend = _standalone_class()(
        unet, steps=sampling.steps, latent_shape=(4, sampling.height // 8, sampling.width // 8), encode=encode,
        null_context=lambda n: null.expand(n, -1, -1), sampler=gate_sampler(sampling.sampler_name),
        cfg_scale=sampling.cfg_scale, alphas_cumprod=None if alphas is None else alphas.detach().float().cpu(),
        info=model_info())
    backend.turn = turn
    trace_unet_cost(unet, context_len=int(null.shape[1]))  # train_gates prices levels with it: trace it here
    return backend


class WebUIGateJob(GateJob):
    """A :class:`GateJob` on the live model that takes ``queue_lock`` per iteration (see :class:`QueueTurn`)."""

    def __init__(self, gate_id: str, sampling: Sampling, config: GateConfig, model: Any) -> None:
        self.gate_id, self.sampling = gate_id, sampling
        self.turn = QueueTurn(model)
        self.model_info = model_info()
        super().__init__(self._make_backend, list(sampling.prompts), config, on_done=self._save,
                         step_context=self.turn.iteration)

    def _make_backend(self) -> Any:
        try:
            return gate_backend(self.sampling, self.turn)
        finally:
            self.turn.release()  # building it needed the model; the first iteration takes the turn again

    def _main(self) -> None:
        try:
            super()._main()
        finally:
            self.turn.release()  # after an error or a cancel too

    def _save(self, result: GateResult) -> None:
        result.info.update({**self.model_info, "gate_id": self.gate_id, "webui": self.sampling.to_dict(),
                            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        result.save(gates_dir() / f"{self.gate_id}.json")


def start_gates(body: Any) -> WebUIGateJob:
    """Validate and start gate training in the background; one job at a time."""
    sampling, config = parse_gate_request(body)
    model = _check_host(sampling, gates=True)
    with _JOBS_LOCK:
        running = [j for j in GATE_JOBS.values() if j.running]
        if running:
            raise GeneratorRequestError(f"gate training {running[0].gate_id!r} is still running; cancel it first",
                                        409)
        job = WebUIGateJob(_new_id(), sampling, config, model)
        GATE_JOBS[job.gate_id] = job
        job.start()
    print(f"[{TAG}] gate training {job.gate_id} started ({config.iterations} iterations)")
    return job


def _gate_file(gate_id: Any) -> Path | None:
    if not _safe_id(gate_id):
        return None
    path = gates_dir() / f"{gate_id}.json"
    return path if path.is_file() else None


def _load_gate_result(gate_id: str) -> GateResult:
    path = _gate_file(gate_id)
    if path is None:
        raise GeneratorRequestError(f"no gate training named {gate_id!r}", 404)
    try:
        return GateResult.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GeneratorRequestError(f"gate result file {path.name!r} is unreadable: {exc}", 500) from None


def gate_status(gate_id: Any) -> dict[str, Any]:
    """Live status of a job of this session, else what its result file says (after a restart)."""
    job = GATE_JOBS.get(gate_id) if isinstance(gate_id, str) else None
    if job is not None:
        data = job.status()
        data.update(id=gate_id, source="job", sampling=job.sampling.to_dict())
    else:
        result = _load_gate_result(gate_id)
        config = dict(result.info.get("config", {}))
        data = {"id": gate_id, "state": "done", "running": False, "iteration": len(result.history),
                "iterations": config.get("iterations", len(result.history)), "eta_seconds": None, "error": None,
                "latest": dict(result.history[-1]) if result.history else {}, "config": config, "source": "file",
                "sampling": result.info.get("webui", {})}
    path = _gate_file(gate_id)
    data["result_path"] = str(path) if path else None
    return json_safe(data)


def list_gates() -> list[dict[str, Any]]:
    """Every gate training of this session and every result file, newest first."""
    folder = gates_dir()
    ids = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
    ids = {i for i in ids | set(GATE_JOBS) if _safe_id(i)}
    out = []
    for gate_id in sorted(ids, reverse=True):
        job = GATE_JOBS.get(gate_id)
        out.append({"id": gate_id, "state": job.state if job else "done", "running": bool(job and job.running)})
    return out


def cancel_gates(gate_id: Any) -> dict[str, Any]:
    job = GATE_JOBS.get(gate_id) if isinstance(gate_id, str) else None
    if job is None:
        raise GeneratorRequestError(f"no gate training named {gate_id!r} in this WebUI session", 404)
    if not job.running:
        raise GeneratorRequestError(f"gate training {gate_id!r} is not running (state {job.state})", 409)
    job.cancel()
    return {"id": gate_id, "state": job.state, "message": "cancelling after the current iteration"}


def gate_result(gate_id: Any) -> GateResult:
    """The finished result of a job of this session, or from its file; 409 while it is not done."""
    job = GATE_JOBS.get(gate_id) if isinstance(gate_id, str) else None
    if job is not None and job.result is not None and job.state == "done":
        return job.result
    if job is not None and _gate_file(gate_id) is None:
        raise GeneratorRequestError(f"gate training {gate_id!r} has no result ({job.state})", 409)
    return _load_gate_result(gate_id)


def gates_schedule(gate_id: Any, body: Any) -> dict[str, Any]:
    """The trained gates post-processed to a MACs speed-up (default: the training target); ``name`` installs it."""
    result = gate_result(gate_id)
    body = _object(body)
    trained = float(dict(result.info.get("config", {})).get("target_speedup", 2.0))
    lo, hi = GATE_LIMITS["target_speedup"]
    target = _take(body, "target_speedup", float, lo, hi, trained)
    name = _save_name(body)
    _no_unknown(body, ["target_speedup", "name"])
    try:
        schedule = result.schedule(target, name=name)
    except ScheduleError as exc:
        raise GeneratorRequestError(str(exc)) from None
    return schedule_answer(schedule, schedule.provenance.get("macs_speedup"), save=name is not None)


# ------------------------------------------------------------------ routes
def register(app: Any) -> None:
    """Mount the generators' routes on the WebUI's FastAPI ``app`` (``on_app_started``)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    ensure_step_clock()

    async def serve(request: Request | None, fn: Any, *args: Any, status: int = 200) -> Any:
        """Run ``fn(*args[, body])`` off the event loop (calibration generates images) and answer as JSON."""
        try:
            if request is not None:
                args = (*args, await _body(request))
            return JSONResponse(status_code=status, content=json_safe(await run_in_threadpool(fn, *args)))
        except GeneratorRequestError as exc:
            return JSONResponse(status_code=exc.status, content={"detail": str(exc)})
        except RuntimeError as exc:
            return JSONResponse(status_code=500, content={"detail": str(exc)})

    @app.post(PREFIX + "/calibrate", tags=[TAG])
    async def calibrate_route(request: Request):
        return await serve(request, calibrate_now)

    @app.get(PREFIX + "/calibrate/{cal_id}", tags=[TAG])
    async def calibration_route(cal_id: str):
        return await serve(None, lambda: describe_calibration(cal_id, get_calibration(cal_id)))

    @app.post(PREFIX + "/calibrate/{cal_id}/schedule", tags=[TAG])
    async def calibration_schedule_route(cal_id: str, request: Request):
        return await serve(request, calibration_schedule, cal_id)

    @app.post(PREFIX + "/gates", tags=[TAG], status_code=202)
    async def gates_start_route(request: Request):
        def start(body: Any) -> dict[str, Any]:
            job = start_gates(body)
            return {"id": job.gate_id, "status": f"{PREFIX}/gates/{job.gate_id}", "state": job.state}

        return await serve(request, start, status=202)

    @app.get(PREFIX + "/gates", tags=[TAG])
    async def gates_list_route():
        return await serve(None, lambda: {"gates": list_gates()})

    @app.get(PREFIX + "/gates/{gate_id}", tags=[TAG])
    async def gates_status_route(gate_id: str):
        return await serve(None, gate_status, gate_id)

    @app.delete(PREFIX + "/gates/{gate_id}", tags=[TAG])
    async def gates_cancel_route(gate_id: str):
        return await serve(None, cancel_gates, gate_id)

    @app.post(PREFIX + "/gates/{gate_id}/schedule", tags=[TAG])
    async def gates_schedule_route(gate_id: str, request: Request):
        return await serve(request, gates_schedule, gate_id)


async def _body(request: Any) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise GeneratorRequestError(f"body is not valid JSON: {exc}", 400) from None


# ------------------------------------------------------------------ the tab
def calibration_frame(calibration: Calibration | None) -> Any:
    """Plot rows (step, error, unit) of the one-step-ahead curves; non-finite values are dropped, and no rows
    at all is None: an empty or NaN frame reaches the browser as NaN, which JSON.parse rejects."""
    import pandas as pd

    if calibration is None:
        return None
    rows = [{"step": s, "error": v, "unit": unit} for unit in calibration.errors
            for s, v in enumerate(calibration.curve(unit, 1)) if math.isfinite(v)]
    return pd.DataFrame(rows) if rows else None


def history_frame(history: list[dict[str, Any]]) -> Any:
    """Plot rows (iteration, value, term) of the gates' training loss; non-finite values are dropped."""
    import pandas as pd

    rows = [{"iteration": int(h.get("iteration", i + 1)), "value": float(h[term]), "term": term}
            for i, h in enumerate(history) for term in ("loss", "consistency")
            if isinstance(h.get(term), (int, float)) and math.isfinite(h[term])]
    return pd.DataFrame(rows) if rows else None


def alpha_slider(calibration: Calibration | None) -> dict[str, Any]:
    """Slider range 0..a little above the largest error (beyond it nothing changes), value the median error."""
    import gradio as gr

    if calibration is None:
        return gr.update()
    hi = max(alpha_range(calibration)[1], 1e-6) * 1.05
    step = 10 ** math.floor(math.log10(hi / 500))
    top = math.ceil(hi / step) * step
    return gr.update(minimum=0.0, maximum=top, step=step, value=round(default_alpha(calibration) / step) * step)


def preview_html(schedule: Schedule, speedup: float | None, label: str) -> str:
    """The schedule's steps as text and as the accordion's preview cells (drawn by ``javascript/dato.js``)."""
    from dato.options import pass_summary

    data = {"passes": [{**pass_summary(schedule, schedule.steps), "label": label, "name": schedule.name}],
            "context": ""}
    payload = html.escape(json.dumps(data, separators=(",", ":")), quote=True)
    gain = f"{speedup:.2f}x fewer UNet MACs" if speedup else "speed-up unknown"
    return (f'<div class="dato-generator-preview"><code>{html.escape(schedule.preview())}</code> — {gain}; '
            f'{schedule.full_steps} of {schedule.steps} steps full (F full, R reuse, digit = cache depth)'
            f'<div class="dato-preview" data-dato="{payload}"><div class="dato-preview-text"></div></div></div>')


def _lines(text: str | None) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def _sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed) -> dict[str, Any]:
    return {"prompts": _lines(prompts), "negative_prompt": negative or "", "sampler_name": sampler,
            "steps": int(steps), "cfg_scale": float(cfg), "width": int(width), "height": int(height),
            "seed": int(seed or 0)}


def tab_calibrate(prompts, negative, sampler, steps, cfg, width, height, seed, lookahead, allow_reuse,
                  max_depth) -> list:
    """"Calibrate": [status, calibration dropdown, plot, alpha slider, preview]."""
    import gradio as gr

    body = {**_sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed),
            "lookahead": int(lookahead)}
    try:
        cal_id = calibrate_now(body)["id"]
    except (GeneratorRequestError, RuntimeError, OSError) as exc:
        return [f"**Not calibrated:** {exc}", gr.update(), gr.update(), gr.update(), gr.update()]
    calibration = get_calibration(cal_id)
    return [_calibration_status(cal_id, calibration), gr.update(choices=list_calibrations(), value=cal_id),
            calibration_frame(calibration), alpha_slider(calibration),
            tab_calibration_preview(cal_id, default_alpha(calibration), allow_reuse, max_depth)]


def _calibration_status(cal_id: str, calibration: Calibration) -> str:
    info = calibration.info
    lo, hi = alpha_range(calibration)
    return (f"**{cal_id}**: {info.get('runs', '?')} prompt(s), {calibration.steps} steps, "
            f"{info.get('sampler_name', '?')} {info.get('width', '?')}x{info.get('height', '?')}, lookahead "
            f"{calibration.lookahead}; errors {lo:.3g}..{hi:.3g}. Move the threshold: below the smallest error "
            "every step is full, above the largest the schedule is as coarse as the lookahead allows.")


def tab_show_calibration(cal_id: str | None) -> list:
    """A calibration picked (or the page loaded): [status, plot, alpha slider]."""
    import gradio as gr

    if not cal_id:
        return ["No calibration for this model yet. Set it up and press **Calibrate**.", None, gr.update()]
    try:
        calibration = get_calibration(cal_id)
    except GeneratorRequestError as exc:
        return [str(exc), None, gr.update()]
    return [_calibration_status(cal_id, calibration), calibration_frame(calibration), alpha_slider(calibration)]


def tab_calibration_preview(cal_id: str | None, alpha: float, allow_reuse: bool, max_depth: float) -> str:
    """The schedule of the slider's threshold and its speed-up (or why there is none)."""
    if not cal_id:
        return ""
    try:
        calibration = get_calibration(cal_id)
        depth = min(int(max_depth), calibration.max_depth)
        schedule = schedule_from_calibration(calibration, float(alpha), allow_reuse=bool(allow_reuse),
                                             max_depth=depth)
        return preview_html(schedule, _calibration_speedup(calibration, schedule), f"alpha {float(alpha):.4g}")
    except (GeneratorRequestError, ScheduleError, RuntimeError) as exc:
        return html.escape(str(exc))


def _save_outputs(message: str, saved: bool) -> list:
    """[message, one update per accordion schedule dropdown on the page (new choices only after a save)]."""
    import gradio as gr

    from . import ui

    count = len(ui.schedule_dropdowns())
    return [message, *(ui.refreshed_choices(count) if saved else [gr.update() for _ in range(count)])]


def tab_save_calibration(cal_id, alpha, allow_reuse, max_depth, name) -> list:
    """"Save as schedule" of the calibration section."""
    if not cal_id:
        return _save_outputs("Calibrate first.", False)
    body = {"alpha": float(alpha), "allow_reuse": bool(allow_reuse), "name": (name or "").strip()}
    try:
        body["max_depth"] = min(int(max_depth), get_calibration(cal_id).max_depth)
        if not body["name"]:
            raise GeneratorRequestError("give the schedule a name")
        saved = calibration_schedule(cal_id, body)["saved"]
    except GeneratorRequestError as exc:
        return _save_outputs(f"**Not saved:** {exc}", False)
    return _save_outputs(f"Saved **{saved['name']}** ({saved['preview']}); the accordions list it now.", True)


def tab_gates_start(prompts, negative, sampler, steps, cfg, width, height, seed, target, iterations, batch) -> list:
    """"Start": [status, gate-run dropdown]."""
    import gradio as gr

    body = {**_sampling_body(prompts, negative, sampler, steps, cfg, width, height, seed),
            "target_speedup": float(target), "iterations": int(iterations or 1), "batch_size": int(batch or 1)}
    try:
        job = start_gates(body)
    except (GeneratorRequestError, OSError) as exc:
        return [f"**Not started:** {exc}", gr.update()]
    return [gate_status_md(job.gate_id), gr.update(choices=[g["id"] for g in list_gates()], value=job.gate_id)]


def gate_status_md(gate_id: str | None) -> str:
    """One status line: iteration i of N, loss terms, hard speed-up, ETA, or the error."""
    if not gate_id:
        return "No gate training yet. Set it up and press **Start**."
    try:
        st = gate_status(gate_id)
    except GeneratorRequestError as exc:
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


def tab_gates_refresh(gate_id: str | None) -> list:
    """[status, loss plot] of the picked gate run."""
    history: list = []
    job = GATE_JOBS.get(gate_id) if gate_id else None
    if job is not None:
        history = list(job.result.history) if job.result is not None else [dict(job.latest)] if job.latest else []
    elif gate_id and _gate_file(gate_id):
        try:
            history = gate_result(gate_id).history
        except GeneratorRequestError:
            history = []
    return [gate_status_md(gate_id), history_frame(history)]


def tab_gates_cancel(gate_id: str | None) -> str:
    if not gate_id:
        return "Nothing to cancel."
    try:
        cancel_gates(gate_id)
    except GeneratorRequestError as exc:
        return str(exc)
    return gate_status_md(gate_id) + " — cancelling after the current iteration"


def tab_gates_preview(gate_id: str | None, target: float) -> str:
    if not gate_id:
        return ""
    try:
        answer = gates_schedule(gate_id, {"target_speedup": float(target)})
    except GeneratorRequestError as exc:
        return html.escape(str(exc))
    schedule = Schedule.from_dict(answer["schedule"])
    return preview_html(schedule, answer["macs_speedup"], f"gates at {float(target):g}x")


def tab_gates_save(gate_id, target, name) -> list:
    if not gate_id:
        return _save_outputs("Train gates first.", False)
    try:
        if not (name or "").strip():
            raise GeneratorRequestError("give the schedule a name")
        saved = gates_schedule(gate_id, {"target_speedup": float(target), "name": name.strip()})["saved"]
    except GeneratorRequestError as exc:
        return _save_outputs(f"**Not saved:** {exc}", False)
    return _save_outputs(f"Saved **{saved['name']}** ({saved['preview']}); the accordions list it now.", True)


def tab_load() -> list:
    """Page load (or a browser refresh): the loaded model's last calibration and the newest gate run."""
    import gradio as gr

    cal_id = latest_calibration()
    gates = [g["id"] for g in list_gates()]
    gate_id = gates[0] if gates else None
    return [gr.update(choices=list_calibrations(), value=cal_id), *tab_show_calibration(cal_id),
            gr.update(choices=gates, value=gate_id), *tab_gates_refresh(gate_id)]


def _sampling_controls(prefix: str, samplers: list[str]) -> list:
    """Prompts, negative prompt, sampler, steps, CFG, size and seed (the search's controls, own elem_ids)."""
    import gradio as gr

    prompts = gr.Textbox(lines=3, label="Prompts (one per line)", elem_id=f"{prefix}_prompts",
                         value="a photo of a red fox in the snow\na watercolor painting of a lighthouse")
    negative = gr.Textbox(label="Negative prompt", elem_id=f"{prefix}_negative")
    with gr.Row():
        sampler = gr.Dropdown(samplers, value="Euler" if "Euler" in samplers else samplers[0], label="Sampler",
                              elem_id=f"{prefix}_sampler")
        steps = gr.Slider(4, 100, value=20, step=1, label="Steps", elem_id=f"{prefix}_steps")
        cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id=f"{prefix}_cfg")
    with gr.Row():
        width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{prefix}_width")
        height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{prefix}_height")
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id=f"{prefix}_seed")
    return [prompts, negative, sampler, steps, cfg, width, height, seed]


def _webui_samplers() -> list[str]:
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names()) or ["Euler"]
    except Exception:  # noqa: BLE001 - stand-ins and old versions
        return ["Euler"]


def _save_row(prefix: str) -> tuple:
    import gradio as gr

    with gr.Row():
        name = gr.Textbox(label="Save as schedule named", elem_id=f"{prefix}_save_name")
        button = gr.Button("Save as schedule", elem_id=f"{prefix}_save")
    return name, button, gr.Markdown(elem_id=f"{prefix}_save_msg")


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


def _calibration_section() -> dict[str, Any]:
    import gradio as gr

    c: dict[str, Any] = {}
    with gr.Accordion("Calibrate (SmoothCache)", open=False, elem_id="dato_calibrate") as accordion:
        gr.Markdown("One unaccelerated generation per prompt measures how much each cacheable feature changes "
                    "from step to step; one threshold then turns the curves into a schedule.")
        with gr.Row():
            with gr.Column(scale=5):
                c["inputs"] = _sampling_controls("dato_calibrate", _webui_samplers())
                c["lookahead"] = gr.Slider(1, MAX_LOOKAHEAD, value=3, step=1, label="Lookahead k (steps a "
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
                    c["reuse"] = gr.Checkbox(value=True, label="Allow whole-output reuse",
                                             elem_id="dato_calibrate_reuse")
                    c["depth"] = gr.Slider(-1, 11, value=11, step=1, label="Deepest cache branch",
                                           elem_id="dato_calibrate_depth")
                c["preview"] = gr.HTML(elem_id="dato_calibrate_preview")
                c["save_name"], c["save"], c["save_msg"] = _save_row("dato_calibrate")
    own_ui_config_keys(accordion, "dato_calibrate")
    return c


def _gates_section() -> dict[str, Any]:
    import gradio as gr

    g: dict[str, Any] = {}
    with gr.Accordion("Gradient gates (DiP-GO)", open=False, elem_id="dato_gates") as accordion:
        gr.Markdown("Learns which step may skip which part of the UNet by backpropagating through a few-step "
                    "sampler (dato's own: Euler, Euler a, Heun or DDIM). It runs in the background; your "
                    "generations wait at most one training iteration.")
        with gr.Row():
            with gr.Column(scale=5):
                g["inputs"] = _sampling_controls("dato_gates", list(GATE_SAMPLERS))
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
                g["preview"] = gr.HTML(elem_id="dato_gates_preview")
                g["save_name"], g["save"], g["save_msg"] = _save_row("dato_gates")
    own_ui_config_keys(accordion, "dato_gates")
    return g


def build_sections(tab: Any) -> None:
    """Both accordions and their events, inside the Search tab's ``gr.Blocks`` ``tab`` (its ``load`` restores
    the last calibration and gate run after a browser refresh)."""
    from . import ui

    ensure_step_clock()
    c, g = _calibration_section(), _gates_section()
    dropdowns = ui.schedule_dropdowns()
    threshold = [c["pick"], c["alpha"], c["reuse"], c["depth"]]
    c["run"].click(tab_calibrate, inputs=[*c["inputs"], c["lookahead"], c["reuse"], c["depth"]],
                   outputs=[c["status"], c["pick"], c["plot"], c["alpha"], c["preview"]])
    c["pick"].change(tab_show_calibration, inputs=[c["pick"]], outputs=[c["status"], c["plot"], c["alpha"]],
                     show_progress=False)
    for control in (c["alpha"], c["reuse"], c["depth"]):
        control.change(tab_calibration_preview, inputs=threshold, outputs=[c["preview"]], show_progress=False)
    c["save"].click(tab_save_calibration, inputs=[*threshold, c["save_name"]], outputs=[c["save_msg"], *dropdowns])
    gate_view = [g["status"], g["plot"]]
    g["start"].click(tab_gates_start, inputs=[*g["inputs"], g["target"], g["iterations"], g["batch"]],
                     outputs=[g["status"], g["pick"]])
    g["cancel"].click(tab_gates_cancel, inputs=[g["pick"]], outputs=[g["status"]])
    g["refresh"].click(tab_gates_refresh, inputs=[g["pick"]], outputs=gate_view, show_progress=False)
    g["pick"].change(tab_gates_refresh, inputs=[g["pick"]], outputs=gate_view, show_progress=False)
    g["post_target"].change(tab_gates_preview, inputs=[g["pick"], g["post_target"]], outputs=[g["preview"]],
                            show_progress=False)
    g["save"].click(tab_gates_save, inputs=[g["pick"], g["post_target"], g["save_name"]],
                    outputs=[g["save_msg"], *dropdowns])
    tab.load(tab_load, outputs=[c["pick"], c["status"], c["plot"], c["alpha"], g["pick"], *gate_view])


def ensure_step_clock() -> None:
    """This module's step clock, registered once (see :func:`runtime.register_cfg_denoiser_once`)."""
    from .runtime import register_cfg_denoiser_once

    register_cfg_denoiser_once(on_cfg_denoiser, STEP_CLOCK)

ensure_step_clock()

__all__ = ["CALIBRATIONS", "GATE_JOBS", "GeneratorRequestError", "Sampling", "WebUIGateJob", "build_sections",
           "calibrate_now", "calibration_schedule", "cancel_gates", "gate_status", "gates_schedule",
           "get_calibration", "list_calibrations", "list_gates", "parse_calibration_request", "parse_gate_request",
           "register", "start_gates"]
