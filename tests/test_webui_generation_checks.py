"""WebUI-side bugs of issue 12, on the stand-in host: each is refused, reported or labelled as it should be.

* a cache depth deeper than the loaded model's UNet is refused with 422 before the job is queued;
* a stored schedule that became invalid fails the generation's DaTo part with a clear message, never a 500;
* an X/Y/Z cell that runs DaTo disabled carries no DaTo keys of an earlier cell;
* the DeepCache extension owning the UNet is reported in the console and the infotext;
* a search whose results file says ``running`` but that no job runs is listed as ``interrupted``;
* the console names batches as batches ("pass" is the first or hires pass).
"""

from __future__ import annotations

import json
import sys

import pytest
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from modules import script_callbacks, shared

import dato

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures

ON = {"dato": {"args": [True, "prune", 0.4, "balanced"]}}


@pytest.fixture()
def client(host, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["dato_webui.store"], "search_dir", lambda: tmp_path / "searches")
    app = FastAPI()
    queued = []

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        queued.append(await request.body())
        return {"ok": True}

    script_callbacks.app_started_callback(None, app)
    c = TestClient(app, raise_server_exceptions=False)
    c.queued = queued
    c.user_dir = tmp_path / "user"
    c.results = tmp_path
    return c


def _uniform(depth, hr=False):
    named = {"enabled": True, "method": "none", "schedule": "uniform", "interval": 3, "depth": depth}
    if hr:
        named = {"enabled": True, "hr_mode": "own", "hr_schedule": "uniform", "hr_interval": 3, "hr_depth": depth}
    return {"dato": {"args": [named]}}


@pytest.mark.parametrize("args, fragment", [
    (_uniform(20), "cache depth 20 is outside 0..11 for this SD1.x/2.x (12-block) UNet: depth = 20 (the uniform "
                   "rule) is refused, not converted"),
    (_uniform(12), "depth = 12 (the uniform rule) is refused"),
    (_uniform(30, hr=True), "hr_depth = 30 (the uniform rule) is refused"),
])
def test_a_depth_deeper_than_the_loaded_model_is_refused_before_queueing(client, args, fragment):
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "alwayson_scripts": args})
    assert answer.status_code == 422 and fragment in answer.json()["detail"], answer.text
    assert client.queued == []
    assert client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": _uniform(11)}).status_code == 200


def test_a_named_schedule_deeper_than_the_model_is_refused_and_no_model_means_sd1(client, monkeypatch):
    client.user_dir.mkdir(parents=True)
    deep = dato.Schedule.from_dict({"name": "deep", "method": "none", "cache": ["full", 20, 20]})
    (client.user_dir / "deep.json").write_text(deep.to_json())
    answer = client.post("/dato/v1/args", json={"args": [True, "schedule", 0.0, "deep"]})
    assert answer.status_code == 422, answer.text  # the patch's own rule and text (dato.core.layout)
    assert "cache depth 20 is outside 0..11" in answer.json()["detail"] and "schedule 'deep' is refused" in \
        answer.json()["detail"]
    monkeypatch.setattr(shared, "sd_model", None)  # no model loaded: DEFAULT_LAYOUT (SD1.x, 0..11) decides
    assert client.post("/dato/v1/args", json={"args": _uniform(11)["dato"]["args"]}).status_code == 200
    assert client.post("/dato/v1/args", json={"args": _uniform(12)["dato"]["args"]}).status_code == 422


def test_a_stored_schedule_that_became_invalid_fails_clearly_at_generation_time(client, host, model):
    client.user_dir.mkdir(parents=True)
    bad = {"format_version": 1, "name": "zero", "method": "none", "cache": ["full", 0, 0, "full"],
           "ratio": [0.0] * 4, "rule": {"kind": "uniform", "interval": 0, "depth": 0, "ratio": 0.0}}
    (client.user_dir / "zero.json").write_text(json.dumps(bad))
    args = {"dato": {"args": [True, "schedule", 0.0, "zero"]}}
    answer = client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": args})
    assert answer.status_code == 422
    assert "schedule file zero.json (user) is invalid" in answer.json()["detail"] and "rule.interval = 0" in \
        answer.json()["detail"]
    result = host.generate(alwayson_scripts=args, steps=4, seed=1)  # the UI path: no middleware in front
    assert "schedule file zero.json (user) is invalid" in result.comments
    assert 'DaTo off: "not applied: schedule file zero.json (user) is invalid' in result.infotexts[0]
    assert "DaTo: True" not in result.infotexts[0] and dato.get_patch(model) is None


def test_a_disabled_xyz_cell_carries_no_keys_of_the_cell_before(host, model):
    shared_params: dict = {"Script": "X/Y/Z plot"}  # the grid hands every cell the same (non-empty) dict
    on = host.generate(alwayson_scripts=ON, steps=4, seed=2, extra_generation_params=shared_params)
    assert "DaTo: True" in on.infotexts[0] and "DaTo schedule" in on.infotexts[0]
    off = host.generate(alwayson_scripts={"dato": {"args": [False]}}, steps=4, seed=2,
                        extra_generation_params=shared_params)
    assert "DaTo" not in off.infotexts[0]
    assert not [k for k in shared_params if k.startswith("DaTo")]


def test_the_deepcache_extension_owning_the_unet_is_reported_not_claimed(host, model, capsys):
    unet = dato.find_unet(model)
    # what sd-webui-deepcache-standalone's process_batch does: an instance forward and a flag on the UNet
    unet.forward = type(unet).forward.__get__(unet)
    unet._deepcache_hooked = True
    try:
        result = host.generate(alwayson_scripts=ON, steps=4, seed=3)
    finally:
        del unet.forward
        unet._deepcache_hooked = False
    out = capsys.readouterr().out
    assert "the DeepCache extension owns the UNet for the first pass, so DaTo is not applied" in out
    assert "DaTo off: the DeepCache extension" in result.infotexts[0]
    assert "UNet calls" not in out  # no stats: our schedule did not run
    assert dato.get_patch(model) is None
    clean = host.generate(alwayson_scripts=ON, steps=4, seed=3)
    assert "DaTo off" not in clean.infotexts[0]


def test_a_search_whose_process_died_is_listed_as_interrupted(client):
    run = client.results / "searches" / "dead-run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"format": 1, "run_id": "dead-run", "status": "running",
                                                  "evaluations": [], "front_points": []}))
    listing = client.get("/dato/v1/search").json()["searches"]
    assert [(r["run_id"], r["state"]) for r in listing] == [("dead-run", "interrupted")]
    status = client.get("/dato/v1/search/dead-run").json()
    assert status["state"] == "interrupted" and status["running"] is False


def test_the_console_names_batches_as_batches_and_passes_as_passes(host, model, capsys):
    host.generate(alwayson_scripts=ON, steps=4, seed=4, n_iter=2)
    out = capsys.readouterr().out
    assert "first pass, batch 1:" in out and "first pass, batch 2:" in out
    assert "pass 2" not in out
    host.generate(alwayson_scripts=ON, steps=4, seed=4)
    assert "[sd-webui-dato] first pass: " in capsys.readouterr().out
    assert harness.runtime().run is None
