"""Every route input checked: a table of bad inputs through the stand-in host, with status codes and messages.

No answer is a 500, no answer quotes more than a short prefix of a bad value, and a stored file that became
invalid is named and skipped in lists.
"""

from __future__ import annotations

import json
import sys

import pytest
import webui_stub.harness  # noqa: F401  (first: puts the stand-in `modules` on sys.path)
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from modules import script_callbacks

from dato.core.schedule import MAX_STEPS

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures

GOOD = {"format_version": 1, "name": "mine", "steps": 10, "method": "none",
        "cache": ["full", 0, 0, 0, 0, "full", 0, 0, 0, 0], "ratio": [0.0] * 10}
HUGE = "x" * 900_000  # under the 1 MB body limit, so it reaches the checks
SHORT = 2_000  # bytes: every error answer is shorter than this


def _rule(name="mine", **kw):
    return {**GOOD, "name": name, "rule": {"kind": "uniform", "interval": 5, "depth": 0, "ratio": 0.0, **kw}}


@pytest.fixture()
def client(host, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["dato_webui.store"], "search_dir", lambda: tmp_path / "searches")
    app = FastAPI()

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        return {"ok": True}

    script_callbacks.app_started_callback(None, app)
    c = TestClient(app, raise_server_exceptions=False)
    c.user_dir = tmp_path / "user"
    c.results = tmp_path
    return c


def _send(client, method, path, body=None, raw=None, params=None):
    if raw is not None:
        return client.request(method, path, content=raw, params=params)
    return client.request(method, path, json=body, params=params)


TABLE = [
    # (method, path, body, raw bytes, query, status, fragment)
    ("GET", "/dato/v1/schedules/balanced", None, None, {"steps": 0}, 422, f"expected an integer 1..{MAX_STEPS}"),
    ("GET", "/dato/v1/schedules/balanced", None, None, {"steps": MAX_STEPS + 1}, 422, f"1..{MAX_STEPS}"),
    ("GET", "/dato/v1/schedules/balanced", None, None, {"steps": "abc"}, 422, "steps = 'abc'"),
    ("GET", "/dato/v1/schedules/balanced", None, None, {"steps": "9" * 5000}, 422, "(5000 characters)"),
    ("GET", "/dato/v1/schedules/" + "n" * 3000, None, None, None, 404, "(3000 characters)"),
    ("POST", "/dato/v1/schedules", {**GOOD, "name": HUGE}, None, None, 422, "(900000 characters)"),
    ("POST", "/dato/v1/schedules", {**GOOD, HUGE: 1}, None, None, 422, "unknown field"),
    ("POST", "/dato/v1/schedules", {**GOOD, "description": 5}, None, None, 422, "description = 5"),
    ("POST", "/dato/v1/schedules", {**GOOD, "provenance": HUGE}, None, None, 422, "provenance ="),
    ("POST", "/dato/v1/schedules", {**GOOD, "method": HUGE}, None, None, 422, "method ="),
    ("POST", "/dato/v1/schedules", {**GOOD, "ratio": [10 ** 400] * 10}, None, None, 422, "uploaded schedule"),
    ("POST", "/dato/v1/schedules", {**GOOD, "ratio": [5.0] * 10}, None, None, 422, "ratio[0] = 5.0"),
    ("POST", "/dato/v1/schedules", {**GOOD, "cache": ["full"] + [0] * 150_000, "ratio": None}, None, None, 422,
     "ratio ="),
    ("POST", "/dato/v1/schedules", {k: v for k, v in {**GOOD, "cache": ["full"] + [0] * 150_000}.items()
                                    if k not in ("ratio", "steps")}, None, None, 422, f"at most {MAX_STEPS}"),
    ("POST", "/dato/v1/schedules", _rule(interval=0), None, None, 422, f"rule.interval = 0, expected an integer "
                                                                        f"1..{MAX_STEPS}"),
    ("POST", "/dato/v1/schedules", _rule(interval="abc"), None, None, 422, "rule.interval = 'abc'"),
    ("POST", "/dato/v1/schedules", _rule(ratio=5.0), None, None, 422, "rule.ratio = 5.0"),
    ("POST", "/dato/v1/schedules", _rule(interval=3), None, None, 422, "contradicts cache[3]"),
    ("POST", "/dato/v1/schedules", _rule(kind="every"), None, None, 422, "rule.kind = 'every'"),
    ("POST", "/dato/v1/schedules", {**GOOD, "rule": HUGE}, None, None, 422, "rule ="),
    ("POST", "/dato/v1/schedules", None, b"[" * 100_000 + b"]" * 100_000, None, 400, "nested too deep"),
    ("POST", "/dato/v1/schedules", None, b"\xff\xfe{", None, 400, "not valid JSON"),
    ("POST", "/dato/v1/schedules", None, b" " * (2 << 20), None, 413, "too large"),
    ("POST", "/dato/v1/args", {"args": [True, "prune", 0.4, HUGE]}, None, None, 422, "unknown schedule"),
    ("POST", "/dato/v1/args", {"args": [True, "prune", 10 ** 400]}, None, None, 422, "expected a number"),
    ("POST", "/dato/v1/args", {"args": [True, HUGE]}, None, None, 422, "(900000 characters)"),
    ("POST", "/sdapi/v1/txt2img", {"alwayson_scripts": {"dato": {"args": [True, "prune", 0.4, HUGE]}}}, None, None,
     422, "unknown schedule"),
    ("POST", "/dato/v1/calibrate", {"prompts": HUGE}, None, None, 422, "prompts ="),
    ("POST", "/dato/v1/calibrate", {"prompts": ["a"], "steps": 10 ** 400}, None, None, 422, "steps ="),
    ("POST", "/dato/v1/calibrate", {"prompts": ["a"], "sampler_name": HUGE}, None, None, 422, "sampler_name ="),
    ("POST", "/dato/v1/calibrate", None, b"{" + b" " * (2 << 20) + b"}", None, 413, "too large"),
    ("GET", "/dato/v1/calibrate/" + "c" * 3000, None, None, None, 404, "(3000 characters)"),
    ("POST", "/dato/v1/gates", {"prompts": ["a"], "iterations": 0}, None, None, 422, "iterations = 0"),
    ("POST", "/dato/v1/gates", {"prompts": ["a"], "sampler_name": HUGE}, None, None, 422, "sampler_name ="),
    ("GET", "/dato/v1/gates/" + "g" * 3000, None, None, None, 404, "no gate training"),
    ("POST", "/dato/v1/search", {"prompt_set": HUGE}, None, None, 422, "prompt_set ="),
    ("POST", "/dato/v1/search", {"sampler_name": 5}, None, None, 422, "sampler_name = 5"),
    ("GET", "/dato/v1/search/" + "s" * 3000, None, None, None, 404, "(3000 characters)"),
    ("DELETE", "/dato/v1/search/" + "s" * 3000, None, None, None, 404, "(3000 characters)"),
    ("POST", "/dato/v1/search/run/save", {"id": HUGE, "name": "a"}, None, None, 404, "no results"),
]


