"""Nothing grows without bound in a WebUI session that runs for days: entries counted, not RSS.

Many generations of changing sizes, a patch that sees many step counts and batch shapes, many traces, many
finished jobs and calibrations: every module-level or per-patch structure stays at or under its stated bound,
and its size after the second half of the run equals its size after the first (flat).
"""

from __future__ import annotations

import importlib
import threading

import pytest
import torch
import webui_stub.harness  # noqa: F401  (first: puts the stand-in `modules` on sys.path)

import dato
from dato.core import macs, patch, tokens

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_positions_stay_bounded_over_many_generations_of_changing_sizes(host, model):
    tokens._PATCH_POSITIONS.clear()
    sizes = [(64, 64), (128, 64), (64, 192), (192, 128)]
    for w, h in sizes:  # through the host: the accordion's prune patch at each size
        host.generate(alwayson_scripts={"dato": {"args": [True, "prune", 0.4, "balanced"]}}, steps=3, seed=1,
                      width=w, height=h)
    assert 0 < len(tokens._PATCH_POSITIONS) <= tokens.PATCH_POSITIONS_MAX
    sizes_seen = []
    for half in range(2):  # many more grids than the bound, as days of different image sizes would bring
        for g in range(2, 2 + 3 * tokens.PATCH_POSITIONS_MAX):
            tokens._patch_positions(2 * g, 2 * (g + half), torch.device("cpu"))
        sizes_seen.append(len(tokens._PATCH_POSITIONS))
    assert sizes_seen == [tokens.PATCH_POSITIONS_MAX] * 2
    again = tokens._patch_positions(8, 10, torch.device("cpu"))
    assert torch.equal(again, tokens._build_patch_positions(8, 10, torch.device("cpu")))


def test_a_patch_keeps_few_resampled_schedules_and_call_caches(model):
    unet = dato.find_unet(model)
    p = dato.apply_patch(unet, dato.load_schedule("balanced"), clock="manual")
    try:
        context = torch.randn(1, 7, 32)
        sizes = []
        for half in range(2):
            for total in range(2, 2 + 3 * patch.RESAMPLED_MAX):
                dato.set_step(unet, 0, total)
                with torch.no_grad():
                    unet(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), context=context)
            for batch in range(1, 2 + patch.CALL_CACHES_MAX + 8 * half):  # one cache per call shape
                dato.set_step(unet, 1, 20)
                with torch.no_grad():
                    unet(torch.randn(batch, 4, 8, 8), torch.full((batch,), 500.0),
                         context=context.expand(batch, -1, -1))
            sizes.append((len(p._resampled), len(p.calls)))
        assert sizes == [(patch.RESAMPLED_MAX, patch.CALL_CACHES_MAX)] * 2
    finally:
        dato.remove_patch(unet)


def test_macs_traces_per_unet_are_bounded(model):
    macs._TRACES.pop(dato.find_unet(model), None)
    for context_len in range(1, macs.TRACES_PER_UNET_MAX + 5):  # e.g. prompts of many lengths
        macs.trace_unet_cost(model, context_len=context_len, trace_size=8)
    assert len(macs._TRACES[dato.find_unet(model)]) == macs.TRACES_PER_UNET_MAX


class _Job:
    def __init__(self, job_id: str) -> None:
        self.job_id, self.state, self._thread = job_id, "running", None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: None)
        self._thread.start()
        self._thread.join()
        self.state = "done"


def test_finished_jobs_and_calibrations_are_dropped_after_their_bound(host):
    jobs = importlib.import_module("dato_webui.jobs")
    registry = jobs.JobRegistry("search", id_of=lambda job: job.job_id, keep_finished=16)
    sizes = []
    for half in range(2):
        for i in range(100):
            registry.start(lambda i=i, half=half: _Job(f"run-{half}-{i}"))
        sizes.append(len(registry))
    assert sizes == [17, 17]  # 16 finished kept, plus the newest
    assert "run-1-99" in registry and "run-0-99" not in registry
    for module in ("search_jobs", "gates_jobs"):  # the glue's registries have the bound
        assert importlib.import_module(f"dato_webui.{module}").__dict__["JOBS" if module == "search_jobs" else
                                                                          "GATE_JOBS"].keep_finished == 16
    cal = importlib.import_module("dato_webui.calibration_jobs")
    cal.CALIBRATIONS.clear()
    sizes = []
    for half in range(2):
        for i in range(200):
            cal._remember(f"cal-{half}-{i}", object())
        sizes.append(len(cal.CALIBRATIONS))
    assert sizes == [cal.CALIBRATIONS_MAX] * 2
    cal.CALIBRATIONS.clear()
