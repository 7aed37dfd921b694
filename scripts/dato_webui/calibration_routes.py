"""Calibration routes, mounted by ``on_app_started`` (``register(app)``):

* ``POST /dato/v1/calibrate``                  calibrate on the loaded model (one generation per prompt; it
  answers when done): the calibration, its threshold range and a middle threshold
* ``GET  /dato/v1/calibrate/{id}``             one calibration (also after a restart, from its file)
* ``POST /dato/v1/calibrate/{id}/schedule``    the schedule of a threshold and its MACs speed-up; ``name``
  installs it for the accordions

Bad input answers 422 naming the field; errors are ``{"detail": "<message>"}``.
No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a string.
"""

from typing import Any

from . import calibration_jobs as jobs
from .requests import serve

PREFIX = "/dato/v1/calibrate"
TAG = "sd-webui-dato"


def register(app: Any) -> None:
    """Mount the calibration routes on the WebUI's FastAPI ``app``."""
    from fastapi import Request

    @app.post(PREFIX, tags=[TAG])
    async def calibrate_route(request: Request):
        return await serve(request, jobs.calibrate_now)

    @app.get(PREFIX + "/{cal_id}", tags=[TAG])
    async def calibration_route(cal_id: str):
        return await serve(None, lambda: jobs.describe_calibration(cal_id, jobs.get_calibration(cal_id)))

    @app.post(PREFIX + "/{cal_id}/schedule", tags=[TAG])
    async def calibration_schedule_route(cal_id: str, request: Request):
        return await serve(request, jobs.calibration_schedule, cal_id)
