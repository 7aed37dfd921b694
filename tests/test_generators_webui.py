"""Calibration (SmoothCache) and gradient gates (DiP-GO) in the WebUI, against the stand-in host.

Calibrations run through the stand-in's processing (its Euler sampler and ``on_cfg_denoiser``), gates train on
a StandaloneBackend around the same tiny real ldm UNet; the routes and the tab's handlers are exercised as the
browser and API clients use them.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
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
from dato.generators.calibrate import Calibration, schedule_from_calibration
from dato.generators.gates import GateConfig, GateResult

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def _conditioning(prompts):
    """A text encoder stand-in: a fixed (7, 32) context per prompt."""
    out = []
    for text in prompts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        out.append(torch.randn(7, 32, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(out)


GLUE = ("calibration_jobs", "calibration_routes", "calibration_ui", "gates_jobs", "gates_routes", "gates_ui",
        "backend", "requests")


@pytest.fixture()
def gen(host, model, tmp_path, monkeypatch):
    """The generators' glue modules on a fresh host; results go to tmp_path; a text encoder on the fake model."""
    store = sys.modules["dato_webui.store"]
    monkeypatch.setattr(store, "search_dir", lambda: tmp_path / "searches")
    glue = SimpleNamespace(**{name: importlib.import_module(f"dato_webui.{name}") for name in GLUE})
    model.get_learned_conditioning = _conditioning
    from dato.evaluation.sampling import sd_alphas_cumprod

    model.register_buffer("alphas_cumprod", sd_alphas_cumprod())
    glue.calibration_jobs.CALIBRATIONS.clear()
    glue.calibration_jobs.LATEST.clear()
    glue.gates_jobs.GATE_JOBS.clear()
    yield glue
    for job in glue.gates_jobs.GATE_JOBS.values():
        job.cancel()
        job.wait(120)
    glue.gates_jobs.GATE_JOBS.clear()
    glue.calibration_jobs.CALIBRATIONS.clear()
    glue.calibration_jobs.LATEST.clear()


@pytest.fixture()
def client(gen):
    return TestClient(_app(gen))


def _cal_body(**kw):
    body = {"prompts": ["a red fox", "a lighthouse"], "steps": 6, "width": 64, "height": 64, "cfg_scale": 3.0,
            "lookahead": 2, "seed": 1}
    body.update(kw)
    return body


def _gate_body(**kw):
    body = {"prompts": ["a red fox"], "steps": 4, "width": 64, "height": 64, "cfg_scale": 3.0,
            "target_speedup": 2.0, "iterations": 2, "batch_size": 1, "pool": 1}
    body.update(kw)
    return body


