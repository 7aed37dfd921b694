"""Stand-in for ``modules/scripts.py`` (v1.10.1).

``Script`` keeps the real hook names and signatures; ``load_scripts`` loads a
script file as the WebUI does (extension folder first on ``sys.path`` while it
executes, restored afterwards, module named after the file); ``ScriptRunner``
creates the UI of AlwaysOn scripts, records ``args_from``/``args_to`` and
calls the hooks with ``p.script_args[args_from:args_to]``, reporting and
swallowing their exceptions like the real runner.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr
from modules import errors, script_callbacks, script_loading

AlwaysVisible = object()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


@dataclass
class OnComponent:
    component: gr.blocks.Block


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f'script_{tabname}{title}_{item_id}'


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
current_basedir = None


def basedir():
    return current_basedir


def load_scripts(script_files: list[ScriptFile]) -> None:
    """``load_scripts`` for the given files: clear callbacks, exec each file, register its Script classes."""
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in script_files:
        try:
            sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for script_class in module.__dict__.values():
                if inspect.isclass(script_class) and issubclass(script_class, Script) and script_class is not Script:
                    scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = None
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]
        self.on_after_component_elem_id = {}

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        for control in controls:  # ui-config.json keys of script controls: customscript/<file name>/...
            control.custom_script_source = os.path.basename(script.filename)
        script.name = script.title().lower()
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        for script in scriptlist if scriptlist is not None else self.alwayson_scripts:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    def _call(self, method_name, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            if getattr(script.__class__, method_name, None) is getattr(Script, method_name, None):
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call('before_process', p)

    def process(self, p):
        self._call('process', p)

    def process_before_every_sampling(self, p, **kwargs):
        self._call('process_before_every_sampling', p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call('process_batch', p, **kwargs)

    def post_sample(self, p, ps):
        self._call('post_sample', p, ps)

    def postprocess(self, p, processed):
        self._call('postprocess', p, processed)

    def before_hr(self, p):
        self._call('before_hr', p)

    def setup_scrips(self, p, *, is_ui=True):
        self._call('setup', p)

    def script(self, title):
        return next((s for s in self.scripts if s.title().lower() == title.lower()), None)


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None
scripts_current: ScriptRunner = None
