"""Requests and answers of the glue's routes: the one place that checks a JSON body and shapes a JSON answer.

* :class:`RequestError` is every refusal (``status`` is the HTTP code); the
  routes answer it as ``{"detail": "<message>"}``.
* :func:`check_field`, :func:`take`, :func:`as_object`, :func:`no_unknown`
  check a body field by field, naming the field that is wrong;
  :func:`parse_sampling` pops the txt2img fields calibration and gates share.
* :func:`read_json` / :func:`parse_json`, :func:`error_response` and
  :func:`serve` are the route side (400 for a body that is not JSON).
* :func:`save_schedule` and :func:`schedule_answer`: what a route that makes a
  schedule returns, and installing it where the accordions look.

The Search tab's start request keeps its own, more lenient parse
(:func:`dato_webui.search_jobs.parse_request`): its numbers may come as strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
import time
from typing import Any

from fastapi.responses import JSONResponse

from dato.core.schedule import Schedule, short_repr

from . import store

MAX_PROMPTS = 64
MAX_BODY = 1 << 20  # bytes: no request body of these routes needs more (a schedule file is a few KB)
SAMPLING_DEFAULTS: dict[str, Any] = {"negative_prompt": "", "steps": 20, "sampler_name": "Euler", "width": 512,
                                     "height": 512, "cfg_scale": 7.0, "seed": 0}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_MISSING = object()


class RequestError(ValueError):
    """A request that cannot be served; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ fields
def _expected(kind: type, lo: Any, hi: Any) -> str:
    what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    if lo is not None and hi is not None:
        return f"{what} {lo}..{hi}"
    return what + (f" >= {lo}" if lo is not None else "")


def check_field(name: str, value: Any, kind: type, lo: Any = None, hi: Any = None) -> Any:
    """``value`` as ``kind`` within ``lo..hi``, else a 422 naming ``name`` (JSON booleans are not numbers)."""
    bad = RequestError(f"{name} = {short_repr(value)}: expected {_expected(kind, lo, hi)}")
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise bad
        return value
    try:  # an integer too large for a float is not a number here
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
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


def take(body: dict, name: str, kind: type, lo: Any = None, hi: Any = None, default: Any = _MISSING) -> Any:
    """Pop and check ``name``; required unless a ``default`` is given (a ``None`` default lets ``null`` through)."""
    value = body.pop(name, default)
    if value is _MISSING:
        raise RequestError(f"{name} is required")
    if value is None and default is None:
        return None
    return check_field(name, value, kind, lo, hi)


def take_name(body: dict) -> str | None:
    """The optional ``name`` to save a schedule under (blank = not saved)."""
    name = take(body, "name", str, default=None)
    return (name.strip() or None) if name is not None else None


def as_object(body: Any) -> dict:
    """A copy of a JSON object body, for :func:`take` to pop from."""
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object, got {type(body).__name__}")
    return dict(body)


def no_unknown(body: dict, known: list[str]) -> None:
    """What is left in ``body`` after the known fields were taken is refused, by name."""
    if body:
        raise RequestError(f"unknown field(s) {', '.join(sorted(map(str, body)))}; known: {', '.join(known)}")


def safe_id(item_id: Any) -> bool:
    """A calibration or gate id that can name a file (no path, no dot files)."""
    return isinstance(item_id, str) and bool(_ID_RE.match(item_id))


def new_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# ------------------------------------------------------------------ sampling
@dataclasses.dataclass(frozen=True)
class Sampling:
    """What calibration and gates sample with: the txt2img fields of the Search tab."""

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


def _prompts(body: dict) -> tuple[str, ...]:
    value = body.pop("prompts", _MISSING)
    if value is _MISSING:
        raise RequestError("prompts is required: a list of prompt strings")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RequestError(f"prompts = {short_repr(value)}: expected a list of strings")
    prompts = tuple(p.strip() for p in value if p.strip())
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise RequestError(f"prompts: expected 1..{MAX_PROMPTS} non-empty prompts, got {len(prompts)}")
    return prompts


