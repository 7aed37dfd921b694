"""Stand-in for ``modules/paths_internal.py`` (v1.10.1)."""

import os
import tempfile

script_path = os.path.join(tempfile.gettempdir(), "dato-webui-stub")
data_path = script_path
extensions_dir = os.path.join(data_path, "extensions")
