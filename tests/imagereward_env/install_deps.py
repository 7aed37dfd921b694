"""Run the extension's ``install.py`` the way the WebUI does, but into a chosen ``deps/`` folder.

The WebUI runs ``install.py`` with its ``launch`` module importable; ``launch.run_pip(args, desc)``
runs ``"<python>" -m pip <args> --prefer-binary``. :class:`PipLaunch` does the same here, so
``install.main`` installs exactly what it would in the WebUI (``image-reward==1.5`` and
``fairscale==0.4.13`` with ``--no-deps --target``).

Usage: ``python tests/imagereward_env/install_deps.py DEPS_FOLDER``
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class PipLaunch:
    """The part of the WebUI's ``launch`` module that ``install.py`` uses."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run_pip(self, command: str, desc: str | None = None) -> None:
        self.calls.append(command)
        print(f"Installing {desc}")
        result = subprocess.run(f'"{sys.executable}" -m pip {command} --prefer-binary', shell=True,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Couldn't install {desc}: {result.stderr[-2000:]}")


def load_install_module(deps: Path | None):
    """``install.py`` as a module, its ``DEPS`` pointed at ``deps`` (left alone when ``None``)."""
    spec = importlib.util.spec_from_file_location("dato_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if deps is not None:
        module.DEPS = Path(deps)
    return module


def main(argv: list[str]) -> int:
    deps = Path(argv[0]).resolve()
    install = load_install_module(deps)
    launch = PipLaunch()
    install.main(launch_module=launch)
    print(f"install.py ran: {launch.calls or 'nothing to install'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
