"""The Search tab's routes in a real AUTOMATIC1111 WebUI: start, progress, results, resume, save, cancel.

Run: ``WEBUI_URL=http://127.0.0.1:7861 pytest tests/webui_real/test_real_search.py -s`` (see conftest.py).
The searches are as small as the routes allow (``WEBUI_SEARCH_SIZE``, default 64 px; 4 steps; population 4;
one generation), so they finish in minutes on a CPU. Run folders the tests create are removed afterwards
when the WebUI writes them on this machine. (With the random-weight test checkpoint some prompts make the
UNet overflow at 64 px, and the WebUI's NaN check fails the search: "a red fox" does not.)
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "1800"))
SIZE = int(os.environ.get("WEBUI_SEARCH_SIZE", "64"))
PREFIX = "/dato/v1/search"
BODY = {"steps": 4, "width": SIZE, "height": SIZE, "sampler_name": "Euler", "cfg_scale": 7.0, "samples": 1,
        "population": 4, "generations": 1, "max_depth": 1, "prompts": ["a red fox"], "seed": 0,
        "quality": "fidelity", "cost": "macs"}
TIMINGS: dict[str, float] = {}


def _run_id(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:8]}"


def _status(url: str, run_id: str) -> dict:
    answer = requests.get(f"{url}{PREFIX}/{run_id}", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _wait(url: str, run_id: str, until, timeout: float = TIMEOUT) -> tuple[dict, list[str]]:
    """Poll the status route until ``until(status)``; returns the last status and the progress lines seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        st = _status(url, run_id)
        line = f"{st['state']} | stage {st.get('stage') or '-'} | generation {st.get('generation')} of " \
               f"{st.get('generations')} | {st.get('evaluations')} evaluations | {st.get('message')}"
        if not seen or seen[-1] != line:
            seen.append(line)
        if until(st):
            return st, seen
        assert time.monotonic() < deadline, f"search {run_id} timed out; progress seen:\n" + "\n".join(seen)
        time.sleep(2)


@pytest.fixture(scope="module")
def cleanup():
    """Run folders (on this machine) and saved schedules to remove after the module."""
    folders: list[Path] = []
    schedules: list[tuple[str, str]] = []
    yield folders, schedules
    for url, name in schedules:
        requests.delete(f"{url}/dato/v1/schedules/{name}", timeout=60)
    for folder in folders:
        if folder.is_dir() and folder.name.startswith("test-") and folder.parent.name == "searches":
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def finished(webui, cleanup):
    """A tiny search started through the route and run to the end: (run id, last status, results, progress)."""
    run_id = _run_id("done")
    start = time.perf_counter()
    answer = requests.post(webui + PREFIX, json={**BODY, "run_id": run_id}, timeout=120)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"run_id": run_id, "status": f"{PREFIX}/{run_id}", "state": answer.json()["state"]}
    st, seen = _wait(webui, run_id, lambda s: not s["running"])
    TIMINGS["search"] = time.perf_counter() - start
    if st.get("results_path"):
        cleanup[0].append(Path(st["results_path"]).parent)
    results = requests.get(f"{webui}{PREFIX}/{run_id}/results", timeout=60)
    assert results.status_code == 200, results.text
    print(f"\n[timing] search {SIZE}px, 4 Euler steps, population 4, 1 generation, 1 image per evaluation: "
          f"{TIMINGS['search']:.1f} s (search's own wall time {results.json()['wall_seconds']:.1f} s, "
          f"{len(results.json()['evaluations'])} evaluations)")
    print("  progress seen:\n  " + "\n  ".join(seen))
    return run_id, st, results.json(), seen


def test_a_tiny_search_runs_to_the_end_through_the_routes(finished):
    run_id, st, _, seen = finished
    assert st["state"] == "done", st
    assert st["error"] is None and st["generation"] == 1 and st["generations"] == 1
    assert st["evaluations"] >= 4 and st["front"]
    assert any(line.startswith("running") for line in seen), "progress was reported while it ran"
    baseline = [p for p in st["front"] if p["cost"] == 1.0]
    assert baseline and baseline[0]["quality"] == 100.0, "the unaccelerated schedule is identical to the reference"
    assert any(p["cost"] < 1.0 for p in st["front"]), "something cheaper than the baseline is on the front"


