"""The extension in the stand-in WebUI with an SDXL-shaped model (sgm UNet, dict conds with the size vector)."""

from __future__ import annotations

import pytest
import torch
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from modules import script_callbacks, sd_models, shared

import dato

pytest_plugins = ["webui_stub.harness"]  # the host fixture

ON = {"dato": {"args": [True, "prune", 0.4, "balanced"]}}


@pytest.fixture()
def model():  # replaces the harness's SD1 model: every host in this file has an SDXL checkpoint loaded
    return harness.make_sdxl_model()


class Spy:
    def __init__(self):
        self.seen = []
        script_callbacks.on_cfg_denoiser(self, name="test_sdxl_spy")

    def __call__(self, params):
        unet = dato.find_unet(shared.sd_model)
        patch = dato.get_patch(unet)
        self.seen.append({"model": shared.sd_model.sd_model_hash, "hr": params.denoiser.p.is_hr_pass,
                          "patched": patch is not None,
                          "levels": None if patch is None else {ds for _, ds, _ in patch.token_blocks}})


def test_off_on_off_on_sdxl_the_third_image_equals_the_first(host, model):
    spy = Spy()
    off_1 = host.generate(steps=5, seed=3)
    on = host.generate(alwayson_scripts=ON, steps=5, seed=3)
    off_2 = host.generate(steps=5, seed=3)
    assert torch.equal(off_1.images[0], off_2.images[0]) and not torch.equal(off_1.images[0], on.images[0])
    patched = [s for s in spy.seen if s["patched"]]
    assert len(patched) == 5 and all(s["levels"] == {2} for s in patched)  # SDXL's 64x64 level at 1024 px
    assert "DaTo: True" in on.infotexts[0] and "DaTo method: prune" in on.infotexts[0]
    assert "DaTo" not in off_2.infotexts[0] and dato.get_patch(model) is None


def test_hires_and_img2img_on_sdxl(host, model):
    spy = Spy()
    args = [True, "prune", 0.4, "balanced", 5, 0, 1, "own", "downsample", 0.5, "uniform", 2, 1]
    result = host.generate(alwayson_scripts={"dato": {"args": args}}, steps=4, seed=1, enable_hr=True,
                           hr_second_pass_steps=3, denoising_strength=0.6)
    assert all(s["patched"] for s in spy.seen) and any(s["hr"] for s in spy.seen)
    assert "DaTo hires method: downsample" in result.infotexts[0]
    i2i = host.generate("img2img", alwayson_scripts=ON, steps=6, seed=1, denoising_strength=0.5)
    assert "DaTo method: prune" in i2i.infotexts[0] and dato.get_patch(model) is None


def test_split_cond_uncond_calls_on_sdxl(host, model):
    shared.opts.batch_cond_uncond = False
    on = host.generate(alwayson_scripts=ON, steps=4, seed=2)
    assert torch.isfinite(on.images[0]).all() and dato.get_patch(model) is None


def test_a_depth_sdxl_lacks_runs_unaccelerated_and_says_why(host, model):
    result = host.generate(alwayson_scripts={"dato": {"args": [True, "none", 0.0, "uniform", 2, 10]}}, steps=4, seed=1)
    assert "cache depth 10 is outside 0..8 for this SDXL (9-block) UNet" in result.comments
    assert dato.get_patch(model) is None


def test_the_patch_follows_the_refiner_switch(host, model):
    refiner = harness.make_sdxl_model(seed=5, name="refiner")
    spy = Spy()

    def switch(params):  # what sd_samplers_common.apply_refiner does at refiner_switch_at (before the UNet call)
        if params.denoiser.step == 3 and shared.sd_model is model:
            sd_models.load_model(refiner)

    script_callbacks.on_cfg_denoiser(switch, name="test_refiner")
    try:
        result = host.generate(alwayson_scripts=ON, steps=6, seed=1)
    finally:
        script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
        sd_models.load_model(model)
    assert [s["model"] for s in spy.seen] == ["tiny-xl"] * 4 + ["refiner"] * 2
    assert all(s["patched"] for s in spy.seen[4:])  # the refiner samples with the patch
    assert "the patch follows it" in result.comments
    assert dato.get_patch(model) is None and dato.get_patch(refiner) is None


def test_a_refiner_the_engine_cannot_patch_stops_the_patch_and_says_so(host, model):
    class NotAUNet(torch.nn.Module):
        is_sdxl, context_dim, adm_in_channels, sd_model_hash = True, 32, 16, "odd"

        def apply_model(self, x, t, cond):
            return x * 0.9

    odd = NotAUNet()

    def switch(params):
        if params.denoiser.step == 2 and shared.sd_model is model:
            sd_models.load_model(odd)

    script_callbacks.on_cfg_denoiser(switch, name="test_refiner")
    try:
        result = host.generate(alwayson_scripts=ON, steps=5, seed=1)
    finally:
        script_callbacks.callback_map["callbacks_cfg_denoiser"].pop()
        sd_models.load_model(model)
    assert "stopped at the model switch" in result.comments and dato.get_patch(model) is None
