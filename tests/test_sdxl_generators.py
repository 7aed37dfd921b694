"""Search, calibration and gradient gates on an SDXL-topology UNet: the backend supplies the size vector ``y``."""

from __future__ import annotations

import pytest
import torch

import dato
from dato.core.schedule import Schedule
from dato.evaluation.backends import builtin_backend
from dato.generators.calibrate import calibrate, schedule_from_calibration
from dato.generators.gates import GateConfig, train_gates
from dato.generators.search import ScheduleSearch, SearchSettings

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [("a red fox", 1), ("a lighthouse", 2)]


@pytest.fixture(scope="module")
def backend():
    b = builtin_backend(latent_size=8, steps=4, cfg_scale=3.0, model="tiny-sdxl", batch_size=2)
    yield b
    dato.remove_patch(b.unet)


def test_the_backend_passes_the_size_vector(backend):
    unet = backend.unet
    assert backend.size_vector is not None and backend.size_vector.shape == (1, 16)
    base = backend.generate(None, PAIRS)
    assert torch.isfinite(base.latents).all()
    x, t, c = torch.randn(2, 4, 8, 8), torch.full((2,), 500.0), torch.randn(2, 7, 32)
    with torch.no_grad():  # the size vector is what a call without y gets; an explicit y wins
        assert torch.equal(unet(x, t, context=c), unet(x, t, context=c, y=backend.size_vector.expand(2, -1)))
        assert not torch.equal(unet(x, t, context=c), unet(x, t, context=c, y=torch.zeros(2, 16)))
    assert torch.equal(backend.generate(Schedule.full(4, 0.0, "none"), PAIRS).latents, base.latents)
    cached = backend.generate(Schedule.uniform(4, 2, 0, 0.5, "prune"), PAIRS)
    assert not torch.equal(cached.latents, base.latents) and dato.get_patch(unet) is None
    assert backend.macs(Schedule.uniform(4, 2, 0, 0.0, "none")) < backend.macs(Schedule.full(4))


def test_a_tiny_calibration_runs_on_sdxl(backend):
    cal = calibrate(backend.unet, lambda on_step: backend.sample_latents(PAIRS, on_step=on_step), steps=4,
                    lookahead=2)
    assert cal.max_depth == 8
    schedule = schedule_from_calibration(cal, 10.0)
    assert schedule.steps == 4 and schedule.max_cache_depth <= 8


def test_a_tiny_gate_training_runs_on_sdxl(backend):
    result = train_gates(backend, ["a cat", "a dog"], GateConfig(target_speedup=1.5, iterations=1, batch_size=1,
                                                                 pool=2))
    assert len(result.history) == 1
    assert result.schedule(1.5).max_cache_depth <= 8


def test_a_tiny_search_runs_on_sdxl(backend, tmp_path):
    settings = SearchSettings(steps=4, mode="joint", max_depth=2, population=4, generations=1, samples=1, seed=3,
                              prompts=("a red fox", "a lighthouse"), seed_presets=False, results_dir=str(tmp_path),
                              run_id="xl")
    results = ScheduleSearch(settings, backend).run()
    assert results["front"] and all(e["cost"] > 0 for e in results["evaluations"])
