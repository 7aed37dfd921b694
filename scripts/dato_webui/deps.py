"""Optional dependencies installed by ``install.py`` into the extension's ``deps/`` folder.

``deps/`` holds ``image-reward`` (and ``fairscale`` when the WebUI lacks it),
installed with ``--no-deps --target`` so that their pins never reach the
WebUI's environment. The folder is appended (lowest priority) to ``sys.path``
from a callback, because the WebUI restores ``sys.path`` after executing each
script file; code that imports ImageReward later (the Search tab) then finds it.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPS = Path(__file__).resolve().parents[2] / "deps"


def add_to_path() -> bool:
    """Append ``deps/`` to ``sys.path`` once; ``True`` if it exists."""
    if not DEPS.is_dir():
        return False
    if str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))
    return True
