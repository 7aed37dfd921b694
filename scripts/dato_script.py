"""sd-webui-dato: the one script the WebUI loads (AUTOMATIC1111 v1.10.x).

The WebUI executes every ``scripts/*.py`` of an extension with the extension
folder first on ``sys.path`` (``modules/scripts.py: load_scripts``), so the
engine imports as ``dato``. It does not scan sub-folders, so this file imports
the glue package ``scripts/dato_webui`` itself, with ``scripts/`` on
``sys.path`` for that one import (the WebUI restores ``sys.path`` afterwards
anyway; the package's own modules are found through the package from then on).
This file is not called ``dato.py``: beside the package it would shadow the engine.
"""

from __future__ import annotations

import importlib
import os
import sys

from modules import script_callbacks, scripts

import dato  # noqa: F401  (the engine, from this extension's folder)

GLUE = "dato_webui"


def _load_glue():
    """Import ``scripts/dato_webui`` as ``dato_webui`` (a copy of another checkout already imported is dropped)."""
    here = os.path.dirname(os.path.abspath(__file__))
    loaded = sys.modules.get(GLUE)
    if loaded is not None and os.path.dirname(os.path.abspath(loaded.__file__ or "")) != os.path.join(here, GLUE):
        for name in [n for n in sys.modules if n == GLUE or n.startswith(GLUE + ".")]:
            del sys.modules[name]
    sys.path.insert(0, here)
    try:
        return importlib.import_module(GLUE)
    finally:
        sys.path.remove(here)


_load_glue()

from dato_webui import api, deps, settings, store, ui, xyz  # noqa: E402
from dato_webui.host import take_handed_on  # noqa: E402
from dato_webui.runtime import RUNTIME  # noqa: E402

SEARCH_TAB = os.environ.get("DATO_SEARCH_TAB", "1").strip().lower() not in ("0", "false", "off", "no")
if SEARCH_TAB:  # the Search tab with its three generators (search, calibration, gates) and their routes
    from dato_webui import calibration_routes, gates_routes, search_routes, search_ui  # noqa: E402

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
        take_handed_on()  # an Interrupt/Skip pressed while a background job's image held the GPU
        RUNTIME.begin(p, args, settings.defaults(), xyz.overrides_of(p))

    def process_before_every_sampling(self, p, *args, **kwargs):
        RUNTIME.before_sampling(p)

    def postprocess(self, p, processed, *args):
        RUNTIME.end(p)


def _on_app_started(demo, app):
    deps.add_to_path()
    api.register(app)
    if SEARCH_TAB:
        for routes in (search_routes, calibration_routes, gates_routes):
            routes.register(app)


def _on_model_loaded(sd_model):
    RUNTIME.follow_model(sd_model)


def _on_infotext_pasted(infotext, params):
    from dato.core.infotext import normalize_pasted

    for message in normalize_pasted(params, store.content_hash, store.find_by_hash):
        print(f"[sd-webui-dato] {message}")
        try:
            import gradio as gr

            gr.Warning(f"DaTo: {message}")
        except Exception as exc:  # noqa: BLE001 - outside a Gradio event (e.g. an API paste) there is no toast
            print(f"[sd-webui-dato] (not shown on the page: {type(exc).__name__})")


script_callbacks.on_cfg_denoiser(RUNTIME.on_cfg_denoiser, name="dato_step_clock")
script_callbacks.on_model_loaded(_on_model_loaded, name="dato_model_loaded")
script_callbacks.on_script_unloaded(lambda: RUNTIME.reset("extension reloaded"), name="dato_unload")
script_callbacks.on_app_started(_on_app_started, name="dato_routes")
script_callbacks.on_ui_settings(settings.on_ui_settings, name="dato_settings")
script_callbacks.on_before_ui(xyz.add_axes, name="dato_xyz_axes")
script_callbacks.on_before_ui(deps.add_to_path, name="dato_deps")
script_callbacks.on_infotext_pasted(_on_infotext_pasted, name="dato_infotext")
script_callbacks.on_ui_tabs(ui.keep_ui_config_keys, name="dato_ui_config_keys")
if SEARCH_TAB:
    script_callbacks.on_ui_tabs(search_ui.on_ui_tabs, name="dato_search_tab")