def test_the_results_file_has_the_documented_fields(webui, finished):
    run_id, st, results, _ = finished
    # README: every evaluated genome, objectives, the Pareto front, settings, prompts, model hash
    for key in ("format", "generator", "run_id", "status", "date", "wall_seconds", "settings", "prompts", "pairs",
                "model", "objectives", "baseline", "evaluations", "front", "front_points"):
        assert key in results, key
    assert results["run_id"] == run_id and results["status"] == "done" and results["format"] == 1
    assert results["prompts"] == BODY["prompts"] and results["pairs"] == [[BODY["prompts"][0], 0]]
    settings = results["settings"]
    assert (settings["steps"], settings["population"], settings["generations"]) == (4, 4, 1)
    assert settings["extra"]["webui"] == {"sampler_name": "Euler", "width": SIZE, "height": SIZE, "cfg_scale": 7.0,
                                          "negative_prompt": ""}
    model = results["model"]
    assert model["backend"] == "webui" and model["model_hash"] and model["latent_shape"] == [4, SIZE // 8, SIZE // 8]
    assert results["objectives"]["quality"]["name"] == "fidelity-psnr"  # the WebUI decodes: pixel PSNR
    assert results["objectives"]["cost"]["name"] == "macs"
    ids = set()
    for e in results["evaluations"]:
        for key in ("id", "genome", "cache", "ratio", "ratio_codes", "method", "preview", "quality", "cost",
                    "macs_rel", "feasible", "origin"):
            assert key in e, (key, e)
        assert len(e["cache"]) == len(e["ratio"]) == 4 and math.isfinite(e["quality"]) and 0 < e["cost"] <= 1.0
        ids.add(e["id"])
    assert set(results["front"]) <= ids and [p["id"] for p in results["front_points"]] == results["front"]
    assert [p["id"] for p in st["front"]] == results["front"]
    if Path(st["results_path"]).is_file():  # the WebUI runs on this machine: the file is what the route sent
        import json

        assert json.loads(Path(st["results_path"]).read_text()) == results
    listed = requests.get(webui + PREFIX, timeout=60).json()["searches"]
    assert any(r["run_id"] == run_id and r["state"] == "done" for r in listed)


def test_starting_a_finished_run_again_resumes_from_its_checkpoint(webui, finished):
    run_id, st, results, _ = finished
    start = time.perf_counter()
    answer = requests.post(webui + PREFIX, json={**BODY, "run_id": run_id}, timeout=120)
    assert answer.status_code == 202, answer.text
    again, seen = _wait(webui, run_id, lambda s: not s["running"])
    TIMINGS["resume"] = time.perf_counter() - start
    print(f"\n[timing] the same run id again (checkpoint and reference from disk): {TIMINGS['resume']:.1f} s")
    assert again["state"] == "done" and again["evaluations"] == st["evaluations"], seen
    assert not any("reference samples" in line for line in seen), "the reference was not made again"
    assert [p["id"] for p in again["front"]] == results["front"]


def test_a_front_point_saved_as_a_schedule_is_installed(webui, finished, cleanup):
    run_id, st, _, _ = finished
    point = min(st["front"], key=lambda p: p["cost"])
    name = f"{run_id}-cheapest"
    answer = requests.post(f"{webui}{PREFIX}/{run_id}/save", json={"id": point["id"], "name": name}, timeout=60)
    assert answer.status_code == 201, answer.text
    cleanup[1].append((webui, name))
    assert answer.json()["source"] == "search" and answer.json()["preview"] == point["preview"]
    one = requests.get(f"{webui}/dato/v1/schedules/{name}", timeout=60).json()
    assert one["schedule"]["provenance"]["run_id"] == run_id
    again = requests.post(f"{webui}{PREFIX}/{run_id}/save", json={"id": point["id"], "name": name}, timeout=60)
    assert again.status_code == 409


def test_cancel_route_stops_a_running_search(webui, cleanup):
    run_id = _run_id("cancel")
    start = time.perf_counter()
    answer = requests.post(webui + PREFIX, json={**BODY, "generations": 5, "run_id": run_id}, timeout=120)
    assert answer.status_code == 202, answer.text
    busy = requests.post(webui + PREFIX, json={**BODY, "run_id": _run_id("second")}, timeout=120)
    assert busy.status_code == 409 and "still running" in busy.json()["detail"]
    st, _ = _wait(webui, run_id, lambda s: s["evaluations"] >= 1 or not s["running"])
    assert st["running"], st
    cancelled_at = time.perf_counter()
    answer = requests.delete(f"{webui}{PREFIX}/{run_id}", timeout=60)
    assert answer.status_code == 200, answer.text
    st, seen = _wait(webui, run_id, lambda s: not s["running"])
    TIMINGS["cancel"] = time.perf_counter() - cancelled_at
    if st.get("results_path"):
        cleanup[0].append(Path(st["results_path"]).parent)
    print(f"\n[timing] cancel: stopped {TIMINGS['cancel']:.1f} s after DELETE (the evaluation in flight ends "
          f"first); run {time.perf_counter() - start:.1f} s in all")
    assert st["state"] == "cancelled" and st["evaluations"] < 20, seen
    assert requests.delete(f"{webui}{PREFIX}/{run_id}", timeout=60).status_code == 409
    results = requests.get(f"{webui}{PREFIX}/{run_id}/results", timeout=60)
    assert results.status_code == 200 and results.json()["status"] == "cancelled"


def _user_txt2img(url: str, holder: dict, steps: int) -> None:
    body = {"prompt": "a red fox", "negative_prompt": "", "seed": 1234, "steps": steps, "width": 128, "height": 128,
            "sampler_name": "Euler", "cfg_scale": 7, "send_images": True, "save_images": False}
    holder["answer"] = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=TIMEOUT)


