"""The house rules of the tree: imports only go down the rooms, the engine never imports the WebUI, the
UNet layout is known in one place, and a long module says why it is long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dato.core.layout import DEEPEST_KNOWN_DEPTH, DEFAULT_LAYOUT, KNOWN_LAYOUTS, SD1_LAYOUT, UNetLayout, role_of

ROOT = Path(__file__).resolve().parent.parent
#: room -> the rooms it may import from (besides itself)
ALLOWED = {
    "core": set(),
    "evaluation": {"core"},
    "generators": {"core", "evaluation"},
    "cli": {"core", "evaluation", "generators"},
}
HOST_MODULES = {"modules", "gradio", "fastapi", "dato_webui", "scripts", "launch", "webui"}
LONG_MODULE_LINES = 420
LONG_MODULE_MARK = "Length:"


def _imports(path: Path, text: str | None = None) -> list[str]:
    """Every module name imported by ``path`` (top level and inside functions), relative ones resolved; ``text``
    is the file's source when it is not read from ``path`` (the checker's own test)."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]  # `from dato import core`
    return names


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dato" and parts[1] in ALLOWED else None


ENGINE_FILES = sorted(p for p in (ROOT / "dato").rglob("*.py"))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down_the_rooms_and_never_reach_the_webui(path):
    _check_imports(path)


def _check_imports(path: Path, text: str | None = None) -> None:
    own = _room(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for name in _imports(path, text):
        assert name.split(".")[0] not in HOST_MODULES, f"{path.name} imports host/glue module {name}"
        target = _room(name)
        if own is None or target is None or target == own:
            continue
        assert target in ALLOWED[own], f"{path.relative_to(ROOT)} ({own}) imports {name} ({target})"


def test_the_public_api_comes_from_the_engine_room_only():
    targets = {_room(n) for n in _imports(ROOT / "dato" / "__init__.py")} - {None}
    assert targets == {"core"}


def test_the_layering_check_sees_a_violation():
    """The checker itself: a core module importing a generator must be caught (checked on text; nothing is
    written into the tree)."""
    probe = ROOT / "dato" / "core" / "_layering_probe.py"
    assert not probe.exists()
    with pytest.raises(AssertionError, match="imports dato.generators"):
        _check_imports(probe, "from dato.generators.search import ScheduleSearch\n")
    with pytest.raises(AssertionError, match="imports host/glue module modules"):
        _check_imports(probe, "def f():\n    from modules import shared\n")
    _check_imports(probe, "from dato.core.schedule import Schedule\n")


PRODUCT_FILES = sorted([*ENGINE_FILES, *(ROOT / "scripts").rglob("*.py")])


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_product_module_says_why_at_its_top(path):
    text = path.read_text()
    if text.count("\n") <= LONG_MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_MODULE_MARK in doc, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines and no " \
                                    f"'{LONG_MODULE_MARK}' reason in its docstring"


def test_the_sd1_layout_table_matches_a_real_ldm_unet(tiny_unet):
    assert UNetLayout.from_unet(tiny_unet) == SD1_LAYOUT
    assert DEFAULT_LAYOUT is SD1_LAYOUT and KNOWN_LAYOUTS["sd1"] is SD1_LAYOUT
    assert DEEPEST_KNOWN_DEPTH == SD1_LAYOUT.max_depth == 11


def test_every_submodule_name_of_a_real_unet_maps_to_its_block_role(tiny_unet):
    roles = {role_of(name) for name, _ in tiny_unet.named_modules() if name}
    assert roles - {None} == set(SD1_LAYOUT.all_blocks()) | {"out", "time_embed"}
    assert role_of("input_blocks.10.0.in_layers.2") == "input.10"
    assert role_of("output_blocks.3.1.transformer_blocks.0.attn1.to_q") == "output.3"
    assert role_of("middle_block.1") == "middle" and role_of("not_a_block") is None
