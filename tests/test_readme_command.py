"""The README's first command is what CI runs: the two texts cannot drift apart."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The commands of the first ``bash`` block under "Two commands on a fresh machine" (continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands on a fresh machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def ci_first_command() -> str:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^README_FIRST_COMMAND=(.*)$", script, re.M)
    assert match, ".ci/run no longer names the README's first command"
    (value,) = shlex.split(match.group(1))
    return value


def test_ci_runs_the_readmes_first_command_word_for_word():
    assert readme_commands()[0] == ci_first_command()


def test_ci_runs_it_in_a_fresh_venv_in_its_quick_form():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python3 -m venv "$FRESH/venv"' in script
    assert '. "$FRESH/venv/bin/activate" && bash -c "$README_FIRST_COMMAND --quick"' in script
    assert readme_commands()[0].endswith("python -m dato demo")  # so that appending --quick is the demo's flag


def test_the_first_command_installs_what_the_demo_imports():
    command = readme_commands()[0]
    assert "pip install -r requirements-headless.txt" in command
    assert "pip install --no-deps stable-diffusion-sdkit" in command
    wanted = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements-headless.txt").read_text()
              .splitlines() if line.strip() and not line.startswith("#")}
    assert {"torch", "numpy", "einops", "omegaconf", "safetensors", "pillow"} <= wanted  # ldm imports PIL


def test_the_readmes_test_command_is_the_one_ci_runs():
    assert readme_commands()[1] == "bash .ci/run"
    assert '"$PY" -m pytest -q' in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "`python -m pytest -q`" in (ROOT / "README.md").read_text(encoding="utf-8")