def _progress(url: str) -> dict:
    return requests.get(url + "/sdapi/v1/progress", params={"skip_current_image": True}, timeout=60).json()


def test_interrupt_stops_the_users_job_and_the_search_goes_on(webui, cleanup):
    """Issue 12: a search running, the user's txt2img queued behind it, Interrupt pressed on the user's job."""
    steps = 30
    reference: dict = {}
    _user_txt2img(webui, reference, steps)  # the same request, not interrupted
    assert reference["answer"].status_code == 200, reference["answer"].text[:500]

    run_id = _run_id("interrupt")
    answer = requests.post(webui + PREFIX, json={**BODY, "generations": 3, "run_id": run_id}, timeout=120)
    assert answer.status_code == 202, answer.text
    st, _ = _wait(webui, run_id, lambda s: s["evaluations"] >= 1 or not s["running"])
    assert st["running"], st
    assert _progress(webui)["state"]["job_count"] == 0, "the search's images do not show in the progress bar"

    user: dict = {}
    thread = threading.Thread(target=_user_txt2img, args=(webui, user, steps))
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while (step := _progress(webui)["state"]["sampling_step"]) < 3:  # the bar shows the user's job only
        assert time.monotonic() < deadline and thread.is_alive(), "the user's job never showed its steps"
        time.sleep(0.5)
    before = _status(webui, run_id)["evaluations"]
    assert requests.post(webui + "/sdapi/v1/interrupt", timeout=60).status_code == 200
    thread.join(TIMEOUT)
    assert user["answer"].status_code == 200, user["answer"].text[:500]
    interrupted = user["answer"].json()["images"][0]
    assert interrupted != reference["answer"].json()["images"][0], "the user's job stopped early"
    print(f"\n[interrupt] pressed at the user's step {step} of {steps}; the search had {before} evaluations")

    st = _status(webui, run_id)
    assert st["running"] and st["state"] not in ("cancelled", "failed"), st
    st, seen = _wait(webui, run_id, lambda s: not s["running"])
    if st.get("results_path"):
        cleanup[0].append(Path(st["results_path"]).parent)
    assert st["state"] == "done" and st["error"] is None, seen
    assert st["evaluations"] > before, "the search went on after the Interrupt"
    again: dict = {}
    _user_txt2img(webui, again, steps)
    assert again["answer"].json()["images"][0] == reference["answer"].json()["images"][0], \
        "the next user job runs to the end: the Interrupt was not left pending"


def test_search_routes_refuse_bad_requests_quickly(webui):
    start = time.perf_counter()
    bad = requests.post(webui + PREFIX, json={**BODY, "width": 100}, timeout=60)
    assert bad.status_code == 422 and "multiples of 8" in bad.json()["detail"]
    bad = requests.post(webui + PREFIX, json={**BODY, "sampler_name": "No such sampler"}, timeout=60)
    assert bad.status_code == 422 and "is not available" in bad.json()["detail"]
    bad = requests.post(webui + PREFIX, json={**BODY, "populaton": 4}, timeout=60)
    assert bad.status_code == 422 and "populaton" in bad.json()["detail"]
    assert requests.get(f"{webui}{PREFIX}/no-such-run", timeout=60).status_code == 404
    assert requests.get(f"{webui}{PREFIX}/no-such-run/results", timeout=60).status_code == 404
    assert requests.delete(f"{webui}{PREFIX}/no-such-run", timeout=60).status_code == 404
    assert time.perf_counter() - start < 60
