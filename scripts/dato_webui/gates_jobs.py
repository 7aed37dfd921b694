"""DiP-GO-style gradient gates trained on the live model in the background, and the schedules they give.

The engine does the work (:class:`~dato.generators.gates.GateJob`); the
WebUI's part is the backend it trains on (:func:`dato_webui.backend.gate_backend`:
a StandaloneBackend around the live UNet, dato's own sampler, ``queue_lock``
held per iteration by a :class:`~dato_webui.backend.QueueTurn`), so user
generations run between iterations, never while the gates' hooks are on.
Results go to ``schedules/gates/<id>.json`` (:meth:`GateResult.load` reads
them), so status and schedules outlive a restart.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from dato.core.schedule import ScheduleError, short_repr
from dato.generators.gates import GateConfig, GateJob, GateResult

from . import backend, store
from .jobs import JobRegistry
from .requests import (
    SAMPLING_DEFAULTS,
    RequestError,
    Sampling,
    as_object,
    check_field,
    json_safe,
    new_id,
    no_unknown,
    parse_sampling,
    safe_id,
    schedule_answer,
    take,
    take_name,
)

TAG = "sd-webui-dato"
GATE_LIMITS: dict[str, tuple[float, float]] = {"target_speedup": (1.0, 50.0), "iterations": (1, 100_000),
                                               "batch_size": (1, 64), "pool": (1, 4096)}
GATE_JOBS = JobRegistry("gate training", id_of=lambda job: job.gate_id)


# ------------------------------------------------------------------ requests
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
    body = as_object(body)
    sampling = parse_sampling(body)
    if backend.gate_sampler(sampling.sampler_name) is None:
        raise RequestError(f"sampler_name = {short_repr(sampling.sampler_name)}: gate training samples with dato's own "
                           f"sampler; expected one of {', '.join(backend.GATE_SAMPLERS)}")
    fields = [f for f in dataclasses.fields(GateConfig) if f.name != "seed"]
    values: dict[str, Any] = {"seed": sampling.seed}
    for field in fields:
        if field.name in body:
            values[field.name] = _config_field(body, field)
    defaults = GateConfig()
    if "pool" not in values:  # a bigger batch than the default pool would be refused: grow the pool with it
        values["pool"] = max(defaults.pool, values.get("batch_size", defaults.batch_size))
    no_unknown(body, ["prompts", *SAMPLING_DEFAULTS, *(f.name for f in fields)])
    try:
        config = GateConfig(**values)
        config.validate(sampling.steps)
    except (TypeError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    return sampling, config


# ------------------------------------------------------------------ jobs
class WebUIGateJob(GateJob):
    """A :class:`GateJob` on the live model that takes ``queue_lock`` per iteration (see :class:`QueueTurn`)."""

    def __init__(self, gate_id: str, sampling: Sampling, config: GateConfig, model: Any) -> None:
        self.gate_id, self.sampling = gate_id, sampling
        self.turn = backend.QueueTurn(model)
        self.model_info = backend.model_info()
        super().__init__(self._make_backend, list(sampling.prompts), config, on_done=self._save,
                         step_context=self.turn.iteration)

    def _make_backend(self) -> Any:
        try:
            return backend.gate_backend(self.sampling, self.turn)
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
        result.save(store.gates_dir() / f"{self.gate_id}.json")


def start_gates(body: Any) -> WebUIGateJob:
    """Validate and start gate training in the background; one job at a time."""
    sampling, config = parse_gate_request(body)
    model, unet = backend.usable_model("gate training")
    backend.check_gate_model(model, unet)  # dato's own sampler: the WebUI's Token Merging and samplers stay out
    job = GATE_JOBS.start(lambda: WebUIGateJob(new_id(), sampling, config, model))
    print(f"[{TAG}] gate training {job.gate_id} started ({config.iterations} iterations)")
    return job


def gate_file(gate_id: Any) -> Path | None:
    """The result file of ``gate_id`` if there is one."""
    if not safe_id(gate_id):
        return None
    path = store.gates_dir() / f"{gate_id}.json"
    return path if path.is_file() else None


def _load_gate_result(gate_id: str) -> GateResult:
    path = gate_file(gate_id)
    if path is None:
        raise RequestError(f"no gate training named {short_repr(gate_id)}", 404)
    try:
        return GateResult.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise _invalid(path, exc) from None


def _invalid(path: Path, exc: BaseException) -> RequestError:
    """A gate result file that cannot be read or used: 422 naming the file (never a 500)."""
    return RequestError(f"gate result file {path.name} is invalid: "
                        f"{short_repr(f'{type(exc).__name__}: {exc}', 200)}")


def gate_status(gate_id: Any) -> dict[str, Any]:
    """Live status of a job of this session, else what its result file says (after a restart)."""
    job = GATE_JOBS.find(gate_id)
    if job is not None:
        data = job.status()
        data.update(id=gate_id, source="job", sampling=job.sampling.to_dict())
    else:
        result = _load_gate_result(gate_id)
        try:
            config = dict(result.info.get("config", {}))
            data = {"id": gate_id, "state": "done", "running": False, "iteration": len(result.history),
                    "iterations": config.get("iterations", len(result.history)), "eta_seconds": None,
                    "error": None, "latest": dict(result.history[-1]) if result.history else {}, "config": config,
                    "source": "file", "sampling": result.info.get("webui", {})}
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _invalid(store.gates_dir() / f"{gate_id}.json", exc) from None
    path = gate_file(gate_id)
    data["result_path"] = str(path) if path else None
    return json_safe(data)


def list_gates() -> list[dict[str, Any]]:
    """Every gate training of this session and every result file, newest first."""
    folder = store.gates_dir()
    ids = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
    ids = {i for i in ids | set(GATE_JOBS) if safe_id(i)}
    out = []
    for gate_id in sorted(ids, reverse=True):
        job = GATE_JOBS.get(gate_id)
        out.append({"id": gate_id, "state": job.state if job else "done", "running": bool(job and job.running)})
    return out


def cancel_gates(gate_id: Any) -> dict[str, Any]:
    job = GATE_JOBS.cancel(gate_id)
    return {"id": gate_id, "state": job.state, "message": "cancelling after the current iteration"}


def gate_result(gate_id: Any) -> GateResult:
    """The finished result of a job of this session, or from its file; 409 while it is not done."""
    job = GATE_JOBS.find(gate_id)
    if job is not None and job.result is not None and job.state == "done":
        return job.result
    if job is not None and gate_file(gate_id) is None:
        raise RequestError(f"gate training {short_repr(gate_id)} has no result ({job.state})", 409)
    return _load_gate_result(gate_id)


def history(gate_id: str | None) -> list[dict[str, Any]]:
    """The training loss so far: a job's of this session, else its result file's ([] when there is none)."""
    job = GATE_JOBS.find(gate_id)
    if job is not None:
        return list(job.result.history) if job.result is not None else [dict(job.latest)] if job.latest else []
    if gate_id and gate_file(gate_id):
        try:
            return gate_result(gate_id).history
        except RequestError:
            return []
    return []


def gates_schedule(gate_id: Any, body: Any) -> dict[str, Any]:
    """The trained gates post-processed to a MACs speed-up (default: the training target); ``name`` installs it."""
    result = gate_result(gate_id)
    body = as_object(body)
    try:
        trained = float(dict(result.info.get("config", {})).get("target_speedup", 2.0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise _invalid(store.gates_dir() / f"{gate_id}.json", exc) from None
    lo, hi = GATE_LIMITS["target_speedup"]
    target = take(body, "target_speedup", float, lo, hi, trained)
    name = take_name(body)
    no_unknown(body, ["target_speedup", "name"])
    try:
        schedule = result.schedule(target, name=name)
    except ScheduleError as exc:
        raise RequestError(str(exc)) from None
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:  # logits or costs of a broken file
        raise _invalid(store.gates_dir() / f"{gate_id}.json", exc) from None
    return schedule_answer(schedule, schedule.provenance.get("macs_speedup"), save=name is not None)
