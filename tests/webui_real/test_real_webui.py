"""sd-webui-dato in a real AUTOMATIC1111 WebUI: API generations, routes, interrupts, the rendered accordion.

Run: ``WEBUI_URL=http://127.0.0.1:7861 pytest tests/webui_real -s`` (see conftest.py). Sizes
and steps are small for CPUs; ``WEBUI_TEST_SIZE`` / ``WEBUI_TEST_STEPS`` change them.
``WEBUI_SCREENSHOT`` names the accordion screenshot (default ``docs/accordion.png``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parents[2]
SIZE = int(os.environ.get("WEBUI_TEST_SIZE", "128"))
STEPS = int(os.environ.get("WEBUI_TEST_STEPS", "10"))
TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "1800"))
BASE = {"prompt": "a photo of a cat", "negative_prompt": "", "steps": STEPS, "width": SIZE, "height": SIZE,
        "seed": 1234, "sampler_name": "Euler", "cfg_scale": 7, "batch_size": 1, "n_iter": 1}
ON = [True, "prune", 0.4, "balanced"]
TIMINGS: dict[str, float] = {}


def txt2img(url, alwayson=None, **extra):
    body = {**BASE, **extra}
    if alwayson is not None:
        body["alwayson_scripts"] = {"dato": {"args": alwayson}}
    start = time.perf_counter()
    answer = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=TIMEOUT)
    elapsed = time.perf_counter() - start
    assert answer.status_code == 200, answer.text[:2000]
    data = answer.json()
    data["elapsed"] = elapsed
    data["info"] = json.loads(data["info"])
    return data


def pixels(result):
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
    return image.convert("RGB").tobytes()


@pytest.fixture(scope="module")
def runs(webui):
    """off, on, off: the same seed and settings; the third must equal the first."""
    results = {"off": txt2img(webui), "on": txt2img(webui, ON)}
    results["off_again"] = txt2img(webui, [False, "prune", 0.4, "balanced"])
    for key, value in results.items():
        TIMINGS[key] = value["elapsed"]
    return results


def test_extension_is_loaded_on_both_tabs(webui):
    scripts = requests.get(webui + "/sdapi/v1/scripts", timeout=60).json()
    assert "dato" in scripts["txt2img"] and "dato" in scripts["img2img"]
    info = [s for s in requests.get(webui + "/sdapi/v1/script-info", timeout=60).json() if s["name"] == "dato"]
    spec = requests.get(webui + "/dato/v1/args", timeout=60).json()
    assert [a["name"] for a in spec["args"]][:4] == ["enabled", "method", "ratio", "schedule"]
    assert len(info) == 2 and all(len(s["args"]) == len(spec["args"]) == 20 for s in info)


def test_off_on_off_third_image_identical_to_first(runs):
    off, on, again = runs["off"], runs["on"], runs["off_again"]
    assert pixels(off) == pixels(again)
    assert pixels(on) != pixels(off)
    on_info, off_info = on["info"]["infotexts"][0], off["info"]["infotexts"][0]
    assert "DaTo: True" in on_info and "DaTo schedule: balanced" in on_info and "DaTo schedule hash:" in on_info
    assert "DaTo" not in off_info and "DaTo" not in again["info"]["infotexts"][0]
    print(f"\n[timing] {SIZE}px {STEPS} steps Euler seed 1234: off {off['elapsed']:.1f} s, "
          f"on (prune 0.4, balanced) {on['elapsed']:.1f} s, off again {again['elapsed']:.1f} s, "
          f"speed-up {off['elapsed'] / on['elapsed']:.2f}x")


def test_pasting_the_infotext_through_the_api_reproduces_the_run(webui, runs):
    infotext = runs["on"]["info"]["infotexts"][0]
    pasted = requests.post(webui + "/sdapi/v1/txt2img", json={"infotext": infotext, "width": SIZE, "height": SIZE},
                           timeout=TIMEOUT)
    assert pasted.status_code == 200, pasted.text[:2000]
    result = pasted.json()
    info = json.loads(result["info"])["infotexts"][0]
    assert "DaTo: True" in info and "DaTo method: prune" in info and "DaTo schedule: balanced" in info
    assert pixels(result) == pixels(runs["on"])


def test_bad_arguments_are_refused_with_422_before_queueing(webui):
    start = time.perf_counter()
    answer = requests.post(webui + "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {
        "dato": {"args": [True, "prune", 0.75, "balanced"]}}}, timeout=120)
    assert answer.status_code == 422 and "too large for 'prune'" in answer.json()["detail"]
    answer = requests.post(webui + "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {
        "dato": {"args": [{"ratoi": 0.3}]}}}, timeout=120)
    assert answer.status_code == 422 and "unknown argument(s) 'ratoi'" in answer.json()["detail"]
    answer = requests.post(webui + "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {
        "dato": {"args": [{"schedule": "uniform", "depth": 20}]}}}, timeout=120)
    assert answer.status_code == 422 and "cache depth 20 is outside 0..11" in answer.json()["detail"]
    answer = requests.post(webui + "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {
        "dato": {"args": [{"adaptive": 0.2, "speed_target": 3}]}}}, timeout=120)
    assert answer.status_code == 422 and "use one of the two" in answer.json()["detail"]
    bad_rule = {"name": "test-bad-rule", "cache": ["full", 0, 0], "ratio": [0.0] * 3, "method": "none",
                "rule": {"kind": "uniform", "interval": 0, "depth": 0, "ratio": 0.0}}
    answer = requests.post(webui + "/dato/v1/schedules", json=bad_rule, timeout=60)
    assert answer.status_code == 422 and "interval" in answer.json()["detail"]
    assert time.perf_counter() - start < 60


def _deepcache_installed(url: str) -> bool:
    return "deepcache" in {s.lower() for s in requests.get(url + "/sdapi/v1/scripts", timeout=60).json()["txt2img"]}


def test_another_step_cache_on_the_unet_is_detected_and_reported(webui):
    """Issue 12: with the DeepCache extension on, our schedule is not applied, and the infotext says why."""
    if not _deepcache_installed(webui):
        pytest.skip("the DeepCache extension (sd-webui-deepcache-standalone) is not installed")
    deepcache = {"deepcache_enable_pass": "both passes", "deepcache_cache_resnet_level": 0,
                 "deepcache_cache_enable_step_percentage": 0.0, "deepcache_full_run_step_rate": 3}
    small = {"width": 64, "height": 64, "steps": 6}
    alone = txt2img(webui, None, override_settings=deepcache, **small)
    both = txt2img(webui, ON, override_settings=deepcache, **small)
    assert pixels(both) == pixels(alone), "DeepCache ran as it does alone; our patch stayed off"
    info = both["info"]["infotexts"][0]
    assert "DaTo off: the DeepCache extension" in info
    plain = txt2img(webui, None, override_settings={"deepcache_enable_pass": "disable"}, **small)
    assert pixels(plain) != pixels(alone)


def test_adaptive_caching_through_the_api(webui):
    small = {"width": 64, "height": 64, "steps": 8}
    off = txt2img(webui, None, **small)
    adaptive = txt2img(webui, [{"method": "none", "schedule": "none", "adaptive": 0.9, "adaptive_cap": 2}], **small)
    info = adaptive["info"]["infotexts"][0]
    assert "DaTo adaptive: 0.9" in info and "DaTo adaptive cap: 2" in info
    assert pixels(adaptive) != pixels(off)


def test_named_arguments_and_hires_pass_settings(webui):
    result = txt2img(webui, [{"schedule": "uniform", "interval": 2, "hr_mode": "own", "hr_method": "merge",
                              "hr_ratio": 0.3, "hr_schedule": "none"}],
                     width=64, height=64, steps=4, enable_hr=True, hr_scale=2, hr_second_pass_steps=3,
                     denoising_strength=0.5, hr_upscaler="Latent")
    info = result["info"]["infotexts"][0]
    assert "DaTo schedule: uniform, DaTo interval: 2, DaTo depth: 0" in info
    assert "DaTo hires: own, DaTo hires method: merge, DaTo hires ratio: 0.3, DaTo hires schedule: none" in info


def test_schedule_routes(webui):
    listing = requests.get(webui + "/dato/v1/schedules", timeout=60).json()
    assert "balanced" in {s["name"] for s in listing["schedules"]}
    one = requests.get(webui + "/dato/v1/schedules/balanced", params={"steps": 20}, timeout=60).json()
    assert one["resampled"]["preview"] == "F0000F0000F0000F0000"
    name = f"test-{uuid.uuid4().hex[:8]}"
    schedule = {"name": name, "cache": ["full", 0, 0, "full", 0, 0], "ratio": [0.0] * 6, "method": "none"}
    created = requests.post(webui + "/dato/v1/schedules", json=schedule, timeout=60)
    assert created.status_code == 201, created.text
    try:
        assert requests.post(webui + "/dato/v1/schedules", json=schedule, timeout=60).status_code == 409
        bad = requests.post(webui + "/dato/v1/schedules", json={**schedule, "name": name + "x", "cache": [0]},
                            timeout=60)
        assert bad.status_code == 422 and "cache" in bad.json()["detail"]
        assert requests.get(webui + f"/dato/v1/schedules/{name}", timeout=60).json()["preview"] == "F00F00"
    finally:
        assert requests.delete(webui + f"/dato/v1/schedules/{name}", timeout=60).status_code == 200
    assert requests.delete(webui + "/dato/v1/schedules/balanced", timeout=60).status_code == 403
    assert requests.get(webui + f"/dato/v1/schedules/{name}", timeout=60).status_code == 404


def test_interrupted_generation_then_clean_ones(webui, runs):
    holder = {}

    def generate():
        holder["result"] = requests.post(webui + "/sdapi/v1/txt2img", json={
            **BASE, "steps": STEPS * 3, "alwayson_scripts": {"dato": {"args": ON}}}, timeout=TIMEOUT)

    thread = threading.Thread(target=generate)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state = requests.get(webui + "/sdapi/v1/progress", params={"skip_current_image": True}, timeout=60).json()
        if state["state"]["sampling_step"] >= 2:
            break
        time.sleep(1)
    requests.post(webui + "/sdapi/v1/interrupt", timeout=60)
    thread.join(TIMEOUT)
    assert holder["result"].status_code == 200
    clean_off = txt2img(webui)
    assert pixels(clean_off) == pixels(runs["off"])
    clean_on = txt2img(webui, ON)
    assert pixels(clean_on) == pixels(runs["on"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Just enough of the DevTools protocol to load the page, click, evaluate and screenshot."""

    def __init__(self, binary):
        from websockets.sync.client import connect

        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="dato-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--window-size=1400,1400", f"--remote-debugging-port={self.port}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=5).json()
                page = next(t for t in targets if t["type"] == "page")
                break
            except (requests.RequestException, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            self.process.wait(30)
            shutil.rmtree(self.profile, ignore_errors=True)


def test_page_renders_the_accordion_and_its_preview(webui):
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary")
    browser = Chromium(binary)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=webui + "/")
        app = "(typeof gradioApp === 'function' ? gradioApp() : document)"
        browser.wait_for(f"!!{app}.querySelector('#script_txt2img_dato_enabled .label-wrap')")
        browser.evaluate(f"{app}.querySelector('#script_txt2img_dato_enabled .label-wrap').click()")
        browser.wait_for(f"!!{app}.querySelector('#script_txt2img_dato_preview .dato-preview.dato-drawn')")
        # the page forwards "Sampling steps" to the preview: 12 steps of 'balanced' = F0000F0000F0
        browser.evaluate(f"""(() => {{ const el = {app}.querySelector('#txt2img_steps input[type=number]');
            el.value = 12; updateInput(el); el.dispatchEvent(new Event('change')); }})()""")
        preview = f"{app}.querySelector('#script_txt2img_dato_preview .dato-preview')"
        browser.wait_for(f"!!{preview} && JSON.parse({preview}.getAttribute('data-dato')).passes[0].steps === 12")
        assert browser.evaluate(f"JSON.parse({preview}.getAttribute('data-dato')).passes[0].preview") == \
            "F0000F0000F0"
        browser.wait_for(f"{app}.querySelectorAll('#script_txt2img_dato_preview .dato-cells .dato-cell').length"
                         " === 12")
        cells = browser.evaluate(f"{app}.querySelectorAll('#script_txt2img_dato_preview .dato-cells .dato-cell')"
                                 ".length")
        assert cells == 12
        summary = browser.evaluate(f"{app}.querySelector('#script_txt2img_dato_summary').textContent")
        assert "balanced" in summary
        box = browser.evaluate(f"""(() => {{ const el = {app}.querySelector('#script_txt2img_dato_enabled');
            el.scrollIntoView(); const r = el.getBoundingClientRect();
            return {{x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}}; }})()""")
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": box["x"] - 4, "y": box["y"] - 4, "width": box["width"] + 8,
                                  "height": box["height"] + 8, "scale": 1})
        target = Path(os.environ.get("WEBUI_SCREENSHOT", ROOT / "docs" / "accordion.png"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        assert target.stat().st_size > 1000
    finally:
        browser.close()
