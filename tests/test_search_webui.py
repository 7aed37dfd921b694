"""The Search tab's glue against the stand-in WebUI: evaluations through processing, routes, the tab."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import webui_stub.harness  # noqa: F401  (first: puts the stand-in `modules` on sys.path)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modules import call_queue, script_callbacks, shared

import dato
from dato.schedule import Schedule

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures


@pytest.fixture()
def search_tab(host, tmp_path, monkeypatch):
    import sys

    tab = sys.modules["dato_webui.search_tab"]
    store = sys.modules["dato_webui.store"]
    monkeypatch.setattr(store, "search_dir", lambda: tmp_path / "searches")
    tab.JOBS.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tab
    for job in tab.JOBS.values():
        job.cancel()
        job.wait(60)
    tab.JOBS.clear()
    torch.set_num_threads(threads)


@pytest.fixture()
def client(search_tab):
    app = FastAPI()
    search_tab.register(app)
    return TestClient(app)


def _body(**kw):
    body = {"steps": 4, "width": 64, "height": 64, "cfg_scale": 3.0, "samples": 1, "population": 4,
            "generations": 2, "max_depth": 1, "prompts": ["a red fox"], "seed_presets": False, "run_id": "web"}
    body.update(kw)
    return body


def test_evaluations_run_through_processing_with_the_patch_on_only_during_them(search_tab, host, model):
    backend = search_tab.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    calls = []
    unet = dato.find_unet(model)
    hook = unet.register_forward_pre_hook(lambda m, a: calls.append(dato.get_patch(m) is not None))
    try:
        base = backend.generate(None, [("a red fox", 1)])
        fast = backend.generate(Schedule.uniform(4, 2, 0), [("a red fox", 1)])
    finally:
        hook.remove()
    assert calls[:4] == [False] * 4 and all(calls[4:]) and len(calls) == 8
    assert dato.get_patch(model) is None, "unpatched between evaluations"
    assert base.latents.shape == fast.latents.shape and not torch.equal(base.latents, fast.latents)
    assert base.images is None  # the stand-in host has no VAE: fidelity uses the latents
    assert backend.describe()["steps"] == 4 and backend.macs(Schedule.uniform(4, 2, 0)) < \
        backend.macs(Schedule.full(4, method="none"))


def test_an_evaluation_waits_for_the_webui_queue_lock(search_tab, host):
    backend = search_tab.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    done = threading.Event()
    with call_queue.queue_lock:  # a user generation holds the GPU
        worker = threading.Thread(target=lambda: (backend.generate(None, [("x", 1)]), done.set()))
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()
    worker.join(60)
    assert done.is_set()


def test_start_status_cancel_and_save_through_the_routes(client, search_tab, tmp_path):
    r = client.post("/dato/v1/search", json=_body(generations=8))
    assert r.status_code == 202, r.text
    assert r.json()["run_id"] == "web"
    assert client.post("/dato/v1/search", json=_body(run_id="other")).status_code == 409  # one at a time
    deadline = time.time() + 120
    while client.get("/dato/v1/search/web").json().get("generation", 0) < 1 and time.time() < deadline:
        time.sleep(0.1)
    st = client.get("/dato/v1/search/web").json()
    assert st["state"] == "running" and st["front"] and st["generations"] == 8
    r = client.delete("/dato/v1/search/web")
    assert r.status_code == 200
    search_tab.JOBS["web"].wait(120)
    assert client.get("/dato/v1/search/web").json()["state"] == "cancelled"
    assert client.delete("/dato/v1/search/web").status_code == 409
    assert [run["run_id"] for run in client.get("/dato/v1/search").json()["searches"]] == ["web"]
    # save a front point: it becomes a schedule the accordion lists
    front = client.get("/dato/v1/search/web").json()["front"]
    r = client.post("/dato/v1/search/web/save", json={"id": front[0]["id"], "name": "my-searched"})
    assert r.status_code == 201, r.text
    store = __import__("sys").modules["dato_webui.store"]
    assert "my-searched" in store.names() and store.load("my-searched").provenance["run_id"] == "web"
    assert client.post("/dato/v1/search/web/save", json={"id": front[0]["id"], "name": "my-searched"}
                       ).status_code == 409
    assert client.post("/dato/v1/search/web/save", json={"id": 10_000, "name": "x2"}).status_code == 404


@pytest.mark.parametrize(
    "body, status, message",
    [
        (_body(population=1), 422, "population = 1"),
        (_body(width=100), 422, "multiples of 8"),
        (_body(cfg_scale=0), 422, "cfg_scale"),
        (_body(mode="random"), 422, "mode = 'random'"),
        (_body(populaton=8), 422, "unknown field"),
        (_body(results_dir="/tmp"), 422, "results_dir cannot be set"),
        (_body(prompt_set="coco"), 422, "prompt_set = 'coco'"),
        (_body(prompts=[]), 422, "prompts"),
        (_body(quality="clip"), 422, "quality = 'clip'"),
    ],
)
def test_start_route_validates_input(client, body, status, message):
    r = client.post("/dato/v1/search", json=body)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_routes_answer_unknown_runs_and_bad_bodies_clearly(client):
    assert client.post("/dato/v1/search", content=b"{not json").status_code == 400
    assert client.get("/dato/v1/search/nope").status_code == 404
    assert client.delete("/dato/v1/search/nope").status_code == 404
    assert client.post("/dato/v1/search/nope/save", json={"id": 1, "name": "x"}).status_code == 404
    assert client.post("/dato/v1/search/nope/save", json={"id": 1}).status_code == 422


def test_token_merging_setting_is_refused_before_a_search_starts(client):
    shared.opts.token_merging_ratio = 0.5
    try:
        r = client.post("/dato/v1/search", json=_body())
    finally:
        shared.opts.token_merging_ratio = 0
    assert r.status_code == 409 and "Token merging ratio" in r.json()["detail"]


def test_a_finished_run_survives_a_restart_and_resumes_by_run_id(client, search_tab):
    assert client.post("/dato/v1/search", json=_body(generations=1)).status_code == 202
    assert search_tab.JOBS["web"].wait(120)
    assert search_tab.JOBS["web"].status()["state"] == "done"
    search_tab.JOBS.clear()  # as after a WebUI restart: the status comes from the results file
    st = client.get("/dato/v1/search/web").json()
    assert st["source"] == "results" and st["state"] == "done" and st["front"]


def test_the_tab_builds_and_its_inputs_make_a_valid_request(search_tab):
    tabs = search_tab.on_ui_tabs()
    assert tabs[0][1] == "DaTo Search" and tabs[0][2] == "dato_search"
    body = search_tab.tab_request("Prompts below", "a fox\n\na cat\n", None, "", "Euler", 4, 3.0, 64, 64, 1, 4,
                                  1, 0, "joint", "none", 1, True, "fidelity", "macs", "", "")
    settings, webui = search_tab.parse_request(body)
    assert settings.prompts == ("a fox", "a cat") and settings.mode == "cache" and webui["width"] == 64
    with pytest.raises(search_tab.SearchRequestError, match="not a number"):
        search_tab.tab_request("Prompts below", "a", None, "", "Euler", 4, 3.0, 64, 64, 1, 4, 1, 0, "joint",
                               "prune", 1, True, "fidelity", "macs", "high", "")


def test_the_step_clock_is_registered_once_and_comes_back_after_a_reload(search_tab, host, model):
    def count():
        return sum(c.name.endswith("dato_search_step_clock")
                   for c in script_callbacks.callback_map["callbacks_cfg_denoiser"])

    backend = search_tab.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    script_callbacks.clear_callbacks()  # "Reload UI": callbacks go, the imported module stays
    base = backend.generate(None, [("x", 2)])
    fast = backend.generate(Schedule.uniform(4, 2, 0), [("x", 2)])
    assert count() == 1 and not torch.equal(base.latents, fast.latents)
    search_tab.on_ui_tabs()
    search_tab.register(FastAPI())
    assert count() == 1


def test_the_plot_on_page_load_sends_no_nan_to_the_browser(search_tab):
    """An empty pandas frame serialises with NaN, which breaks JSON.parse and freezes every tab."""
    data, choices, message = search_tab._front_table(None)
    assert data is None and choices == [] and "No search yet" in message
    data, _, _ = search_tab._front_table("no-such-run")
    assert data is None
