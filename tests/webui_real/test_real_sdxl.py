"""sd-webui-dato on an SDXL checkpoint in a real AUTOMATIC1111 WebUI: off/on/off, a depth SDXL lacks,
hires fix, img2img, an interrupt.

Opt-in twice: a real WebUI (see conftest.py) with an SDXL checkpoint loaded, and ``WEBUI_SDXL=1``.
Without SDXL weights, ``make_random_sdxl_ckpt.py`` (beside this file) writes a random one that the
WebUI detects as SDXL::

    WEBUI_DIR/venv/bin/python tests/webui_real/make_random_sdxl_ckpt.py WEBUI_DIR \\
        WEBUI_DIR/models/Stable-diffusion/random-sdxl.safetensors

then start the WebUI with ``--ckpt`` of it. Offline, set *Live preview method* to something other than
*Approx NN* (``POST /sdapi/v1/options {"show_progress_type": "Approx cheap"}``): for SDXL the WebUI
downloads ``vaeapprox-sdxl.pt`` on the first generation otherwise (SD1's ships with it). SDXL on a CPU
is slow (a 512 px step of the base model, cond and uncond, takes about 20 s on 2 cores), so sizes and
steps are small: ``WEBUI_SDXL_SIZE`` (512) for off/on/off, ``WEBUI_SDXL_SMALL`` (256) for the other
cases, ``WEBUI_SDXL_STEPS`` (6).
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

import pytest

requests = pytest.importorskip("requests")
Image = pytest.importorskip("PIL.Image")

SIZE = int(os.environ.get("WEBUI_SDXL_SIZE", "512"))
SMALL = int(os.environ.get("WEBUI_SDXL_SMALL", "256"))
STEPS = int(os.environ.get("WEBUI_SDXL_STEPS", "6"))
TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "3600"))
BASE = {"prompt": "a photograph of a red fox in the snow", "negative_prompt": "", "steps": STEPS, "seed": 1234,
        "sampler_name": "Euler", "cfg_scale": 7, "batch_size": 1, "n_iter": 1}
ON = [{"enabled": True, "schedule": "balanced"}]
OFF = [{"enabled": False}]
TIMINGS: dict[str, float] = {}

pytestmark = pytest.mark.skipif(os.environ.get("WEBUI_SDXL") != "1",
                                reason="set WEBUI_SDXL=1 with an SDXL checkpoint loaded (see this module's docstring)")


def generate(url: str, route: str = "txt2img", args=None, **extra) -> dict:
    body = {**BASE, "width": SIZE, "height": SIZE, **extra}
    if args is not None:
        body["alwayson_scripts"] = {"dato": {"args": args}}
    start = time.perf_counter()
    answer = requests.post(f"{url}/sdapi/v1/{route}", json=body, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text[:2000]
    data = answer.json()
    data["elapsed"] = time.perf_counter() - start
    data["info"] = json.loads(data["info"])
    return data


def pixels(result: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB").tobytes()


def dato_keys(result: dict) -> dict:
    return {k: v for k, v in result["info"]["extra_generation_params"].items() if k.startswith("DaTo")}


DEPTH_10 = [{"enabled": True, "method": "none", "schedule": "uniform", "interval": 2, "depth": 10}]


@pytest.fixture(scope="module")
def sdxl(webui):
    """The loaded checkpoint must be SDXL: the argument check knows the loaded UNet's depths (0..8, not 0..11)."""
    answer = requests.post(webui + "/dato/v1/args", json={"args": DEPTH_10}, timeout=60)
    assert answer.status_code == 422 and "(0..8)" in answer.json()["detail"], \
        f"the WebUI's model is not SDXL (depth 10 answered {answer.status_code}: {answer.text[:300]})"
    return webui


@pytest.fixture(scope="module")
def runs(sdxl):
    results = {"off": generate(sdxl), "on": generate(sdxl, args=ON), "off_again": generate(sdxl, args=OFF)}
    for key, value in results.items():
        TIMINGS[key] = value["elapsed"]
    print(f"\n[sdxl timing] {SIZE}px, {STEPS} Euler steps: off {TIMINGS['off']:.0f} s, on (balanced) "
          f"{TIMINGS['on']:.0f} s, off again {TIMINGS['off_again']:.0f} s")
    return results


def test_off_on_off_on_sdxl(runs):
    assert pixels(runs["off_again"]) == pixels(runs["off"]), "the patch came off: the third image is the first"
    assert pixels(runs["on"]) != pixels(runs["off"]), "the schedule changed the image"
    assert dato_keys(runs["on"])["DaTo schedule"] == "balanced" and not dato_keys(runs["off_again"])
    assert not dato_keys(runs["off"])


def test_a_depth_the_sdxl_unet_lacks_is_refused_before_queueing(sdxl):
    """Depth 10 exists on SD1.x but not on SDXL's 9-block UNet: refused with 422, not converted."""
    answer = requests.post(sdxl + "/sdapi/v1/txt2img", json={**BASE, "width": 64, "height": 64, "alwayson_scripts":
                                                             {"dato": {"args": DEPTH_10}}}, timeout=60)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("sd-webui-dato: cache depth 10 is outside 0..8 for this SDXL (9-block) "
                                              "UNet: depth = 10 (the uniform rule) is refused, not converted")


def test_hires_fix_uses_the_schedule_on_both_passes(sdxl):
    hires = {"width": SMALL, "height": SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
             "hr_second_pass_steps": STEPS, "denoising_strength": 0.5}
    off = generate(sdxl, **hires)
    on = generate(sdxl, args=ON, **hires)
    off_again = generate(sdxl, args=OFF, **hires)
    size = Image.open(io.BytesIO(base64.b64decode(on["images"][0]))).size
    assert size == (int(SMALL * 1.5), int(SMALL * 1.5))
    assert pixels(off_again) == pixels(off) and pixels(on) != pixels(off)
    assert dato_keys(on)["DaTo"] in (True, "True") and "Hires upscale" in on["info"]["infotexts"][0]
    print(f"\n[sdxl hires] {SMALL}->{int(SMALL * 1.5)} px: off {off['elapsed']:.0f} s, on {on['elapsed']:.0f} s")


def test_img2img_on_sdxl(sdxl, runs):
    init = runs["off"]["images"][0]
    body = {"init_images": [init], "denoising_strength": 0.6, "width": SMALL, "height": SMALL}
    off = generate(sdxl, "img2img", **body)
    on = generate(sdxl, "img2img", args=ON, **body)
    off_again = generate(sdxl, "img2img", args=OFF, **body)
    assert pixels(off_again) == pixels(off) and pixels(on) != pixels(off)
    assert dato_keys(on)["DaTo schedule"] == "balanced"


def test_an_interrupted_sdxl_run_leaves_the_next_one_clean(sdxl):
    small = {"width": SMALL, "height": SMALL}
    reference = generate(sdxl, **small)
    holder: dict = {}

    def run():
        body = {**BASE, **small, "steps": STEPS * 3, "alwayson_scripts": {"dato": {"args": ON}}}
        holder["answer"] = requests.post(sdxl + "/sdapi/v1/txt2img", json=body, timeout=TIMEOUT)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while requests.get(sdxl + "/sdapi/v1/progress", params={"skip_current_image": True},
                       timeout=60).json()["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.5)
    requests.post(sdxl + "/sdapi/v1/interrupt", timeout=60)
    thread.join(TIMEOUT)
    assert holder["answer"].status_code == 200
    assert pixels(generate(sdxl, **small)) == pixels(reference), "no patch left behind by the interrupted run"
