"""sd-webui-dato: the one script the WebUI loads (AUTOMATIC1111 v1.10.x).

The WebUI executes every ``scripts/*.py`` of an extension with the extension
folder first on ``sys.path`` (``modules/scripts.py: load_scripts``), so the
engine imports as ``dato``; the glue package ``scripts/dato_webui`` is loaded
explicitly under the name ``dato_webui`` (the WebUI does not scan sub-folders
and restores ``sys.path`` afterwards).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from modules import script_callbacks, scripts

import dato  # noqa: F401  (the engine, from this extension's folder)


def _load_glue():
    here = os.path.dirname(os.path.abspath(__file__))
    init = os.path.join(here, "dato_webui", "__init__.py")
    loaded = sys.modules.get("dato_webui")
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == init:
        return loaded
    spec = importlib.util.spec_from_file_location("dato_webui", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dato_webui"] = module
    spec.loader.exec_module(module)
    return module


_load_glue()

from dato_webui import api, deps, settings, store, ui, xyz  # noqa: E402
from dato_webui.runtime import RUNTIME  # noqa: E402

search_tab = None
if os.environ.get("DATO_SEARCH_TAB", "1").strip().lower() not in ("0", "false", "off", "no"):
    try:  # optional: the Search tab (on_ui_tabs + register(app)), when that module is present
        search_tab = importlib.import_module("dato_webui.search_tab")
    except ModuleNotFoundError as exc:
        if exc.name != "dato_webui.search_tab":
            raise

_warning = store.ensure_engine_matches()
if _warning:
    print(f"[sd-webui-dato] {_warning}")


class DatoScript(scripts.Script):
    """The DaTo acceleration accordion (AlwaysOn, txt2img and img2img)."""

    section = "accordions"  # beside Hires. fix and Refiner
    create_group = False

    def title(self):
        return "DaTo"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return ui.build(self, is_img2img)

    def process(self, p, *args):
        RUNTIME.begin(p, args, settings.defaults(), xyz.overrides_of(p))

    def process_before_every_sampling(self, p, *args, **kwargs):
        RUNTIME.before_sampling(p)

    def postprocess(self, p, processed, *args):
        RUNTIME.end(p)


def _on_app_started(demo, app):
    deps.add_to_path()
    api.register(app)
    if search_tab is not None and hasattr(search_tab, "register"):
        search_tab.register(app)
    if search_tab is not None:  # calibration and gate routes (their sections live in the Search tab)
        importlib.import_module("dato_webui.generators").register(app)


def _on_model_loaded(sd_model):
    RUNTIME.remove("a model was loaded")


def _on_infotext_pasted(infotext, params):
    from dato.options import normalize_pasted

    for message in normalize_pasted(params, store.content_hash, store.find_by_hash):
        print(f"[sd-webui-dato] {message}")
        try:
            import gradio as gr

            gr.Warning(f"DaTo: {message}")
        except Exception:
            pass


script_callbacks.on_cfg_denoiser(RUNTIME.on_cfg_denoiser, name="dato_step_clock")
script_callbacks.on_model_loaded(_on_model_loaded, name="dato_model_loaded")
script_callbacks.on_script_unloaded(lambda: RUNTIME.reset("extension reloaded"), name="dato_unload")
script_callbacks.on_app_started(_on_app_started, name="dato_routes")
script_callbacks.on_ui_settings(settings.on_ui_settings, name="dato_settings")
script_callbacks.on_before_ui(xyz.add_axes, name="dato_xyz_axes")
script_callbacks.on_before_ui(deps.add_to_path, name="dato_deps")
script_callbacks.on_infotext_pasted(_on_infotext_pasted, name="dato_infotext")
if search_tab is not None and hasattr(search_tab, "on_ui_tabs"):
    script_callbacks.on_ui_tabs(search_tab.on_ui_tabs, name="dato_search_tab")
