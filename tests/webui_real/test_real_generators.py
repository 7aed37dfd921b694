"""The Search tab's two other generators in a real AUTOMATIC1111 WebUI: calibration (SmoothCache) and gates (DiP-GO).

Run: ``WEBUI_URL=http://127.0.0.1:7861 pytest -s tests/webui_real/test_real_generators.py`` (see conftest.py).
Everything is as small as the routes allow (``WEBUI_GENERATORS_SIZE``, default 64 px; 4 calibration steps,
3 gate steps, 2 gate iterations) so that it finishes in minutes on a CPU. The UNet must come out of all of it
unchanged: a fixed-seed txt2img made first is made again between and after, pixel for pixel. Calibration and
gate-result files the tests create are removed afterwards when the WebUI writes them on this machine; saved
schedules are removed through the route. The browser test writes ``docs/calibrate-tab.png``
(``WEBUI_CALIBRATE_SCREENSHOT`` names another file). ("a red fox" at 64 px stays finite with the random-weight
test checkpoint; some prompts overflow to NaN there.)
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "1800"))
SIZE = int(os.environ.get("WEBUI_GENERATORS_SIZE", "64"))
PREFIX = "/dato/v1"
PROMPTS = ["a red fox"]
CALIBRATE = {"prompts": PROMPTS, "width": SIZE, "height": SIZE, "steps": 4, "sampler_name": "Euler",
             "lookahead": 2, "cfg_scale": 1.0, "seed": 0}
GATES = {"prompts": PROMPTS, "width": SIZE, "height": SIZE, "steps": 3, "sampler_name": "Euler", "iterations": 2,
         "batch_size": 1, "pool": 1, "target_speedup": 1.5, "cfg_scale": 1.0, "seed": 0}
TXT2IMG = {"prompt": PROMPTS[0], "negative_prompt": "", "steps": 2, "width": SIZE, "height": SIZE, "seed": 4321,
           "sampler_name": "Euler", "cfg_scale": 1.0, "batch_size": 1, "n_iter": 1}
TIMINGS: dict[str, float] = {}


def txt2img_pixels(url: str) -> bytes:
    start = time.perf_counter()
    answer = requests.post(url + "/sdapi/v1/txt2img", json=TXT2IMG, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text[:2000]
    TIMINGS.setdefault("txt2img", time.perf_counter() - start)
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    return image.convert("RGB").tobytes()


def _gate(url: str, gate_id: str) -> dict:
    answer = requests.get(f"{url}{PREFIX}/gates/{gate_id}", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _wait_gate(url: str, gate_id: str, until) -> tuple[dict, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        st = _gate(url, gate_id)
        latest = st.get("latest") or {}
        line = f"{st['state']} | iteration {st['iteration']} of {st['iterations']} | loss {latest.get('loss')} | " \
               f"gates now {latest.get('hard_speedup')}x | eta {st.get('eta_seconds')}"
        if not seen or seen[-1] != line:
            seen.append(line)
        if until(st):
            return st, seen
        assert time.monotonic() < deadline, f"gates {gate_id} timed out:\n" + "\n".join(seen)
        time.sleep(2)


@pytest.fixture(scope="module")
def cleanup(webui):
    """Files (on this machine) and saved schedules to remove after the module."""
    files: list[Path] = []
    schedules: list[str] = []
    yield files, schedules
    for name in schedules:
        requests.delete(f"{webui}{PREFIX}/schedules/{name}", timeout=60)
    for path in files:
        if path.is_file() and path.parent.name in ("calibrations", "gates") and path.suffix == ".json":
            path.unlink()


@pytest.fixture(scope="module")
def reference(webui):
    """A fixed-seed 2-step txt2img made before any calibration or gate training."""
    return txt2img_pixels(webui)


@pytest.fixture(scope="module")
def calibration(webui, reference, cleanup):
    start = time.perf_counter()
    answer = requests.post(f"{webui}{PREFIX}/calibrate", json=CALIBRATE, timeout=TIMEOUT)
    TIMINGS["calibrate"] = time.perf_counter() - start
    assert answer.status_code == 200, answer.text[:2000]
    data = answer.json()
    cleanup[0].append(Path(data["path"]))
    print(f"\n[timing] calibration, 1 prompt, {SIZE}px, 4 Euler steps, lookahead 2: {TIMINGS['calibrate']:.1f} s "
          f"(txt2img 2 steps {TIMINGS['txt2img']:.1f} s); alpha range {data['alpha_range']}")
    return data


def test_calibration_route_measures_every_unit(webui, calibration):
    cal = calibration["calibration"]
    assert cal["steps"] == 4 and cal["lookahead"] == 2
    assert cal["info"]["model_hash"] and cal["info"]["sampler_name"] == "Euler"
    assert {"depth0", "depth11", "output"} <= set(cal["errors"])
    lo, hi = calibration["alpha_range"]
    assert 0 < lo <= calibration["alpha_default"] <= hi and math.isfinite(hi)
    for rows in cal["errors"].values():  # one-step-ahead errors of every step but the last are measured
        assert len(rows) == 4 and all(row[0] is not None and row[0] >= 0 for row in rows[:3])
    again = requests.get(f"{webui}{PREFIX}/calibrate/{calibration['id']}", timeout=60)
    assert again.status_code == 200 and again.json()["alpha_range"] == calibration["alpha_range"]
    if Path(calibration["path"]).is_file():
        assert json.loads(Path(calibration["path"]).read_text())["errors"] == cal["errors"]


def test_calibration_schedule_previews_saves_and_deletes(webui, calibration, cleanup):
    cal_id = calibration["id"]
    lo, hi = calibration["alpha_range"]
    route = f"{webui}{PREFIX}/calibrate/{cal_id}/schedule"
    below = requests.post(route, json={"alpha": lo / 2}, timeout=120).json()
    assert below["preview"] == "FFFF" and below["macs_speedup"] == pytest.approx(1.0)
    assert "saved" not in below
    start = time.perf_counter()
    middle = requests.post(route, json={"alpha": (lo + hi) / 2}, timeout=120)
    TIMINGS["threshold"] = time.perf_counter() - start
    assert middle.status_code == 200, middle.text
    above = requests.post(route, json={"alpha": hi * 2}, timeout=120).json()
    assert above["preview"][0] == "F" and above["macs_speedup"] > 1.0
    assert above["macs_speedup"] >= middle.json()["macs_speedup"] >= 1.0
    print(f"\n[timing] one threshold: {TIMINGS['threshold']:.2f} s; previews {below['preview']} "
          f"{middle.json()['preview']} {above['preview']} ({above['macs_speedup']:.2f}x MACs)")

    name = f"test-cal-{uuid.uuid4().hex[:8]}"
    saved = requests.post(route, json={"alpha": hi * 2, "name": name}, timeout=120)
    assert saved.status_code == 200, saved.text
    cleanup[1].append(name)
    assert saved.json()["saved"]["name"] == name and saved.json()["saved"]["source"] == "user"
    assert requests.post(route, json={"alpha": hi * 2, "name": name}, timeout=120).status_code == 409
    listed = {s["name"]: s for s in requests.get(f"{webui}{PREFIX}/schedules", timeout=60).json()["schedules"]}
    assert listed[name]["preview"] == above["preview"] and listed[name]["deletable"]
    one = requests.get(f"{webui}{PREFIX}/schedules/{name}", timeout=60).json()
    provenance = one["schedule"]["provenance"]
    assert provenance["generator"] == "calibration" and provenance["calibration_id"] == cal_id
    assert requests.delete(f"{webui}{PREFIX}/schedules/{name}", timeout=60).status_code == 200
    assert requests.get(f"{webui}{PREFIX}/schedules/{name}", timeout=60).status_code == 404


def test_calibration_routes_refuse_bad_requests_quickly(webui, calibration):
    start = time.perf_counter()
    bad = requests.post(f"{webui}{PREFIX}/calibrate", json={**CALIBRATE, "width": 100}, timeout=60)
    assert bad.status_code == 422 and "width" in bad.json()["detail"]
    bad = requests.post(f"{webui}{PREFIX}/calibrate", json={**CALIBRATE, "lookahed": 2}, timeout=60)
    assert bad.status_code == 422 and "lookahed" in bad.json()["detail"]
    bad = requests.post(f"{webui}{PREFIX}/calibrate", json={**CALIBRATE, "sampler_name": "No such"}, timeout=60)
    assert bad.status_code == 422 and "not available" in bad.json()["detail"]
    route = f"{webui}{PREFIX}/calibrate/{calibration['id']}/schedule"
    bad = requests.post(route, json={"alpha": -1}, timeout=60)
    assert bad.status_code == 422 and "alpha" in bad.json()["detail"]
    assert requests.post(f"{webui}{PREFIX}/calibrate/no-such-id/schedule", json={"alpha": 1},
                         timeout=60).status_code == 404
    bad = requests.post(f"{webui}{PREFIX}/gates", json={**GATES, "sampler_name": "DPM++ 2M"}, timeout=60)
    assert bad.status_code == 422 and "sampler_name" in bad.json()["detail"]
    bad = requests.post(f"{webui}{PREFIX}/gates", json={**GATES, "iterations": 0}, timeout=60)
    assert bad.status_code == 422 and "iterations" in bad.json()["detail"]
    assert requests.get(f"{webui}{PREFIX}/gates/no-such-id", timeout=60).status_code == 404
    assert requests.delete(f"{webui}{PREFIX}/gates/no-such-id", timeout=60).status_code == 404
    assert time.perf_counter() - start < 60


def test_txt2img_after_the_calibration_is_identical(webui, reference, calibration):
    assert txt2img_pixels(webui) == reference


@pytest.fixture(scope="module")
def trained(webui, reference, cleanup):
    """A 2-iteration gate training run to the end through the routes."""
    start = time.perf_counter()
    answer = requests.post(f"{webui}{PREFIX}/gates", json=GATES, timeout=120)
    assert answer.status_code == 202, answer.text
    gate_id = answer.json()["id"]
    assert answer.json() == {"id": gate_id, "status": f"{PREFIX}/gates/{gate_id}", "state": "running"}
    st, seen = _wait_gate(webui, gate_id, lambda s: not s["running"])
    TIMINGS["gates"] = time.perf_counter() - start
    if st.get("result_path"):
        cleanup[0].append(Path(st["result_path"]))
    print(f"\n[timing] gates, 1 prompt, {SIZE}px, 3 Euler steps, 2 iterations of batch 1: {TIMINGS['gates']:.1f} s")
    print("  progress seen:\n  " + "\n  ".join(seen))
    return gate_id, st, seen


def test_a_two_iteration_gate_training_runs_to_the_end(webui, trained):
    gate_id, st, seen = trained
    assert st["state"] == "done" and st["error"] is None, st
    assert st["iteration"] == st["iterations"] == 2 and st["result_path"]
    assert st["sampling"]["steps"] == 3 and st["config"]["target_speedup"] == 1.5
    assert math.isfinite(st["latest"]["loss"]) and st["latest"]["hard_speedup"] >= 1.0
    assert any(line.startswith("running") for line in seen)
    assert {"id": gate_id, "state": "done", "running": False} in \
        requests.get(f"{webui}{PREFIX}/gates", timeout=60).json()["gates"]


def test_gate_schedule_route_hits_the_target_and_saves(webui, trained, cleanup):
    gate_id = trained[0]
    route = f"{webui}{PREFIX}/gates/{gate_id}/schedule"
    default = requests.post(route, json={}, timeout=120)
    assert default.status_code == 200, default.text
    data = default.json()
    assert len(data["preview"]) == 3 and data["preview"][0] == "F"
    assert data["macs_speedup"] == pytest.approx(1.5, rel=0.1)
    lower = requests.post(route, json={"target_speedup": 1.2}, timeout=120).json()
    assert lower["macs_speedup"] == pytest.approx(1.2, rel=0.1)
    far = requests.post(route, json={"target_speedup": 40}, timeout=120)
    assert far.status_code == 422 and "target_speedup" in far.json()["detail"]
    name = f"test-gates-{uuid.uuid4().hex[:8]}"
    saved = requests.post(route, json={"name": name}, timeout=120)
    assert saved.status_code == 200, saved.text
    cleanup[1].append(name)
    one = requests.get(f"{webui}{PREFIX}/schedules/{name}", timeout=60).json()
    assert one["preview"] == data["preview"] and one["schedule"]["provenance"]["gate_id"] == gate_id
    assert requests.delete(f"{webui}{PREFIX}/schedules/{name}", timeout=60).status_code == 200


def test_txt2img_after_gate_training_is_identical(webui, reference, trained):
    assert txt2img_pixels(webui) == reference


def test_a_long_gate_training_lets_txt2img_through_and_cancels(webui, reference, trained):
    start = time.perf_counter()
    answer = requests.post(f"{webui}{PREFIX}/gates", json={**GATES, "iterations": 50}, timeout=120)
    assert answer.status_code == 202, answer.text
    gate_id = answer.json()["id"]
    busy = requests.post(f"{webui}{PREFIX}/gates", json=GATES, timeout=120)
    assert busy.status_code == 409 and "still running" in busy.json()["detail"]
    st, _ = _wait_gate(webui, gate_id, lambda s: s["iteration"] >= 1 or not s["running"])
    assert st["running"] and st["eta_seconds"], st
    first = time.perf_counter() - start
    # a user generation while the job runs: it takes its turn between two iterations, with no gate hooks on
    between = time.perf_counter()
    assert txt2img_pixels(webui) == reference
    between = time.perf_counter() - between
    assert _gate(webui, gate_id)["running"], "the job was still running around the user's generation"
    cancelled_at = time.perf_counter()
    answer = requests.delete(f"{webui}{PREFIX}/gates/{gate_id}", timeout=60)
    assert answer.status_code == 200, answer.text
    st, seen = _wait_gate(webui, gate_id, lambda s: not s["running"])
    stopped = time.perf_counter() - cancelled_at
    print(f"\n[timing] 50-iteration job: first iteration after {first:.1f} s; txt2img during it {between:.1f} s; "
          f"cancelled {stopped:.1f} s after DELETE at iteration {st['iteration']}")
    assert st["state"] == "cancelled" and st["error"] is None and st["iteration"] < 50, seen
    assert st["result_path"] is None
    assert requests.delete(f"{webui}{PREFIX}/gates/{gate_id}", timeout=60).status_code == 409
    no_result = requests.post(f"{webui}{PREFIX}/gates/{gate_id}/schedule", json={}, timeout=60)
    assert no_result.status_code == 409 and "cancelled" in no_result.json()["detail"]
    assert txt2img_pixels(webui) == reference


class EventChromium:
    """The DevTools helper of test_real_webui.py, keeping page exceptions and console errors."""

    def __new__(cls, binary):
        from test_real_webui import Chromium

        class Recording(Chromium):
            def __init__(self, binary):
                super().__init__(binary)
                self.events: list[dict] = []

            def call(self, method, **params):
                self.next_id += 1
                self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
                while True:
                    message = json.loads(self.ws.recv(timeout=120))
                    if message.get("id") == self.next_id:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})
                    if message.get("method") == "Runtime.exceptionThrown" or (
                            message.get("method") == "Runtime.consoleAPICalled"
                            and message["params"].get("type") == "error"):
                        self.events.append(message)

        return Recording(binary)


def _small_png(data: bytes, target: Path) -> None:
    """A 256-colour PNG: the UI's flat colours survive, the file stays small for the docs."""
    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, optimize=True)


