"""The extension's REST routes and the txt2img argument check, mounted by on_app_started on a real FastAPI app."""

from __future__ import annotations

import json

import pytest
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from modules import script_callbacks, shared

import dato

SCHEDULE = {
    "format_version": 1, "name": "my-fast", "steps": 10, "method": "none",
    "cache": ["full", 0, 0, "full", 0, 0, "full", 0, 0, 0], "ratio": [0.0] * 10,
}


@pytest.fixture()
def client(tmp_path):
    harness.fresh_host(harness.make_model(), build_ui=False, user_dir=tmp_path / "user")
    app = FastAPI()
    received = []

    @app.post("/sdapi/v1/txt2img")  # stands in for the WebUI's route: echoes what reached it
    async def txt2img(request: Request):
        body = await request.body()
        received.append(body)
        return {"received": json.loads(body)}

    script_callbacks.app_started_callback(None, app)
    with TestClient(app) as c:
        c.received = received
        c.user_dir = tmp_path / "user"
        yield c
    script_callbacks.script_unloaded_callback()


def test_list_shows_presets_with_hash_and_preview(client):
    answer = client.get("/dato/v1/schedules")
    assert answer.status_code == 200
    by_name = {s["name"]: s for s in answer.json()["schedules"]}
    assert by_name["balanced"]["source"] == "preset" and not by_name["balanced"]["deletable"]
    assert by_name["balanced"]["hash"] == dato.load_schedule("balanced").content_hash()
    assert answer.json()["user_dir"] == str(client.user_dir)


def test_get_one_resampled(client):
    answer = client.get("/dato/v1/schedules/balanced", params={"steps": 12})
    assert answer.status_code == 200
    body = answer.json()
    assert body["schedule"]["name"] == "balanced" and body["resampled"]["preview"] == "F0000F0000F0"
    assert client.get("/dato/v1/schedules/balanced", params={"steps": 0}).status_code == 422


def test_unknown_schedule_is_404_with_a_message(client):
    answer = client.get("/dato/v1/schedules/nope")
    assert answer.status_code == 404 and answer.json()["detail"] == "no schedule named 'nope'"


