"""REST routes (``/dato/v1/...``) and the check of ``alwayson_scripts`` arguments on txt2img/img2img.

Routes, mounted by ``on_app_started(demo, app)``:

* ``GET    /dato/v1/args``                 the argument list: order, names, defaults, meaning
* ``POST   /dato/v1/args``                 validate ``{"args": [...], "request": {...}}``; canonical positional and
                                           named forms, and the plan the run would make for that request
* ``GET    /dato/v1/schedules``            installed schedules (presets, search results, yours)
* ``GET    /dato/v1/schedules/{name}``     one schedule; ``?steps=N`` adds its preview resampled to N steps
* ``POST   /dato/v1/schedules``            upload a schedule JSON (validated, atomic, name collisions refused)
* ``DELETE /dato/v1/schedules/{name}``     delete one of yours (presets are refused)

Errors are ``{"detail": "<message>"}`` with 400 (bad JSON), 403, 404, 409 or
422 (invalid content). None of these touch the GPU; anything that does must
hold ``modules.call_queue.queue_lock`` (the Search tab's jobs do).

The WebUI swallows errors raised by a script's hooks, so an invalid argument
list in ``POST /sdapi/v1/txt2img`` would otherwise produce an unaccelerated
image with only a console line. A small ASGI middleware reads those two
requests' ``alwayson_scripts`` entry for this extension and answers 422 with
the reason before the job is queued; every other request passes untouched.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from dato.core.arguments import ARGS, ArgsError, DatoArgs, arg_spec
from dato.core.plan import Geometry, RunPlan, pass_summary, plan_run
from dato.core.schedule import MAX_STEPS, Schedule, ScheduleError, short_repr

from . import settings, store
from .host import geometry_from_request, host_facts
from .requests import RequestError, error_response, parse_json, read_json

PREFIX = "/dato/v1"
SCRIPT_KEY = "dato"  # alwayson_scripts key: the script title, lowercased
GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
MAX_UPLOAD = 1 << 20


def args_spec() -> dict[str, Any]:
    """``GET /dato/v1/args``: every argument from the table, with the default this WebUI starts from."""
    d = settings.defaults()
    return {
        "script": SCRIPT_KEY,
        "args": [arg_spec(a, getattr(d, a.name)) for a in ARGS],
        "null": "an argument given as null keeps its default (the accordion's starting value)",
        "example": {"alwayson_scripts": {SCRIPT_KEY: {"args": [True, d.method, d.ratio, d.schedule]}}},
        "named_example": {"alwayson_scripts": {SCRIPT_KEY: {"args": [{"method": d.method, "ratio": d.ratio}]}}},
    }


def check_args(args: Any, request: dict | None = None, img2img: bool = False) -> tuple[DatoArgs, RunPlan]:
    """Validate an ``args`` value as the run will read it and plan it as the run will (raises :class:`ArgsError`
    or :class:`ScheduleError`): the request's geometry (its steps, size, sampler, hires fix, strength) and
    ``override_settings`` (Token Merging) when it is a generation request."""
    if not isinstance(args, list):
        raise ArgsError(f"'args' must be a list (positional, or one object with named arguments); got "
                        f"{type(args).__name__}")
    parsed = DatoArgs.from_args(args, settings.defaults())
    body = request or {}
    geometry = geometry_from_request(body, img2img) if request is not None else Geometry()
    override = body.get("override_settings") if isinstance(body.get("override_settings"), dict) else None
    facts = host_facts(None, img2img, override)
    plan = plan_run(parsed, geometry, facts, store.load)
    if parsed.enabled and parsed.hr_mode == "own" and not geometry.hires:  # a typo in hr_* is refused all the same
        plan_run(parsed, replace(geometry, hires=True), facts, store.load)
    return parsed, plan


def register(app: Any) -> None:
    """Mount the routes and the argument check on the WebUI's FastAPI ``app``."""

    @app.get(PREFIX + "/args", tags=["sd-webui-dato"])
    def get_args():
        return args_spec()

    @app.post(PREFIX + "/args", tags=["sd-webui-dato"])
    async def post_args(request: Request):
        try:
            body = await read_json(request)
        except RequestError as exc:
            return error_response(exc.status, str(exc))
        if not isinstance(body, dict) or "args" not in body:
            return error_response(422, "expected a JSON object {\"args\": [...]}")
        request = body.get("request")
        if request is not None and not isinstance(request, dict):
            return error_response(422, "'request' must be a txt2img/img2img request object (its geometry is used)")
        try:
            parsed, plan = check_args(body["args"], request or {}, img2img=bool(body.get("img2img", False)))
        except (ArgsError, ScheduleError) as exc:
            return error_response(422, str(exc))
        return {"args": parsed.to_args(), "named": parsed.to_dict(), "plan": plan.preview(),
                "infotext": plan.infotext(), "notes": plan.notes}

    @app.get(PREFIX + "/schedules", tags=["sd-webui-dato"])
    def list_schedules():
        out, broken = [], []
        for name, entry in store.catalog().items():
            try:
                out.append(store.describe(entry, store.read(entry)))
            except ScheduleError as exc:
                broken.append({"name": name, "source": entry.source, "error": str(exc)})
        return {"schedules": out, "invalid": broken, "user_dir": str(store.user_dir())}

    @app.get(PREFIX + "/schedules/{name}", tags=["sd-webui-dato"])
    def get_schedule(name: str, steps: str | None = None):  # str: our message, not FastAPI's echo of the value
        count = None
        if steps is not None:
            count = int(steps) if steps.strip().isdigit() and len(steps) < 8 else None
            if count is None or not 1 <= count <= MAX_STEPS:
                return error_response(422, f"steps = {short_repr(steps)}: expected an integer 1..{MAX_STEPS}")
        try:
            entry, schedule = store.get(name)
        except store.StoreError as exc:
            return error_response(exc.status, str(exc))
        result = {**store.describe(entry, schedule), "schedule": schedule.to_dict()}
        if count is not None:
            result["resampled"] = pass_summary(schedule, count)
        return result

    @app.post(PREFIX + "/schedules", tags=["sd-webui-dato"], status_code=201)
    async def upload_schedule(request: Request):
        raw = await request.body()
        if len(raw) > MAX_UPLOAD:
            return error_response(413, f"schedule file too large ({len(raw)} bytes; limit {MAX_UPLOAD})")
        try:
            data = parse_json(raw)
        except RequestError as exc:
            return error_response(exc.status, str(exc))
        if isinstance(data, dict) and isinstance(data.get("schedule"), dict):
            data = data["schedule"]  # the GET answer's shape is accepted too
        try:  # every field, the rule included (Schedule.validate: in range and agreeing with the cache list)
            schedule = Schedule.from_dict(data, source="uploaded schedule")
        except ScheduleError as exc:
            return error_response(422, str(exc))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. a ratio too large for a float
            return error_response(422, f"uploaded schedule: {short_repr(str(exc), 200)}")
        try:
            entry = store.save(schedule)
        except store.StoreError as exc:
            return error_response(exc.status, str(exc))
        return JSONResponse(status_code=201, content=store.describe(entry, schedule))

    @app.delete(PREFIX + "/schedules/{name}", tags=["sd-webui-dato"])
    def delete_schedule(name: str):
        try:
            entry = store.delete(name)
        except store.StoreError as exc:
            return error_response(exc.status, str(exc))
        return {"deleted": entry.name, "source": entry.source}

    try:
        # The server is already up when on_app_started runs; like the WebUI's own setup_middleware, drop the built
        # stack so that Starlette accepts the addition and rebuilds the stack on the next request.
        app.middleware_stack = None
        app.add_middleware(ArgsCheckMiddleware)
    except RuntimeError as exc:  # a Starlette that refuses anyway
        print(f"[sd-webui-dato] arguments in txt2img/img2img requests are checked at generation time only ({exc})")


