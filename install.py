"""WebUI installer hook for sd-webui-dato: install only what is missing, without touching the WebUI's pins.

The WebUI runs this file in a subprocess at start-up (``launch_utils.run_extension_installer``),
with its own ``launch`` module importable; it is skipped under ``--skip-install``
/ ``--skip-prepare-environment`` (then install by hand, see docs/webui.md).

* ``pymoo`` (the Search tab's NSGA-II) is installed normally when missing; its
  dependencies (scipy, matplotlib, autograd, cma, ...) are not pinned by the WebUI.
* ``image-reward`` 1.5 (optional: the Search tab's ImageReward objective) pins
  ``timm==0.6.13`` and ``fairscale==0.4.13`` and requires diffusers, datasets and
  accelerate, which the model itself never uses. Installed into the WebUI's venv
  it would make ``pip check`` report conflicts, so it goes, with ``--no-deps``,
  into this extension's ``deps/`` folder (``pip install --target``), together
  with ``fairscale`` when that is missing. ``deps/`` is added to ``sys.path`` at
  run time; ``pip check`` does not look there. Everything else ImageReward's
  model needs (torch, torchvision, timm, transformers < 4.56) the WebUI has.
  Set ``DATO_SKIP_IMAGEREWARD=1`` to leave it out.

Afterwards ``pip check`` is compared with before and any new complaint is printed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEPS = ROOT / "deps"
TAG = "[sd-webui-dato]"


def importable(module: str, extra: Path | None = None) -> bool:
    """Whether ``module`` imports from the current path (or from ``extra``), without importing it."""
    added = extra is not None and extra.is_dir() and str(extra) not in sys.path
    if added:
        sys.path.append(str(extra))
    try:
        importlib.invalidate_caches()
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        if added:
            sys.path.remove(str(extra))


def pip_check() -> set[str]:
    """The lines ``pip check`` complains with (empty when the environment is consistent)."""
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return set()
    if result.returncode == 0:
        return set()
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def plan(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """``(pip arguments, description)`` for everything missing; empty when nothing is."""
    env = os.environ if env is None else env
    steps: list[tuple[str, str]] = []
    if not importable("pymoo"):
        steps.append(('install "pymoo>=0.6.1"', "pymoo (sd-webui-dato schedule search)"))
    if env.get("DATO_SKIP_IMAGEREWARD", "").strip() not in ("", "0"):
        return steps
    wanted = []
    if not importable("ImageReward", DEPS):
        wanted.append("image-reward==1.5")
    if not importable("fairscale", DEPS):
        wanted.append("fairscale==0.4.13")
    if wanted and not importable("timm"):
        wanted.append("timm")
    if wanted:
        packages = " ".join(f'"{w}"' for w in wanted)
        steps.append((f'install --no-deps --upgrade --target "{DEPS}" {packages}',
                      f"{', '.join(wanted)} into {DEPS} (sd-webui-dato, optional ImageReward objective)"))
    return steps


def main(launch_module=None) -> int:
    steps = plan()
    if not steps:
        return 0
    if launch_module is None:
        import launch as launch_module  # the WebUI's, importable because the WebUI sets PYTHONPATH
    before = pip_check()
    for args, description in steps:
        try:
            launch_module.run_pip(args, description)
        except Exception as exc:  # noqa: BLE001 - the WebUI must start anyway
            print(f"{TAG} could not install {description}: {exc}")
            print(f"{TAG} the extension still works; the Search tab says what it misses when you use it")
    after = pip_check()
    new = sorted(after - before)
    if new:
        print(f"{TAG} pip check reports new problems after installing:")
        for line in new:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
