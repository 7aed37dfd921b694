"""Gate-training routes, mounted by ``on_app_started`` (``register(app)``):

* ``POST   /dato/v1/gates``                  start training in the background (one at a time); 202 with the id
* ``GET    /dato/v1/gates``                  every training of this session and every result file
* ``GET    /dato/v1/gates/{id}``             status: iteration i of N, loss terms, ETA, or the error
* ``DELETE /dato/v1/gates/{id}``             cancel after the current iteration
* ``POST   /dato/v1/gates/{id}/schedule``    the trained gates as a schedule at a MACs speed-up; ``name``
  installs it for the accordions

Bad input answers 422 naming the field; errors are ``{"detail": "<message>"}``.
No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a string.
"""

from typing import Any

from . import gates_jobs as jobs
from .requests import serve

PREFIX = "/dato/v1/gates"
TAG = "sd-webui-dato"


def _start(body: Any) -> dict[str, Any]:
    job = jobs.start_gates(body)
    return {"id": job.gate_id, "status": f"{PREFIX}/{job.gate_id}", "state": job.state}


def register(app: Any) -> None:
    """Mount the gate routes on the WebUI's FastAPI ``app``."""
    from fastapi import Request

    @app.post(PREFIX, tags=[TAG], status_code=202)
    async def gates_start_route(request: Request):
        return await serve(request, _start, status=202)

    @app.get(PREFIX, tags=[TAG])
    async def gates_list_route():
        return await serve(None, lambda: {"gates": jobs.list_gates()})

    @app.get(PREFIX + "/{gate_id}", tags=[TAG])
    async def gates_status_route(gate_id: str):
        return await serve(None, jobs.gate_status, gate_id)

    @app.delete(PREFIX + "/{gate_id}", tags=[TAG])
    async def gates_cancel_route(gate_id: str):
        return await serve(None, jobs.cancel_gates, gate_id)

    @app.post(PREFIX + "/{gate_id}/schedule", tags=[TAG])
    async def gates_schedule_route(gate_id: str, request: Request):
        return await serve(request, jobs.gates_schedule, gate_id)
