"""Background jobs and the user's generations share the GPU, not ``shared.state``.

On the stand-in host: a search's images run in a job thread, a user's txt2img waits for ``queue_lock``,
the user presses Interrupt: the user's generation stops, the search goes on (its interrupted image is made
again), and no search image leaves its job name, step or flags in ``shared.state``.
"""

from __future__ import annotations

import sys
import threading

import pytest
import webui_stub.harness  # noqa: F401  (first: puts the stand-in `modules` on sys.path)
from modules import call_queue, script_callbacks, shared

import dato

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def test_interrupt_on_the_users_job_stops_it_and_the_search_goes_on(host, model):
    backend = sys.modules["dato_webui.backend"]
    search_backend = backend.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    seen = {"search": [], "user": [], "state_jobs": set()}
    user_started, pressed = threading.Event(), threading.Event()
    user_result = {}

    def user_generation():  # the API's txt2img: waits for queue_lock, then runs a job of its own
        user_started.set()
        with call_queue.queue_lock:
            user_result["processed"] = host.generate(alwayson_scripts={"dato": {"args": [True, "prune", 0.4]}},
                                                     steps=6, seed=9, prompt="the user's")

    def watch(params):
        p = params.denoiser.p
        if backend._ACTIVE["p"] is p:  # a search image
            seen["search"].append(params.denoiser.step)
            seen["state_jobs"].add(shared.state.job)
            if params.denoiser.step == 1 and not pressed.is_set():
                threading.Thread(target=user_generation, daemon=True).start()
                user_started.wait(10)
                pressed.set()
                shared.state.interrupt()  # the user's Interrupt, meant for their queued generation
        elif getattr(p, "prompt", "") == "the user's":
            seen["user"].append(params.denoiser.step)

    script_callbacks.on_cfg_denoiser(watch, name="test_watch")
    before = {name: getattr(shared.state, name) for name in backend.STATE_FIELDS}
    try:
        samples = search_backend.generate(None, [("a", 1), ("b", 2)])  # the search's evaluation, in this thread
        for _ in range(100):
            if "processed" in user_result:
                break
            threading.Event().wait(0.1)
    finally:
        script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
    assert pressed.is_set()
    assert len(samples.pairs) == 2 and samples.latents.shape[0] == 2  # the search went on: both images made
    assert seen["search"][:2] == [0, 1] and seen["search"][2:].count(0) == 2  # image 1 made again, then image 2
    assert "processed" in user_result and len(seen["user"]) < 6  # the user's generation stopped early
    assert seen["state_jobs"] <= {before["job"]}  # no search image set shared.state.job
    assert dato.get_patch(model) is None
    again = host.generate(alwayson_scripts={"dato": {"args": [True, "prune", 0.4]}}, steps=6, seed=9)
    assert len(again.images) == 1  # the hand-on was used up: the next generation runs whole


def test_a_search_image_leaves_shared_state_as_it_found_it(host):
    backend = sys.modules["dato_webui.backend"]
    shared.state.begin(job="the user's idea of what runs")
    shared.state.sampling_step, shared.state.job_count = 3, 7
    before = {name: getattr(shared.state, name) for name in backend.STATE_FIELDS}
    try:
        backend.WebUIBackend(3, width=64, height=64).generate(None, [("a", 1)])
        after = {name: getattr(shared.state, name) for name in backend.STATE_FIELDS}
    finally:
        shared.state.end()
    assert after == before


def test_the_calibrations_render_still_reports_an_interrupt(host):
    backend = sys.modules["dato_webui.backend"]

    def press(params):
        shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(press, name="test_press")
    try:
        with call_queue.queue_lock, pytest.raises(RuntimeError, match="interrupted"):
            backend.WebUIBackend(3, width=64, height=64).render("a", 1, "dato_calibrate",
                                                                 RuntimeError("interrupted"))
    finally:
        script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
    assert not shared.state.interrupted
