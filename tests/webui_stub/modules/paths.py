"""Stand-in for ``modules/paths.py`` (v1.10.1)."""

from modules.paths_internal import data_path, extensions_dir, script_path  # noqa: F401
