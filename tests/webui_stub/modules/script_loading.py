"""Stand-in for ``modules/script_loading.py`` (v1.10.1): the module name is the file's basename."""

import importlib.util
import os

loaded_scripts = {}


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module