def test_upload_writes_atomically_lists_it_and_refuses_the_name_twice(client):
    answer = client.post("/dato/v1/schedules", json=SCHEDULE)
    assert answer.status_code == 201, answer.text
    assert answer.json()["source"] == "user" and answer.json()["preview"] == "F00F00F000"
    files = sorted(p.name for p in client.user_dir.iterdir())
    assert files == ["my-fast.json"]  # no temp file left behind
    assert dato.Schedule.load(client.user_dir / "my-fast.json").cache[1] == 0
    assert "my-fast" in {s["name"] for s in client.get("/dato/v1/schedules").json()["schedules"]}
    again = client.post("/dato/v1/schedules", json={**SCHEDULE, "description": "other"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]


@pytest.mark.parametrize("name, fragment", [("balanced", "a shipped preset"), ("uniform", "reserved"),
                                            ("None", "reserved")])
def test_upload_refuses_preset_and_reserved_names(client, name, fragment):
    answer = client.post("/dato/v1/schedules", json={**SCHEDULE, "name": name})
    assert answer.status_code == 409 and fragment in answer.json()["detail"]


@pytest.mark.parametrize("change, status, fragment", [
    ({"cache": ["full", 0], "ratio": [0.0]}, 422, "ratio has 1 entries but cache has 2"),
    ({"cache": [0, "full"]}, 422, "the first step must be 'full'"),
    ({"name": "../escape"}, 422, "schedule name '../escape'"),
    ({"method": "prune", "ratio": [0.9] * 10}, 422, "ratio[0] = 0.9"),
    ({"colour": "red"}, 422, "unknown field(s) 'colour'"),
    ({"cache": "full"}, 422, "cache = 'full', expected a list"),
])
def test_invalid_uploads_are_422_naming_the_field(client, change, status, fragment):
    body = {**SCHEDULE, **change}
    if "cache" in change:
        body.pop("steps")
        if "ratio" not in change:
            body["ratio"] = [0.0] * (len(change["cache"]) if isinstance(change["cache"], list) else 1)
    answer = client.post("/dato/v1/schedules", json=body)
    assert answer.status_code == status and fragment in answer.json()["detail"], answer.text
    assert not client.user_dir.exists() or not any(client.user_dir.iterdir())


def test_upload_of_broken_json_is_400(client):
    answer = client.post("/dato/v1/schedules", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["detail"]


def test_delete_user_schedule_but_never_a_preset(client):
    client.post("/dato/v1/schedules", json=SCHEDULE)
    assert client.delete("/dato/v1/schedules/my-fast").json() == {"deleted": "my-fast", "source": "user"}
    assert not (client.user_dir / "my-fast.json").exists()
    assert client.delete("/dato/v1/schedules/my-fast").status_code == 404
    preset = client.delete("/dato/v1/schedules/balanced")
    assert preset.status_code == 403 and "cannot be deleted" in preset.json()["detail"]
    assert dato.load_schedule("balanced")


def test_argument_spec_and_validation(client):
    spec = client.get("/dato/v1/args").json()
    assert [a["name"] for a in spec["args"]][:4] == ["enabled", "method", "ratio", "schedule"]
    ok = client.post("/dato/v1/args", json={"args": [{"method": "merge", "schedule": "uniform", "interval": 3}]})
    assert ok.status_code == 200 and ok.json()["named"]["interval"] == 3 and ok.json()["args"][0] is True
    bad = client.post("/dato/v1/args", json={"args": [True, "prune", 0.74, "missing"]})
    assert bad.status_code == 422 and "unknown schedule 'missing'" in bad.json()["detail"]
    assert client.post("/dato/v1/args", json={"arg": []}).status_code == 422


def test_txt2img_with_bad_dato_args_is_refused_before_the_job(client):
    bad = {"prompt": "x", "alwayson_scripts": {"DaTo": {"args": [True, "prune", 0.75]}}}
    answer = client.post("/sdapi/v1/txt2img", json=bad)
    assert answer.status_code == 422 and "too large for 'prune'" in answer.json()["detail"]
    assert client.received == []
    unknown = {"alwayson_scripts": {"dato": {"args": [{"ratoi": 0.3}]}}}
    assert "unknown argument(s) 'ratoi'" in client.post("/sdapi/v1/txt2img", json=unknown).json()["detail"]


def test_txt2img_with_good_or_no_dato_args_passes_through_untouched(client):
    good = {"prompt": "x", "steps": 3, "alwayson_scripts": {"dato": {"args": [True, "merge", 0.5, "fast"]},
                                                            "other": {"args": [1, 2]}}}
    assert client.post("/sdapi/v1/txt2img", json=good).json() == {"received": good}
    plain = {"prompt": "y"}
    assert client.post("/sdapi/v1/txt2img", json=plain).json() == {"received": plain}
    assert len(client.received) == 2


def test_other_routes_are_not_inspected(client):
    assert client.get("/dato/v1/args").status_code == 200
    assert client.get("/sdapi/v1/txt2img").status_code == 405


def test_routes_do_no_gpu_work_so_they_never_wait_for_the_queue_lock(client):
    from modules.call_queue import queue_lock

    with queue_lock:  # a generation is running
        assert client.get("/dato/v1/schedules").status_code == 200
        assert client.post("/dato/v1/schedules", json=SCHEDULE).status_code == 201


def test_upload_folder_comes_from_settings(client, tmp_path):
    shared.opts.dato_schedule_dir = str(tmp_path / "elsewhere")
    assert client.post("/dato/v1/schedules", json=SCHEDULE).status_code == 201
    assert (tmp_path / "elsewhere" / "my-fast.json").is_file()