class ArgsCheckMiddleware:
    """ASGI middleware: 422 for txt2img/img2img requests whose DaTo arguments are invalid."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not str(scope.get("path", "")).endswith(
                GENERATION_PATHS):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = _problem(body, str(scope.get("path", "")))
        if problem is not None:
            payload = json.dumps({"detail": f"sd-webui-dato: {problem}", "error": "DaToArgumentError"}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[dict], receive=None):
    queue = list(messages)

    async def replay():
        if queue:
            return queue.pop(0)
        if receive is not None:
            return await receive()
        return {"type": "http.disconnect"}

    return replay


def _problem(body: bytes, path: str) -> str | None:
    """The reason this request's DaTo arguments are invalid, or ``None`` (also when it has none)."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None  # not ours to judge; FastAPI answers malformed JSON itself
    scripts = data.get("alwayson_scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return None
    entry = next((v for k, v in scripts.items() if isinstance(k, str) and k.lower() == SCRIPT_KEY), None)
    if entry is None:
        return None
    if not isinstance(entry, dict) or "args" not in entry:
        return None if isinstance(entry, dict) else "expected {\"args\": [...]}"
    try:
        check_args(entry["args"], data, img2img=path.endswith("img2img"))
    except (ArgsError, ScheduleError) as exc:
        return str(exc)
    return None


__all__ = ["ArgsCheckMiddleware", "args_spec", "check_args", "register"]
