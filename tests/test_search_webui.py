"""The Search tab's glue against the stand-in WebUI: evaluations through processing, routes, the tab."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
import webui_stub.harness  # noqa: F401  (first: puts the stand-in `modules` on sys.path)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modules import call_queue, script_callbacks, shared

import dato
from dato.core.schedule import Schedule

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures


@pytest.fixture()
def glue(host, tmp_path, monkeypatch):
    """The search's glue modules on a fresh host (jobs, routes, ui, backend, requests); results go to tmp_path."""
    import sys

    modules = SimpleNamespace(**{name: sys.modules[f"dato_webui.{name}"]
                                 for name in ("search_jobs", "search_routes", "search_ui", "backend", "requests")})
    monkeypatch.setattr(sys.modules["dato_webui.store"], "search_dir", lambda: tmp_path / "searches")
    jobs = modules.search_jobs.JOBS
    jobs.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield modules
    for job in jobs.values():
        job.cancel()
        job.wait(60)
    jobs.clear()
    torch.set_num_threads(threads)


@pytest.fixture()
def client(glue):
    app = FastAPI()
    glue.search_routes.register(app)
    return TestClient(app)


def _body(**kw):
    body = {"steps": 4, "width": 64, "height": 64, "cfg_scale": 3.0, "samples": 1, "population": 4,
            "generations": 2, "max_depth": 1, "prompts": ["a red fox"], "seed_presets": False, "run_id": "web"}
    body.update(kw)
    return body


def test_evaluations_run_through_processing_with_the_patch_on_only_during_them(glue, host, model):
    backend = glue.backend.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
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


def test_an_evaluation_waits_for_the_webui_queue_lock(glue, host):
    backend = glue.backend.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    done = threading.Event()
    with call_queue.queue_lock:  # a user generation holds the GPU
        worker = threading.Thread(target=lambda: (backend.generate(None, [("x", 1)]), done.set()))
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()
    worker.join(60)
    assert done.is_set()


def test_start_status_cancel_and_save_through_the_routes(client, glue, tmp_path):
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
    glue.search_jobs.JOBS["web"].wait(120)
    assert client.get("/dato/v1/search/web").json()["state"] == "cancelled"
    assert client.delete("/dato/v1/search/web").status_code == 409
    assert [run["run_id"] for run in client.get("/dato/v1/search").json()["searches"]] == ["web"]
    results = client.get("/dato/v1/search/web/results").json()
    assert results["status"] == "cancelled" and results["run_id"] == "web" and results["evaluations"]
    assert client.get("/dato/v1/search/nope/results").status_code == 404
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


def test_a_finished_run_survives_a_restart_and_resumes_by_run_id(client, glue):
    assert client.post("/dato/v1/search", json=_body(generations=1)).status_code == 202
    assert glue.search_jobs.JOBS["web"].wait(120)
    assert glue.search_jobs.JOBS["web"].status()["state"] == "done"
    glue.search_jobs.JOBS.clear()  # as after a WebUI restart: the status comes from the results file
    st = client.get("/dato/v1/search/web").json()
    assert st["source"] == "results" and st["state"] == "done" and st["front"]
    tab = glue.search_ui.on_ui_tabs()[0][0]  # the tab opens on the last run's results
    load = next(tab.fns[i].fn for i, d in enumerate(tab.config["dependencies"]) if d["trigger"] == "load")
    _, pick, message = load()
    assert "**web**: done" in message and "min left" not in message and len(pick["choices"]) == len(st["front"])


def test_the_tab_builds_and_its_inputs_make_a_valid_request(glue):
    tabs = glue.search_ui.on_ui_tabs()
    assert tabs[0][1] == "DaTo Search" and tabs[0][2] == "dato_search"
    body = glue.search_ui.tab_request("Prompts below", "a fox\n\na cat\n", None, "", "Euler", 4, 3.0, 64, 64, 1, 4,
                                  1, 0, "joint", "none", 1, True, "fidelity", "macs", "", "")
    settings, webui = glue.search_jobs.parse_request(body)
    assert settings.prompts == ("a fox", "a cat") and settings.mode == "cache" and webui["width"] == 64
    with pytest.raises(glue.requests.RequestError, match="not a number"):
        glue.search_ui.tab_request("Prompts below", "a", None, "", "Euler", 4, 3.0, 64, 64, 1, 4, 1, 0, "joint",
                               "prune", 1, True, "fidelity", "macs", "high", "")


def test_the_step_clock_is_registered_once_and_comes_back_after_a_reload(glue, host, model):
    def count():
        return sum(c.name.endswith("dato_search_step_clock")
                   for c in script_callbacks.callback_map["callbacks_cfg_denoiser"])

    backend = glue.backend.WebUIBackend(4, width=64, height=64, cfg_scale=3.0)
    script_callbacks.clear_callbacks()  # "Reload UI": callbacks go, the imported module stays
    base = backend.generate(None, [("x", 2)])
    fast = backend.generate(Schedule.uniform(4, 2, 0), [("x", 2)])
    assert count() == 1 and not torch.equal(base.latents, fast.latents)
    glue.search_ui.on_ui_tabs()
    glue.search_routes.register(FastAPI())
    assert count() == 1