def parse_sampling(body: dict) -> Sampling:
    """Pop the sampling fields from ``body`` (a dict the caller owns) into a :class:`Sampling`."""
    d = SAMPLING_DEFAULTS
    sampling = Sampling(
        prompts=_prompts(body),
        negative_prompt=take(body, "negative_prompt", str, default=d["negative_prompt"]),
        steps=take(body, "steps", int, 2, 150, d["steps"]),
        sampler_name=take(body, "sampler_name", str, default=d["sampler_name"]),
        width=take(body, "width", int, 64, 2048, d["width"]),
        height=take(body, "height", int, 64, 2048, d["height"]),
        cfg_scale=take(body, "cfg_scale", float, 1.0, 30.0, d["cfg_scale"]),
        seed=take(body, "seed", int, 0, 2**32 - 1, d["seed"]),
    )
    for name in ("width", "height"):
        if getattr(sampling, name) % 8:
            raise RequestError(f"{name} = {getattr(sampling, name)}: expected a multiple of 8")
    if not sampling.sampler_name or len(sampling.sampler_name) > 100:
        raise RequestError(f"sampler_name = {short_repr(sampling.sampler_name)}: expected a sampler name")
    return sampling


# ------------------------------------------------------------------ answers
def json_safe(value: Any) -> Any:
    """Non-finite floats become null: Starlette refuses NaN, and a NaN reaching a Gradio plot freezes the page."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_schedule(schedule: Schedule, source: str = store.USER) -> dict[str, Any]:
    """Install ``schedule`` (the accordions list it) and describe it; a taken name is a 409."""
    try:
        entry = store.save(schedule, source)
    except store.StoreError as exc:
        raise RequestError(str(exc), exc.status) from None
    return store.describe(entry, schedule)


def schedule_answer(schedule: Schedule, speedup: float | None, save: bool) -> dict[str, Any]:
    """What the schedule routes return: the schedule, its one-line preview, the MACs speed-up, what was saved."""
    data = {"schedule": schedule.to_dict(), "preview": schedule.preview(), "macs_speedup": speedup}
    if save:
        data["saved"] = save_schedule(schedule)
    return json_safe(data)


# ------------------------------------------------------------------ routes
def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def parse_json(raw: bytes, default: Any = _MISSING) -> Any:
    """A request body as JSON (an empty body is ``default`` when one is given).

    413 over :data:`MAX_BODY` bytes, 400 when it is not JSON (or nests too deep to read).
    """
    if not raw and default is not _MISSING:
        return default
    if len(raw) > MAX_BODY:
        raise RequestError(f"request body too large ({len(raw)} bytes; limit {MAX_BODY})", 413)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"body is not valid JSON: {short_repr(str(exc), 120)}", 400) from None
    except RecursionError:
        raise RequestError("body is not valid JSON: nested too deep", 400) from None


async def read_json(request: Any, default: Any = _MISSING) -> Any:
    return parse_json(await request.body(), default)


async def serve(request: Any, fn: Any, *args: Any, status: int = 200) -> JSONResponse:
    """Run ``fn(*args[, body])`` off the event loop (it may generate images) and answer as JSON.

    With a ``request`` its JSON body (empty = ``{}``) is the last argument. A :class:`RequestError` answers with
    its status, a ``RuntimeError`` (a failed generation) with 500, both as ``{"detail": ...}``.
    """
    from starlette.concurrency import run_in_threadpool

    try:
        if request is not None:
            args = (*args, await read_json(request, {}))
        return JSONResponse(status_code=status, content=json_safe(await run_in_threadpool(fn, *args)))
    except RequestError as exc:
        return error_response(exc.status, str(exc))
    except RuntimeError as exc:
        return error_response(500, str(exc))
