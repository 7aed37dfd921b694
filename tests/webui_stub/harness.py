"""Wire the stand-in host to the extension: load its entry script, build its UI, run generations like the API.

Use :func:`host` (a fresh host with the extension loaded) from tests; it
returns a :class:`Host` with the runners, the fake model and helpers that
follow the real code paths (``modules/api/api.py`` for script arguments,
``modules/ui.py`` for where the accordion is built).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

STUB = Path(__file__).resolve().parent
ROOT = STUB.parents[1]
if str(STUB) not in sys.path:
    sys.path.insert(0, str(STUB))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from modules import (  # noqa: E402
    errors,
    infotext_utils,
    processing,
    script_callbacks,
    scripts,
    sd_models,
    shared,
)


class FakeLatentDiffusion(torch.nn.Module):
    """Shaped like ldm's ``LatentDiffusion`` as the WebUI holds it: ``.model.diffusion_model`` is the UNet."""

    cond_stage_key = "txt"
    is_sdxl = False

    def __init__(self, unet: torch.nn.Module, context_dim: int = 32, name: str = "tiny") -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.model.conditioning_key = "crossattn"
        self.context_dim = context_dim
        self.sd_model_hash = name

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, context=cond)


class FakeSDXL(torch.nn.Module):
    """Shaped like sgm's ``DiffusionEngine`` as A1111 v1.10.1 holds an SDXL checkpoint: ``is_sdxl``, a
    ``conditioner``, ``.model.diffusion_model`` the sgm UNet, conds as ``{"crossattn", "vector"}`` dicts
    (``sd_models_xl.apply_model`` -> ``OpenAIWrapper``: ``diffusion_model(x, timesteps=t, context=..., y=...)``)."""

    is_sdxl = True
    is_sd1 = is_sd2 = False
    cond_stage_key = "txt"

    def __init__(self, unet: torch.nn.Module, context_dim: int = 32, adm_in_channels: int = 16,
                 name: str = "tiny-xl") -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.model.conditioning_key = "crossattn"
        self.conditioner = torch.nn.Module()
        self.context_dim = context_dim
        self.adm_in_channels = adm_in_channels
        self.sd_model_hash = name

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, timesteps=t, context=cond["crossattn"], y=cond["vector"])


def make_sdxl_model(seed: int = 0, name: str = "tiny-xl") -> FakeSDXL:
    from dato.evaluation.models import build_unet, tiny_sdxl_unet_config

    return FakeSDXL(build_unet(tiny_sdxl_unet_config(), seed=seed), name=name)


def make_model(seed: int = 0, name: str = "tiny") -> FakeLatentDiffusion:
    from dato.evaluation.models import build_unet, tiny_unet_config

    return FakeLatentDiffusion(build_unet(tiny_unet_config(), seed=seed), name=name)


