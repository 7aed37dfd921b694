"""The search's routes, mounted by ``on_app_started`` (``register(app)``):

* ``POST   /dato/v1/search``                  start (or resume a run id's checkpoint); 202 with the run id
* ``GET    /dato/v1/search``                  every run of this session and every results file
* ``GET    /dato/v1/search/{run_id}``         status with the Pareto front
* ``DELETE /dato/v1/search/{run_id}``         cancel
* ``GET    /dato/v1/search/{run_id}/results`` the whole results file (every evaluation, settings, model)
* ``POST   /dato/v1/search/{run_id}/save``    save a front point as a schedule (``{"id": ..., "name": ...}``)

Errors are ``{"detail": "<message>"}`` (400 bad JSON, 404, 409, 422).
No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a string.
"""

from typing import Any

from . import search_jobs
from .requests import RequestError, serve

PREFIX = "/dato/v1/search"
TAG = "sd-webui-dato"


def _start(body: Any) -> dict[str, Any]:
    job = search_jobs.start(body)
    return {"run_id": job.run_id, "status": f"{PREFIX}/{job.run_id}", "state": job.progress.state}


def _save(run_id: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) - {"id", "name"} or "id" not in body or "name" not in body:
        raise RequestError("expected {\"id\": <evaluation id>, \"name\": <new schedule name>}")
    return search_jobs.save_point(run_id, body["id"], body["name"])


def _list() -> dict[str, Any]:
    invalid: list[dict[str, Any]] = []
    return {"searches": search_jobs.list_runs(invalid), "invalid": invalid}


def register(app: Any) -> None:
    """Mount the search routes on the WebUI's FastAPI ``app``."""
    from fastapi import Request

    @app.post(PREFIX, tags=[TAG], status_code=202)
    async def start_route(request: Request):
        return await serve(request, _start, status=202)

    @app.get(PREFIX, tags=[TAG])
    async def list_route():
        return await serve(None, _list)

    @app.get(PREFIX + "/{run_id}", tags=[TAG])
    async def status_route(run_id: str):
        return await serve(None, search_jobs.status, run_id)

    @app.get(PREFIX + "/{run_id}/results", tags=[TAG])
    async def results_route(run_id: str):
        return await serve(None, search_jobs.results_of, run_id)

    @app.delete(PREFIX + "/{run_id}", tags=[TAG])
    async def cancel_route(run_id: str):
        return await serve(None, search_jobs.cancel, run_id)

    @app.post(PREFIX + "/{run_id}/save", tags=[TAG], status_code=201)
    async def save_route(run_id: str, request: Request):
        return await serve(request, _save, run_id, status=201)