def test_the_search_tab_shows_the_curves_and_the_threshold_moves_the_preview(webui, calibration, trained):
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary")
    browser = EventChromium(binary)
    app = "gradioApp()"
    preview = f"{app}.querySelector('#dato_calibrate_preview')"

    def set_alpha(value: float) -> None:
        browser.evaluate(f"""(() => {{ const el = {app}.querySelector('#dato_calibrate_alpha input[type=range]');
            el.value = {value}; updateInput(el); el.dispatchEvent(new Event('change')); }})()""")

    try:
        browser.call("Runtime.enable")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=webui + "/")
        browser.wait_for(f"typeof gradioApp === 'function' && !!{app}.querySelector('#dato_calibrate .label-wrap')")
        browser.evaluate(f"""[...{app}.querySelectorAll('#tabs > .tab-nav > button')]
            .find(b => b.textContent.trim() === 'DaTo Search').click()""")
        for section in ("dato_calibrate", "dato_gates"):
            browser.evaluate(f"{app}.querySelector('#{section} .label-wrap').click()")
        # the page load restores the loaded model's newest calibration (this module's) and the newest gate run
        cal_id = calibration["id"]
        browser.wait_for(f"{app}.querySelector('#dato_calibrate_status').textContent.includes('{cal_id}')")
        browser.wait_for(f"!!{app}.querySelector('#dato_calibrate_plot canvas, #dato_calibrate_plot svg')")
        # the restored slider value draws a first preview; moving the slider before it arrives races with it
        browser.wait_for(f"{preview}.textContent.includes('fewer UNet MACs')")
        lo, hi = calibration["alpha_range"]
        set_alpha(lo / 2)
        browser.wait_for(f"{preview}.textContent.includes('FFFF')")
        set_alpha(hi)
        browser.wait_for(f"!{preview}.textContent.includes('FFFF') && "
                         f"{preview}.querySelectorAll('.dato-cells .dato-cell').length === 4")
        text = browser.evaluate(f"{preview}.textContent")
        assert "fewer UNet MACs" in text and "alpha " in text, text
        set_alpha(calibration["alpha_default"])  # the median error: the screenshot shows cached depths too
        browser.wait_for(f"{preview}.textContent !== {json.dumps(text)} && "
                         f"{preview}.querySelectorAll('.dato-cells .dato-cell').length === 4")
        browser.wait_for(f"{app}.querySelector('#dato_gates_status').textContent.includes('iteration')")
        assert browser.evaluate(f"{app}.querySelector('#dato_calibrate_depth input[type=range]').min") == "-1"
        time.sleep(1)
        assert not browser.events, [json.dumps(e)[:500] for e in browser.events]
        box = browser.evaluate(f"""(() => {{ const el = {app}.querySelector('#dato_calibrate'); el.scrollIntoView();
            const r = el.getBoundingClientRect();
            return {{x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}}; }})()""")
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": box["x"] - 4, "y": box["y"] - 4, "width": box["width"] + 8,
                                  "height": box["height"] + 8, "scale": 1})
        target = Path(os.environ.get("WEBUI_CALIBRATE_SCREENSHOT", ROOT / "docs" / "calibrate-tab.png"))
        _small_png(base64.b64decode(shot["data"]), target)
        assert 1000 < target.stat().st_size < 150_000
    finally:
        browser.close()