class Host:
    def __init__(self) -> None:
        self.txt2img = scripts.scripts_txt2img
        self.img2img = scripts.scripts_img2img
        self.blocks: dict[str, gr.Blocks] = {}
        self.default_args: dict[str, list] = {}

    # ------------------------------------------------------------------ UI
    def build_ui(self) -> None:
        """As ``modules/ui.py``: per tab, initialise scripts and build the 'accordions' section, then the rest."""
        script_callbacks.before_ui_callback()
        for tab, runner in (("txt2img", self.txt2img), ("img2img", self.img2img)):
            scripts.scripts_current = runner
            runner.initialize_scripts(is_img2img=tab == "img2img")
            with gr.Blocks() as demo:
                runner.prepare_ui()
                with gr.Row(elem_id=f"{tab}_accordions", elem_classes="accordions"):
                    runner.setup_ui_for_section("accordions")
                runner.setup_ui_for_section(None)
            self.blocks[tab] = demo
            scripts.scripts_current = None
            self.default_args[tab] = self.init_default_script_args(runner)

    @staticmethod
    def init_default_script_args(runner) -> list:
        """``Api.init_default_script_args``: ``ui()`` is called again (twice) inside a throwaway Blocks."""
        last = max([1] + [s.args_to for s in runner.scripts if s.args_to is not None])
        script_args = [None] * last
        script_args[0] = 0
        with gr.Blocks():
            for script in runner.scripts:
                if script.ui(script.is_img2img):
                    values = [elem.value for elem in script.ui(script.is_img2img)]
                    script_args[script.args_from:script.args_to] = values
        return script_args

    def script(self, tab: str = "txt2img"):
        runner = self.txt2img if tab == "txt2img" else self.img2img
        return next(s for s in runner.scripts if s.title() == "DaTo")

    # ------------------------------------------------------------------ API
    def init_script_args(self, tab: str, alwayson_scripts: dict | None) -> list:
        """``Api.init_script_args`` for AlwaysOn scripts: positional copy, short lists keep the defaults."""
        runner = self.txt2img if tab == "txt2img" else self.img2img
        script_args = list(self.default_args[tab])
        for name, entry in (alwayson_scripts or {}).items():
            script = next((s for s in runner.scripts if s.title().lower() == name.lower()), None)
            if script is None:
                raise LookupError(f"always on script {name} not found")
            if "args" in entry:
                for idx in range(0, min(script.args_to - script.args_from, len(entry["args"]))):
                    script_args[script.args_from + idx] = entry["args"][idx]
        return script_args

    def generate(self, tab: str = "txt2img", alwayson_scripts: dict | None = None, script=None,
                 script_run_args: tuple = (), **fields: Any) -> processing.Processed:
        """``text2imgapi``/``img2imgapi``: a job (``state.begin``/``end``) around ``process_images``."""
        runner = self.txt2img if tab == "txt2img" else self.img2img
        cls = processing.StableDiffusionProcessingTxt2Img if tab == "txt2img" else \
            processing.StableDiffusionProcessingImg2Img
        if tab == "img2img" and "init_latent" not in fields:
            fields["init_latent"] = torch.randn(1, 4, fields.get("height", 64) // 8, fields.get("width", 64) // 8,
                                                generator=torch.Generator().manual_seed(7))
        p = cls(**fields)
        p.scripts = runner
        p.script_args = tuple(self.init_script_args(tab, alwayson_scripts))
        shared.state.begin(job=f"scripts_{tab}")
        try:
            if script is not None:
                return script.run(p, *script_run_args)
            return processing.process_images(p)
        finally:
            shared.state.end()

    def paste(self, infotext: str, tab: str = "txt2img") -> list:
        runner = self.txt2img if tab == "txt2img" else self.img2img
        return infotext_utils.paste(infotext, runner.infotext_fields)


def fresh_host(model: torch.nn.Module | None = None, build_ui: bool = True, extra_scripts: bool = True,
               user_dir: str | None = None, settings: dict | None = None) -> Host:
    """Reset the stand-in host, load the extension (and the X/Y/Z stand-in) and build the UI.

    ``user_dir`` points Settings > DaTo > schedule folder somewhere harmless
    (tests never write into the checkout); ``settings`` are saved values.
    """
    fresh = shared.default_options()  # modules bound ``opts``/``state`` at import: reset those objects in place
    shared.opts.data_labels = fresh.data_labels
    shared.opts.data = fresh.data
    shared.state.begin(job="reset")
    shared.state.end()
    errors.reported.clear()
    if model is not None:
        shared.sd_model = model
    files = [scripts.ScriptFile(str(ROOT), "dato_script.py", str(ROOT / "scripts" / "dato_script.py"))]
    if extra_scripts:
        files.append(scripts.ScriptFile(str(STUB), "xyz_grid.py", str(STUB / "xyz_grid.py")))
    scripts.load_scripts(files)
    script_callbacks.ui_settings_callback()
    if user_dir is not None:
        shared.opts.dato_schedule_dir = str(user_dir)
    for key, value in (settings or {}).items():
        setattr(shared.opts, key, value)
    host = Host()
    if build_ui:
        host.build_ui()
    return host


def runtime():
    """The extension's run-time state (``dato_webui.runtime.RUNTIME``)."""
    return sys.modules["dato_webui.runtime"].RUNTIME


@pytest.fixture()
def model():
    return make_model()


@pytest.fixture()
def host(model, tmp_path):
    """A fresh stand-in WebUI with the extension loaded and its UI built; the tiny model is loaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy tensors: one thread is fastest, and fair to a shared machine
    h = fresh_host(model, user_dir=tmp_path / "user")
    yield h
    torch.set_num_threads(threads)
    script_callbacks.script_unloaded_callback()
    import dato

    dato.remove_patch(model)


__all__ = ["FakeLatentDiffusion", "FakeSDXL", "Host", "fresh_host", "host", "make_model", "make_sdxl_model", "model",
           "runtime", "sd_models"]