def _hooks(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def _store():
    return sys.modules["dato_webui.store"]


def _wait(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline:
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("body, field", [
    ({k: v for k, v in _cal_body().items() if k != "prompts"}, "prompts"),
    (_cal_body(prompts=[]), "prompts"),
    (_cal_body(prompts=["  "]), "prompts"),
    (_cal_body(prompts="a fox"), "prompts"),
    (_cal_body(prompts=[1]), "prompts"),
    (_cal_body(steps=1), "steps"),
    (_cal_body(steps="20"), "steps"),
    (_cal_body(steps=True), "steps"),
    (_cal_body(steps=6.5), "steps"),
    (_cal_body(width=100), "width"),
    (_cal_body(height=4096), "height"),
    (_cal_body(cfg_scale=0), "cfg_scale"),
    (_cal_body(sampler_name=3), "sampler_name"),
    (_cal_body(sampler_name=""), "sampler_name"),
    (_cal_body(negative_prompt=None), "negative_prompt"),
    (_cal_body(seed=-1), "seed"),
    (_cal_body(lookahead=0), "lookahead"),
    (_cal_body(lookahead=6), "lookahead"),
    (_cal_body(lookahed=2), "lookahed"),
])
def test_calibrate_route_names_every_bad_field(client, body, field):
    r = client.post("/dato/v1/calibrate", json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


@pytest.mark.parametrize("body, field", [
    (_gate_body(prompts=[]), "prompts"),
    (_gate_body(steps=0), "steps"),
    (_gate_body(width=65), "width"),
    (_gate_body(cfg_scale=31), "cfg_scale"),
    (_gate_body(sampler_name="DPM++ 2M"), "sampler_name"),
    (_gate_body(target_speedup=0.5), "target_speedup"),
    (_gate_body(target_speedup="3"), "target_speedup"),
    (_gate_body(iterations=0), "iterations"),
    (_gate_body(batch_size=0), "batch_size"),
    (_gate_body(batch_size=4, pool=2), "pool"),
    (_gate_body(lr=-1.0), "lr"),
    (_gate_body(use_checkpoint="yes"), "use_checkpoint"),
    (_gate_body(warm_start="deepcache"), "warm_start"),
    (_gate_body(iteratons=5), "iteratons"),
])
def test_gates_route_names_every_bad_field(client, body, field):
    r = client.post("/dato/v1/gates", json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_gate_requests_take_every_gate_config_field(gen):
    """Fields come from GateConfig itself; a bigger batch than the default pool grows the pool with it."""
    fields = {f.name for f in __import__("dataclasses").fields(GateConfig)} - {"seed"}
    body = _gate_body(batch_size=20, sampler_name="Euler a")
    del body["pool"]
    sampling, config = gen.gates_jobs.parse_gate_request(body)
    assert config.batch_size == 20 and config.pool == 20 and config.seed == sampling.seed
    assert gen.backend.gate_sampler(sampling.sampler_name) == "euler_a"
    assert {"target_speedup", "iterations", "batch_size", "pool", "lr"} <= fields


def test_routes_answer_unknown_ids_and_bad_bodies_clearly(client):
    assert client.post("/dato/v1/calibrate", content=b"{not json").status_code == 400
    assert client.post("/dato/v1/calibrate", json=[1, 2]).status_code == 422
    assert client.get("/dato/v1/calibrate/nope").status_code == 404
    assert client.post("/dato/v1/calibrate/nope/schedule", json={"alpha": 0.1}).status_code == 404
    assert client.post("/dato/v1/calibrate/..%2F..%2Fetc/schedule", json={"alpha": 0.1}).status_code == 404
    assert client.get("/dato/v1/gates/nope").status_code == 404
    assert client.delete("/dato/v1/gates/nope").status_code == 404
    assert client.post("/dato/v1/gates/nope/schedule", json={}).status_code == 404
    assert client.get("/dato/v1/gates").json() == {"gates": []}


def test_token_merging_is_refused_before_a_calibration(client):
    shared.opts.token_merging_ratio = 0.5
    try:
        r = client.post("/dato/v1/calibrate", json=_cal_body())
    finally:
        shared.opts.token_merging_ratio = 0
    assert r.status_code == 409 and "Token merging ratio" in r.json()["detail"]


def test_gates_need_a_text_encoder(client, model):
    del model.get_learned_conditioning
    r = client.post("/dato/v1/gates", json=_gate_body())
    assert r.status_code == 409 and "get_learned_conditioning" in r.json()["detail"]


# ------------------------------------------------------------------ calibration
def test_calibration_through_processing_gives_the_engines_schedule(client, gen, model, tmp_path):
    unet = dato.find_unet(model)
    hooks_before = _hooks(unet)
    r = client.post("/dato/v1/calibrate", json=_cal_body())
    assert r.status_code == 200, r.text
    data = r.json()
    cal = Calibration.from_dict(data["calibration"])
    assert cal.steps == 6 and cal.lookahead == 2 and cal.info["runs"] == 2, "one run per prompt, step from the clock"
    assert cal.info["prompts"] == ["a red fox", "a lighthouse"] and cal.info["model_hash"] == "tiny"
    assert all(math.isfinite(v) and v > 0 for unit in cal.errors for v in cal.curve(unit, 1))
    lo, hi = data["alpha_range"]
    assert 0 < lo < hi and lo <= data["alpha_default"] <= hi
    assert _hooks(unet) == hooks_before and dato.get_patch(unet) is None, "the recorder's hooks are gone"
    assert (tmp_path / "calibrations" / f"{data['id']}.json").is_file()

    alpha = (lo + hi) / 2
    r = client.post(f"/dato/v1/calibrate/{data['id']}/schedule", json={"alpha": alpha, "max_depth": 2})
    assert r.status_code == 200, r.text
    expected = schedule_from_calibration(cal, alpha, max_depth=2)
    assert r.json()["preview"] == expected.preview() and "F" in expected.preview()
    assert r.json()["macs_speedup"] >= 1.0 and "saved" not in r.json()
    coarse = client.post(f"/dato/v1/calibrate/{data['id']}/schedule", json={"alpha": hi * 2}).json()
    assert coarse["macs_speedup"] > 1.0 and coarse["preview"] != "F" * 6

    # saving installs it where the accordions look; a taken name is refused
    r = client.post(f"/dato/v1/calibrate/{data['id']}/schedule", json={"alpha": hi * 2, "name": "calibrated-fox"})
    assert r.status_code == 200 and r.json()["saved"]["name"] == "calibrated-fox"
    assert "calibrated-fox" in _store().names()
    saved = _store().load("calibrated-fox")
    assert saved.preview() == coarse["preview"] and saved.provenance["calibration_id"] == data["id"]
    again = client.post(f"/dato/v1/calibrate/{data['id']}/schedule", json={"alpha": 0.1, "name": "calibrated-fox"})
    assert again.status_code == 409

    # after a restart the calibration comes from its file
    gen.calibration_jobs.CALIBRATIONS.clear()
    gen.calibration_jobs.LATEST.clear()
    assert client.get(f"/dato/v1/calibrate/{data['id']}").json()["alpha_range"] == [lo, hi]
    r = client.post(f"/dato/v1/calibrate/{data['id']}/schedule", json={"alpha": alpha, "max_depth": 2})
    assert r.json()["preview"] == expected.preview()


@pytest.mark.parametrize("body, field", [
    ({}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": "0.1"}, "alpha"),
    ({"alpha": 0.1, "max_depth": 12}, "max_depth"),
    ({"alpha": 0.1, "allow_reuse": 1}, "allow_reuse"), ({"alpha": 0.1, "name": 5}, "name"),
    ({"alpha": 0.1, "name": "bad/name"}, "schedule name"), ({"alpha": 0.1, "beta": 1}, "beta"),
])
def test_calibration_schedule_route_names_every_bad_field(client, gen, body, field):
    cal_id = "20240101-000000-test"
    gen.calibration_jobs.CALIBRATIONS[cal_id] = _table_calibration()
    r = client.post(f"/dato/v1/calibrate/{cal_id}/schedule", json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def _table_calibration() -> Calibration:
    units = [f"depth{d}" for d in range(12)] + ["output"]
    errors = {u: [[0.1 * (s + 1) if s + j + 1 < 6 else math.nan for j in range(2)] for s in range(6)] for u in units}
    return Calibration(6, 2, 11, errors, {"width": 64, "height": 64})


def test_calibration_records_nothing_from_generations_between_its_prompts(gen, host, model):
    """The recorder's hooks are on only during the calibration's own generations."""
    run = gen.calibration_jobs.CalibrationRun(model, 2)
    sampling = gen.requests.Sampling(prompts=("x",), steps=4, width=64, height=64, cfg_scale=3.0)
    with call_queue.queue_lock:
        run.record(gen.backend.WebUIBackend.of(sampling), "x", 1)
    recorded = run.recorder._count["output"].sum().item()
    host.generate(prompt="a user image", steps=4, width=64, height=64, seed=5)  # a user job in between
    assert run.recorder._count["output"].sum().item() == recorded
    assert run.result().info["runs"] == 1


def test_a_calibration_waits_for_the_webui_queue_lock(gen):
    done = threading.Event()
    with call_queue.queue_lock:  # a user generation holds the GPU
        calibrate = gen.calibration_jobs.calibrate_now
        worker = threading.Thread(target=lambda: (calibrate(_cal_body(prompts=["x"])), done.set()))
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()
    worker.join(120)
    assert done.is_set()


# ------------------------------------------------------------------ gates
def test_gate_job_reports_progress_and_cancels_leaving_the_unet_as_it_was(client, gen, model):
    unet = dato.find_unet(model)
    frozen = list(unet.parameters())[:3]
    for p in frozen:  # a mixed requires_grad state must come back exactly
        p.requires_grad_(False)
    flags = [p.requires_grad for p in unet.parameters()]
    hooks_before = _hooks(unet)
    try:
        r = client.post("/dato/v1/gates", json=_gate_body(iterations=500))
        assert r.status_code == 202, r.text
        gate_id = r.json()["id"]
        assert client.post("/dato/v1/gates", json=_gate_body()).status_code == 409  # one at a time
        assert _wait(lambda: client.get(f"/dato/v1/gates/{gate_id}").json()["iteration"] >= 1)
        st = client.get(f"/dato/v1/gates/{gate_id}").json()
        assert st["state"] == "running" and st["iterations"] == 500 and st["eta_seconds"] > 0
        assert {"loss", "consistency", "hard_speedup"} <= set(st["latest"])
        assert "iteration" in gen.gates_ui.status_md(gate_id) and "of 500" in gen.gates_ui.status_md(gate_id)
        assert client.post(f"/dato/v1/gates/{gate_id}/schedule", json={}).status_code == 409  # not done
        assert client.delete(f"/dato/v1/gates/{gate_id}").status_code == 200
        assert gen.gates_jobs.GATE_JOBS[gate_id].wait(120)
        assert client.get(f"/dato/v1/gates/{gate_id}").json()["state"] == "cancelled"
        assert client.delete(f"/dato/v1/gates/{gate_id}").status_code == 409
        assert _hooks(unet) == hooks_before and dato.get_patch(unet) is None
        assert [p.requires_grad for p in unet.parameters()] == flags
        assert call_queue.queue_lock.acquire(blocking=False), "the queue turn was given back"
        call_queue.queue_lock.release()
    finally:
        for p in frozen:
            p.requires_grad_(True)


def test_a_failing_gate_job_leaves_the_unet_and_the_lock_clean(client, gen, model):
    unet = dato.find_unet(model)
    flags = [p.requires_grad for p in unet.parameters()]
    calls = {"n": 0}

    def flaky(prompts):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("text encoder exploded")
        return _conditioning(prompts)

    model.get_learned_conditioning = flaky
    gate_id = client.post("/dato/v1/gates", json=_gate_body(iterations=50)).json()["id"]
    assert gen.gates_jobs.GATE_JOBS[gate_id].wait(120)
    st = client.get(f"/dato/v1/gates/{gate_id}").json()
    assert st["state"] == "failed" and "text encoder exploded" in st["error"]
    assert _hooks(unet) == 0 and [p.requires_grad for p in unet.parameters()] == flags
    assert call_queue.queue_lock.acquire(blocking=False)
    call_queue.queue_lock.release()


def test_gate_iterations_take_the_queue_lock_before_their_hooks_go_on(gen, client, model):
    """A user generation holding the lock never sees the gated UNet's hooks, and the job waits for it."""
    unet = dato.find_unet(model)
    gate_id = client.post("/dato/v1/gates", json=_gate_body(iterations=500)).json()["id"]
    job = gen.gates_jobs.GATE_JOBS[gate_id]
    assert _wait(lambda: job.status()["iteration"] >= 2)
    with call_queue.queue_lock:  # the user's turn: between two iterations
        reached = job.status()["iteration"]
        time.sleep(0.5)
        assert _hooks(unet) == 0, "no gate hooks while the user generates"
        assert job.status()["iteration"] <= reached + 1
        frozen = job.status()["iteration"]
        time.sleep(0.3)
        assert job.status()["iteration"] == frozen, "the job waits for the lock"
    assert _wait(lambda: job.status()["iteration"] > frozen)
    job.cancel()
    assert job.wait(120)


def test_a_waiting_generation_gets_the_lock_after_one_iteration(gen, model):
    """queue_lock is not fair: without the pause after each turn a waiter could lose the race many times."""
    import threading

    turn, done, stop = gen.backend.QueueTurn(model), [0], threading.Event()

    def train():
        while not stop.is_set():
            with turn.iteration():
                end = time.perf_counter() + 0.05
                while time.perf_counter() < end:  # GIL-bound work, like an optimiser step's Python side
                    sum(range(1000))
            done[0] += 1

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        waited = []
        for _ in range(8):
            time.sleep(0.03)
            before = done[0]
            with call_queue.queue_lock:
                waited.append(done[0] - before)
    finally:
        stop.set()
        thread.join(10)
    assert max(waited) <= 1, waited


def test_finished_gates_give_schedules_at_any_speedup_and_survive_a_restart(client, gen, tmp_path):
    gate_id = client.post("/dato/v1/gates", json=_gate_body(iterations=2)).json()["id"]
    assert gen.gates_jobs.GATE_JOBS[gate_id].wait(120)
    st = client.get(f"/dato/v1/gates/{gate_id}").json()
    assert st["state"] == "done" and st["iteration"] == 2, st
    path = tmp_path / "gates" / f"{gate_id}.json"
    assert st["result_path"] == str(path) and path.is_file()
    result = GateResult.load(path)  # the engine reads the file as it is
    assert result.info["gate_id"] == gate_id and result.info["webui"]["prompts"] == ["a red fox"]

    answer = client.post(f"/dato/v1/gates/{gate_id}/schedule", json={"target_speedup": 1.5}).json()
    assert answer["macs_speedup"] >= 1.5 and answer["preview"] == result.schedule(1.5).preview()
    assert answer["preview"][0] == "F" and len(answer["preview"]) == 4
    r = client.post(f"/dato/v1/gates/{gate_id}/schedule", json={"target_speedup": 0.5})
    assert r.status_code == 422 and "target_speedup" in r.json()["detail"]
    r = client.post(f"/dato/v1/gates/{gate_id}/schedule", json={"target_speedup": 1.5, "name": "gated-fox"})
    assert r.status_code == 200 and r.json()["saved"]["name"] == "gated-fox" and "gated-fox" in _store().names()

    gen.gates_jobs.GATE_JOBS.clear()  # a restart: status and schedules come from the file
    st = client.get(f"/dato/v1/gates/{gate_id}").json()
    assert st["source"] == "file" and st["state"] == "done" and st["iteration"] == 2
    assert client.get("/dato/v1/gates").json()["gates"] == [{"id": gate_id, "state": "done", "running": False}]
    again = client.post(f"/dato/v1/gates/{gate_id}/schedule", json={"target_speedup": 1.5}).json()
    assert again["preview"] == answer["preview"]


# ------------------------------------------------------------------ the tab
def _event(blocks, elem_id: str, trigger: str):
    """(function, outputs) of the event ``trigger`` on the component ``elem_id``, as Gradio will run it."""
    target = next(b._id for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    index = next(i for i, d in enumerate(blocks.config["dependencies"])
                 if d["targets"] == [target] and d["trigger"] == trigger)
    return blocks.fns[index].fn, blocks.config["dependencies"][index]["outputs"]


def _search_tab(gen):
    return sys.modules["dato_webui.search_ui"].on_ui_tabs()[0][0]


def test_the_sections_build_in_the_search_tab_with_real_gradio(gen):
    import gradio as gr

    with gr.Blocks() as demo:
        gen.calibration_ui.build_section(demo, [])
        gen.gates_ui.build_section(demo, [])
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"dato_calibrate", "dato_calibrate_plot", "dato_calibrate_alpha", "dato_gates", "dato_gates_start",
            "dato_gates_plot", "dato_gates_save"} <= ids
    tab = _search_tab(gen)  # the Search tab builds both sections itself
    assert "dato_calibrate_run" in {getattr(b, "elem_id", None) for b in tab.blocks.values()}


def test_the_sections_do_not_share_ui_config_keys_with_the_search(gen):
    """The WebUI's ui_loadsave keys saved defaults by tab id and label (``dato_search/Sampler/value``) and
    applies the first component's saved value and range to every other with the same key (v1.10.1 showed the
    calibration's "Deepest cache branch" at 2, minimum 0, and its sampler at the search's)."""
    import gradio as gr

    tracked = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)
    keys: dict[str, list] = {}

    def walk(block):  # modules.ui_loadsave.UiLoadsave.add_block/add_component, for the "value" field
        for child in getattr(block, "children", None) or ():
            walk(child)
        if type(block) in tracked and getattr(block, "label", None) is not None:
            key = f"dato_search/{block.label}/value"
            if getattr(block, "custom_script_source", None) is not None:
                key = f"customscript/{block.custom_script_source}/{key}"
            keys.setdefault(key, []).append(getattr(block, "elem_id", None))

    walk(_search_tab(gen))
    shared = {k: v for k, v in keys.items() if len(v) > 1}
    assert not shared, shared
    assert "customscript/dato_calibrate/dato_search/Deepest cache branch/value" in keys


def test_the_tab_calibrates_moves_the_threshold_and_saves(gen, host):
    ui = sys.modules["dato_webui.ui"]
    tab = _search_tab(gen)
    calibrate, outputs = _event(tab, "dato_calibrate_run", "click")
    status, pick, frame, alpha, preview = calibrate("a red fox\n\na cat", "", "Euler", 6, 3.0, 64, 64, 1, 2,
                                                    True, 11)
    assert "**" in status and pick["value"] in pick["choices"]
    assert frame is not None and frame[["step", "error"]].notna().all().all() and len(frame)
    assert set(frame["unit"]) >= {"output", "depth0"} and "dato-preview" in preview
    plot = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "dato_calibrate_plot")
    assert plot.postprocess(frame)["type"] == "altair"
    assert 0 == alpha["minimum"] < alpha["value"] < alpha["maximum"]

    move, _ = _event(tab, "dato_calibrate_alpha", "change")
    cal = gen.calibration_jobs.get_calibration(pick["value"])
    html = move(pick["value"], alpha["maximum"], True, 11)
    assert f"<code>{schedule_from_calibration(cal, alpha['maximum']).preview()}</code>" in html and "x fewer" in html

    save, outputs = _event(tab, "dato_calibrate_save", "click")
    assert outputs[1:] == [d._id for d in ui.schedule_dropdowns()], "saving refreshes the accordions' dropdowns"
    message, *updates = save(pick["value"], alpha["maximum"], True, 11, " tab-calibrated ")
    assert "Saved **tab-calibrated**" in message and all("tab-calibrated" in u["choices"] for u in updates)
    message, *_ = save(pick["value"], alpha["maximum"], True, 11, "tab-calibrated")
    assert "Not saved" in message and "already exists" in message

    # a browser refresh after a restart: the page load finds the model's last calibration in its file
    gen.calibration_jobs.CALIBRATIONS.clear()
    gen.calibration_jobs.LATEST.clear()
    loads = {tab.fns[i].fn: d["outputs"] for i, d in enumerate(tab.config["dependencies"]) if d["trigger"] == "load"}
    assert len(loads[gen.calibration_ui.tab_load]) == 4 and len(loads[gen.gates_ui.tab_load]) == 3
    cal_pick, cal_status, cal_frame, cal_alpha = gen.calibration_ui.tab_load()
    gate_pick, gate_status, gate_frame = gen.gates_ui.tab_load()
    assert cal_pick["value"] == pick["value"] and cal_frame.equals(frame) and cal_alpha["value"] == alpha["value"]
    assert gate_pick["value"] is None and "No gate training yet" in gate_status and gate_frame is None


def test_the_tab_starts_gates_and_saves_their_schedule(gen, host):
    tab = _search_tab(gen)
    start, _ = _event(tab, "dato_gates_start", "click")
    status, pick = start("a red fox", "", "Euler", 4, 3.0, 64, 64, 0, 2.0, 2, 1)
    assert pick["value"] and "Not started" not in status
    gen.gates_jobs.GATE_JOBS[pick["value"]].wait(120)
    refresh, _ = _event(tab, "dato_gates_refresh", "click")
    status, frame = refresh(pick["value"])
    assert "done" in status and "iteration 2 of 2" in status
    assert frame is not None and frame["value"].notna().all() and set(frame["term"]) == {"loss", "consistency"}
    preview, _ = _event(tab, "dato_gates_post_target", "change")
    assert "x fewer UNet MACs" in preview(pick["value"], 1.5)
    save, _ = _event(tab, "dato_gates_save", "click")
    message, *updates = save(pick["value"], 1.5, "tab-gated")
    assert "Saved **tab-gated**" in message and "tab-gated" in _store().names()
    assert "Not started" in start("a fox", "", "Euler", 4, 3.0, 64, 64, 0, 0.5, 2, 1)[0]


def test_empty_states_send_no_nan_to_the_browser(gen):
    assert gen.calibration_ui.calibration_frame(None) is None and gen.gates_ui.history_frame([]) is None
    cal = _table_calibration()
    cal.errors["output"][0][0] = math.nan
    frame = gen.calibration_ui.calibration_frame(cal)
    assert frame["error"].notna().all()
    history = [{"iteration": 1, "loss": math.nan, "consistency": 0.5}]
    assert gen.gates_ui.history_frame(history)["value"].tolist() == [0.5]
    assert gen.requests.json_safe({"a": [math.inf, 1.0]}) == {"a": [None, 1.0]}
    assert gen.calibration_ui.tab_show(None)[1] is None


def test_the_step_clock_is_registered_once_and_comes_back_after_a_reload(gen):
    def count():
        registered = script_callbacks.callback_map["callbacks_cfg_denoiser"]
        return sum(c.name.endswith(gen.backend.STEP_CLOCK) for c in registered)

    script_callbacks.clear_callbacks()  # "Reload UI": callbacks go, the imported module stays
    r = TestClient(_app(gen)).post("/dato/v1/calibrate", json=_cal_body(prompts=["x"], steps=4))
    assert r.status_code == 200, r.text
    assert count() == 1


def _app(gen):
    app = FastAPI()
    gen.calibration_routes.register(app)
    gen.gates_routes.register(app)
    return app
