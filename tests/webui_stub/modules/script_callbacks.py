"""Stand-in for ``modules/script_callbacks.py`` (v1.10.1): the same registry, parameter classes and signatures.

Callbacks are called in registration order and exceptions are reported and
swallowed, as ``report_exception`` does in the real module.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    callbacks.append(ScriptCallback(filename, fun, callback_name))


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_extra_noise=[],
    callbacks_cfg_denoiser=[],
    callbacks_cfg_denoised=[],
    callbacks_cfg_after_cfg=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_image_grid=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
    callbacks_list_optimizers=[],
    callbacks_list_unets=[],
    callbacks_before_token_counter=[],
)


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def _run(category, *args, reverse=False):
    callbacks = callback_map['callbacks_' + category]
    results = []
    for c in (reversed(callbacks) if reverse else list(callbacks)):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {category} for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run('app_started', demo, app)


def model_loaded_callback(sd_model):
    _run('model_loaded', sd_model)


def ui_tabs_callback():
    res = []
    for r in _run('ui_tabs'):
        res += r or []
    return res


def ui_settings_callback():
    _run('ui_settings')


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run('cfg_denoiser', params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _run('cfg_denoised', params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _run('cfg_after_cfg', params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _run('infotext_pasted', infotext, params)


def script_unloaded_callback():
    _run('script_unloaded', reverse=True)


def before_ui_callback():
    _run('before_ui', reverse=True)


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_cfg_denoiser(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_denoiser'], callback, name=name, category='cfg_denoiser')


def on_cfg_denoised(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_denoised'], callback, name=name, category='cfg_denoised')


def on_cfg_after_cfg(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_after_cfg'], callback, name=name, category='cfg_after_cfg')


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map['callbacks_infotext_pasted'], callback, name=name, category='infotext_pasted')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')
