"""The planner in a real WebUI: a speed target runs no UNet forward of its own (with the ControlNet extension's
forward in place when it is installed), and an unreachable target says so in the API's ``info``.

Needs the test-only probe extension (``tests/webui_real/probe_extension``, see its script) beside ours for the
call count; without it that test is skipped with the reason.
"""

from __future__ import annotations

import base64
import io
import json

import pytest

requests = pytest.importorskip("requests")
Image = pytest.importorskip("PIL.Image")

BASE = {"prompt": "a photo of a cat", "negative_prompt": "", "steps": 6, "width": 128, "height": 128, "seed": 7,
        "sampler_name": "Euler", "cfg_scale": 7, "batch_size": 1, "n_iter": 1}


def _probe(webui):
    answer = requests.post(webui + "/dato-test-probe/v1/reset", timeout=60)
    if answer.status_code == 404:
        pytest.skip("the probe extension is not installed (ln -s tests/webui_real/probe_extension "
                    "<webui>/extensions/dato-test-probe, then restart the WebUI)")
    assert answer.ok, answer.text


def _controlnet_unit(webui):
    """One ControlNet unit (module none, the first model listed) when the extension is installed, else None."""
    answer = requests.get(webui + "/controlnet/model_list", timeout=60)
    models = answer.json().get("model_list", []) if answer.ok else []
    if not models:
        return None
    buffer = io.BytesIO()
    Image.new("RGB", (BASE["width"], BASE["height"]), (128, 64, 32)).save(buffer, format="PNG")
    return {"enabled": True, "module": "none", "model": models[0], "resize_mode": "Just Resize",
            "control_mode": "Balanced", "image": base64.b64encode(buffer.getvalue()).decode()}


def _txt2img(webui, dato_args, unit=None):
    scripts = {"dato": {"args": dato_args}}
    if unit is not None:
        scripts["controlnet"] = {"args": [unit]}
    answer = requests.post(webui + "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": scripts}, timeout=1800)
    assert answer.status_code == 200, answer.text[:2000]
    return json.loads(answer.json()["info"])


@pytest.mark.parametrize("controlnet", [False, True], ids=["plain", "controlnet"])
def test_a_speed_target_runs_no_forward_of_its_own(webui, controlnet):
    unit = _controlnet_unit(webui) if controlnet else None
    if controlnet and unit is None:
        pytest.skip("the ControlNet extension (with a model) is not installed")
    _probe(webui)
    info = _txt2img(webui, [{"speed_target": 2.5}], unit)
    assert "DaTo speed target: 2.5" in info["infotexts"][0] and "DaTo off" not in info["infotexts"][0]
    calls = requests.get(webui + "/dato-test-probe/v1/unet-calls", timeout=60).json()["calls"]
    assert calls == BASE["steps"]  # one batched cond/uncond UNet call a step; planning traced nothing


def test_an_unreachable_target_is_in_the_api_info(webui):
    info = _txt2img(webui, [{"speed_target": 50}])
    text = info["infotexts"][0]
    assert "DaTo: True" in text and "DaTo speed target: 50.0" in text
    assert "DaTo off: speed target 50x unreachable at 6 steps; nearest reachable " in text
    assert info["extra_generation_params"]["DaTo off"].startswith("speed target 50x unreachable at 6 steps")
