"""SmoothCache-style calibration on the live model, and the schedules of its thresholds.

The engine does the work (:mod:`dato.generators.calibrate`); this module runs
one unaccelerated generation per prompt through the WebUI's own processing
(:meth:`~dato_webui.backend.WebUIBackend.render`: the user's sampler, size and
CFG, one prompt at a time inside ``modules.call_queue.queue_lock``) with a
:class:`~dato.generators.calibrate.CalibrationRecorder` whose hooks are on the
UNet only while our generation runs and whose step is set from the step
clock. The recorder is made at the first step, with the denoiser's
``total_steps`` as its step count: that is the count the accordion's patch
resamples a schedule to (second-order samplers report their model calls).
A calibration is kept per model in memory and as
``schedules/calibrations/<id>.json``, so a threshold can be tried again after
a browser refresh or a restart.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from dato.core.fileio import atomic_write_bytes
from dato.core.schedule import Schedule, ScheduleError, short_repr
from dato.generators.calibrate import Calibration, CalibrationRecorder, alpha_range, schedule_from_calibration

from . import backend, store
from .requests import (
    SAMPLING_DEFAULTS,
    RequestError,
    Sampling,
    as_object,
    json_safe,
    new_id,
    no_unknown,
    parse_sampling,
    safe_id,
    schedule_answer,
    take,
    take_name,
)

MAX_LOOKAHEAD = 10
CALIBRATIONS: dict[str, Calibration] = {}  # id -> calibration (this session's, and those read from files)
LATEST: dict[str, str] = {}  # model key -> id of its newest calibration in this session
CALIBRATIONS_MAX = 32  # kept in memory, least recently used out; every calibration is also in its file


def _remember(cal_id: str, calibration: Calibration) -> Calibration:
    CALIBRATIONS.pop(cal_id, None)
    while len(CALIBRATIONS) >= CALIBRATIONS_MAX:
        del CALIBRATIONS[next(iter(CALIBRATIONS))]
    CALIBRATIONS[cal_id] = calibration
    return calibration


class CalibrationRun:
    """The recorder of one calibration across its prompts; hooks are on only during our own generations.

    It is made at the first step because its step count is the denoiser's ``total_steps`` (see the module
    docstring). Errors inside ``on_cfg_denoiser`` are kept, not raised: the WebUI swallows callback errors.
    """

    def __init__(self, model: Any, lookahead: int) -> None:
        self.model, self.lookahead = model, lookahead
        self.recorder: CalibrationRecorder | None = None
        self.entered = False
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

    def record(self, images: backend.WebUIBackend, prompt: str, seed: int) -> None:
        """One unaccelerated generation of ``prompt`` (the caller holds ``queue_lock``), recorded."""
        try:
            images.render(prompt, seed, "dato_calibrate", RequestError("calibration interrupted from the WebUI", 409),
                          on_step=self.on_step)
        finally:
            self.pause()

    def result(self, **info: Any) -> Calibration:
        self.pause()
        if self.error is not None:
            raise RuntimeError(f"calibration failed: {self.error}")
        if self.recorder is None:
            raise RuntimeError("the step clock never reached the calibration (on_cfg_denoiser did not run); "
                               "is another extension replacing the sampler?")
        return self.recorder.result(**info)


def parse_calibration_request(body: Any) -> tuple[Sampling, int]:
    """A calibration request -> (sampling, lookahead). Unknown fields are refused with their names."""
    body = as_object(body)
    sampling = parse_sampling(body)
    lookahead = take(body, "lookahead", int, 1, min(MAX_LOOKAHEAD, sampling.steps - 1), 3)
    no_unknown(body, ["prompts", *SAMPLING_DEFAULTS, "lookahead"])
    return sampling, lookahead


def calibrate_now(body: Any) -> dict[str, Any]:
    """Validate, calibrate on the loaded model (one generation per prompt), save and remember the result."""
    from modules import call_queue

    sampling, lookahead = parse_calibration_request(body)
    model, _ = backend.usable_model("calibration")
    backend.check_token_merging("calibration")
    backend.check_sampler(sampling.sampler_name)
    run, images = CalibrationRun(model, lookahead), backend.WebUIBackend.of(sampling)
    for i, prompt in enumerate(sampling.prompts):
        with call_queue.queue_lock:  # one generation at a time: user jobs interleave between them
            run.record(images, prompt, (sampling.seed + i) % 2**32)
    cal_id = new_id()
    info = {**backend.model_info(), "calibration_id": cal_id, "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **{("sampling_steps" if k == "steps" else k): v for k, v in sampling.to_dict().items()}}
    calibration = run.result(**info)
    backend.unet_cost(model)  # traced now (under the lock), so the threshold slider never waits for it
    atomic_write_bytes(store.calibrations_dir() / f"{cal_id}.json", calibration.to_json().encode("utf-8"))
    _remember(cal_id, calibration)
    LATEST.pop(backend.model_key(), None)
    while len(LATEST) >= CALIBRATIONS_MAX:
        del LATEST[next(iter(LATEST))]
    LATEST[backend.model_key()] = cal_id
    return describe_calibration(cal_id, calibration)


def describe_calibration(cal_id: str, calibration: Calibration) -> dict[str, Any]:
    lo, hi = alpha_range(calibration)
    return json_safe({"id": cal_id, "calibration": calibration.to_dict(), "alpha_range": [lo, hi],
                      "alpha_default": default_alpha(calibration),
                      "path": str(store.calibrations_dir() / f"{cal_id}.json")})


def get_calibration(cal_id: Any) -> Calibration:
    """A calibration of this session, else from its file (after a restart); 404 when there is none."""
    if not safe_id(cal_id):
        raise RequestError(f"no calibration named {short_repr(cal_id)}", 404)
    if cal_id not in CALIBRATIONS:
        path = store.calibrations_dir() / f"{cal_id}.json"
        if not path.is_file():
            raise RequestError(f"no calibration named {short_repr(cal_id)}", 404)
        try:
            _remember(cal_id, Calibration.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise RequestError(f"calibration file {path.name} is invalid: "
                               f"{short_repr(f'{type(exc).__name__}: {exc}', 200)}") from None
    return _remember(cal_id, CALIBRATIONS[cal_id])


def list_calibrations(current_model_only: bool = True) -> list[str]:
    """Calibration ids, newest first (ids start with the date); only the loaded model's by default."""
    folder = store.calibrations_dir()
    ids = set(CALIBRATIONS) | ({p.stem for p in folder.glob("*.json")} if folder.is_dir() else set())
    ids = {i for i in ids if safe_id(i)}
    if current_model_only:
        key = backend.model_key()
        ids = {i for i in ids if not key or _calibration_model(i) in (key, "")}
    return sorted(ids, reverse=True)