@pytest.mark.parametrize("method, path, body, raw, params, status, fragment", TABLE,
                         ids=[f"{i}-{row[0]} {row[1][:30]}" for i, row in enumerate(TABLE)])
def test_a_bad_input_gets_its_status_and_a_short_message(client, method, path, body, raw, params, status,
                                                         fragment):
    answer = _send(client, method, path, body, raw, params)
    assert answer.status_code == status, answer.text[:500]
    assert len(answer.content) < SHORT, len(answer.content)
    assert fragment in answer.json()["detail"], answer.json()["detail"]


def test_an_upload_with_a_good_rule_is_accepted_and_resamples(client):
    answer = client.post("/dato/v1/schedules", json=_rule())
    assert answer.status_code == 201, answer.text
    got = client.get("/dato/v1/schedules/mine", params={"steps": 8})
    assert got.status_code == 200 and got.json()["resampled"]["preview"] == "F0000F00"


def _write_invalid_files(client):
    user = client.user_dir
    user.mkdir(parents=True, exist_ok=True)
    (user / "zero-interval.json").write_text(json.dumps(_rule(name="zero-interval", interval=0)))
    (user / "not-utf8.json").write_bytes(b"\xff\xfe{}")
    (user / "big-number.json").write_text(json.dumps({**GOOD, "name": "big-number"}).replace("0.0", "1" + "0" * 400))
    (user / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    run = client.results / "searches" / "broken-run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"format": 1, "run_id": "broken-run", "status": "done"}))
    odd = client.results / "searches" / "odd-run"
    odd.mkdir(parents=True)
    (odd / "results.json").write_text("{not json")
    for folder, name in (("calibrations", "20250101-000000-abcd"), ("gates", "20250101-000000-abcd")):
        (client.results / folder).mkdir(parents=True, exist_ok=True)
        (client.results / folder / f"{name}.json").write_text(json.dumps({"format": "nope", "info": []}))


BROKEN = ["zero-interval", "not-utf8", "big-number", "deep"]


def test_stored_invalid_files_are_named_and_skipped_in_lists(client):
    _write_invalid_files(client)
    listing = client.get("/dato/v1/schedules")
    assert listing.status_code == 200
    assert not {s["name"] for s in listing.json()["schedules"]} & set(BROKEN)
    assert sorted(i["name"] for i in listing.json()["invalid"]) == sorted(BROKEN)
    for name in BROKEN:
        one = client.get(f"/dato/v1/schedules/{name}", params={"steps": 8})
        assert one.status_code == 422 and f"schedule file {name}.json (user) is invalid" in one.json()["detail"]
        check = client.post("/dato/v1/args", json={"args": [True, "prune", 0.4, name]})
        assert check.status_code == 422 and f"{name}.json" in check.json()["detail"], check.text
    searches = client.get("/dato/v1/search")
    assert searches.status_code == 200 and searches.json()["searches"] == []
    assert sorted(i["run_id"] for i in searches.json()["invalid"]) == ["broken-run", "odd-run"]
    for run in ("broken-run", "odd-run"):
        for path in (f"/dato/v1/search/{run}", f"/dato/v1/search/{run}/results"):
            answer = client.get(path)
            assert answer.status_code == 422 and f"{run}/results.json is invalid" in answer.json()["detail"]
        save = client.post(f"/dato/v1/search/{run}/save", json={"id": 1, "name": "x"})
        assert save.status_code == 422, save.text
    cal = client.get("/dato/v1/calibrate/20250101-000000-abcd")
    assert cal.status_code == 422 and "calibration file 20250101-000000-abcd.json is invalid" in cal.json()["detail"]
    gate = client.get("/dato/v1/gates/20250101-000000-abcd")
    assert gate.status_code == 422 and "gate result file 20250101-000000-abcd.json is invalid" in \
        gate.json()["detail"]
    gate_schedule = client.post("/dato/v1/gates/20250101-000000-abcd/schedule", json={})
    assert gate_schedule.status_code == 422
    assert client.get("/dato/v1/gates").status_code == 200