def test_the_plot_on_page_load_sends_no_nan_to_the_browser(glue):
    """An empty pandas frame serialises with NaN, which breaks JSON.parse and freezes every tab."""
    data, choices, message = glue.search_ui._front_table(None)
    assert data is None and choices == [] and "No search yet" in message
    data, _, _ = glue.search_ui._front_table("no-such-run")
    assert data is None


def _tab_event(tab, elem_id: str, trigger: str):
    """(function, outputs) of the event ``trigger`` on the tab's component ``elem_id``, as Gradio will run it."""
    target = next(b._id for b in tab.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    index = next(i for i, d in enumerate(tab.config["dependencies"])
                 if d["targets"] == [target] and d["trigger"] == trigger)
    return tab.fns[index].fn, tab.config["dependencies"][index]["outputs"]


def test_save_as_schedule_refreshes_the_accordions_schedule_dropdowns_at_once(client, glue, host):
    import sys

    ui = sys.modules["dato_webui.ui"]
    page = {d.elem_id: d for d in ui.schedule_dropdowns()}
    # the page's dropdowns (the first build), not the copies ui() makes again for the API's defaults
    assert list(page) == ["script_txt2img_dato_schedule", "script_txt2img_dato_hr_schedule",
                          "script_img2img_dato_schedule", "script_img2img_dato_hr_schedule"]
    assert all(d.is_rendered for d in page.values())
    assert client.post("/dato/v1/search", json=_body(generations=1)).status_code == 202
    assert glue.search_jobs.JOBS["web"].wait(120)
    tab = glue.search_ui.on_ui_tabs()[0][0]
    load = next(tab.fns[i].fn for i, d in enumerate(tab.config["dependencies"]) if d["trigger"] == "load")
    data, pick, message = load()  # page load: the tab finds the run and offers its front
    assert "**web**: done" in message and pick["choices"] and pick["value"] == pick["choices"][0]
    assert set(data["kind"]) >= {"baseline", "front"} and data[["cost", "quality"]].notna().all().all()
    plot = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "dato_search_plot")
    (x_lo, x_hi), (y_lo, y_hi) = plot.x_lim, plot.y_lim  # a margin: the baseline is not cut at the corner
    assert x_lo <= 0 and x_hi > data["cost"].max() and y_lo < data["quality"].min() and y_hi > data["quality"].max()
    assert plot.postprocess(data)["type"] == "altair"

    save, outputs = _tab_event(tab, "dato_search_save", "click")
    assert outputs[1:] == [d._id for d in page.values()], "the save event updates the four dropdowns"
    message, *updates = save(pick["value"], "  from-the-tab ")
    assert "Saved **from-the-tab**" in message and len(updates) == 4
    assert all("from-the-tab" in u["choices"] for u in updates)
    assert all("value" not in u for u in updates), "the user's selection is left alone"
    message, *updates = save(pick["value"], "from-the-tab")  # a taken name: refused, dropdowns untouched
    assert "Not saved" in message and "already exists" in message and all(set(u) == {"__type__"} for u in updates)
    message, *_ = save(None, "other")
    assert message == "Pick a front point first."


def test_picking_a_front_point_shows_its_steps_and_refresh_keeps_the_pick(client, glue, host):
    assert client.post("/dato/v1/search", json=_body(generations=1)).status_code == 202
    assert glue.search_jobs.JOBS["web"].wait(120)
    tab = glue.search_ui.on_ui_tabs()[0][0]
    refresh, _ = _tab_event(tab, "dato_search_refresh", "click")
    _, pick, message = refresh(None)
    assert len(pick["choices"]) >= 2 and "dato-search-running" not in message  # finished: the page stops polling
    second = pick["choices"][1]
    assert refresh(second)[1]["value"] == second, "a refresh while the search runs keeps the user's pick"
    show, _ = _tab_event(tab, "dato_search_pick", "change")
    html = show(second)
    point = next(p for p in glue.search_jobs.status("web")["front"] if p["id"] == glue.search_ui._pick_id(second))
    assert f"<code>{point['preview']}</code>" in html and 'class="dato-preview" data-dato=' in html
    assert show(None) == "" and show("#99999  cost 0  quality 0  F") == ""


def test_the_status_carries_the_polling_mark_only_while_running(client, glue):
    assert client.post("/dato/v1/search", json=_body(generations=8)).status_code == 202
    _, _, message = glue.search_ui._front_table("web")
    assert glue.search_ui.RUNNING_MARK in message
    glue.search_jobs.cancel("web")
    glue.search_jobs.JOBS["web"].wait(120)
    assert glue.search_ui.RUNNING_MARK not in glue.search_ui._front_table("web")[2]