def _calibration_model(cal_id: str) -> str | None:
    try:
        info = get_calibration(cal_id).info
    except RequestError:
        return None
    return str(info.get("model_hash") or info.get("model_name") or "")


def latest_calibration() -> str | None:
    """The loaded model's newest calibration: this session's, else the newest file."""
    remembered = LATEST.get(backend.model_key())
    if remembered:
        return remembered
    ids = list_calibrations()
    return ids[0] if ids else None


def default_alpha(calibration: Calibration) -> float:
    """The median measured error: a middle threshold to start from."""
    values = sorted(v for rows in calibration.errors.values() for row in rows for v in row if math.isfinite(v))
    return values[len(values) // 2] if values else 0.0


def threshold_schedule(calibration: Calibration, alpha: float, allow_reuse: bool = True,
                       max_depth: int | None = None, name: str | None = None) -> tuple[Schedule, float]:
    """The schedule of one threshold and its MACs speed-up at the calibration's size."""
    try:
        schedule = schedule_from_calibration(calibration, alpha, allow_reuse=allow_reuse, max_depth=max_depth,
                                             name=name)
    except ScheduleError as exc:
        raise RequestError(str(exc)) from None
    info = calibration.info
    return schedule, backend.macs_speedup(schedule, int(info.get("width", 512)), int(info.get("height", 512)))


def calibration_schedule(cal_id: Any, body: Any) -> dict[str, Any]:
    """The schedule of one threshold (and its MACs speed-up); with ``name`` it is also installed."""
    calibration = get_calibration(cal_id)
    body = as_object(body)
    alpha = take(body, "alpha", float, 0.0)
    allow_reuse = take(body, "allow_reuse", bool, default=True)
    max_depth = take(body, "max_depth", int, -1, calibration.max_depth, None)
    name = take_name(body)
    no_unknown(body, ["alpha", "allow_reuse", "max_depth", "name"])
    schedule, speedup = threshold_schedule(calibration, alpha, allow_reuse, max_depth, name)
    return schedule_answer(schedule, speedup, save=name is not None)
