"""The argument table (dato/core/arguments.py): each default written once, and the forms earlier versions wrote
(positional API calls of 4, 13, 17, 18 and 20 arguments, named calls, infotexts recorded in a real WebUI, the
accordion's ui-config.json keys) still read as they did."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path

from dato.core.arguments import ARG_NAMES, ARGS, NULL_MEANS, Arg, ArgsError, DatoArgs, PassSettings
from dato.core.infotext import INFOTEXT_KEYS, normalize_pasted
from dato.core.patch import PatchOptions

pytest_plugins = ["webui_stub.harness"]

ROOT = Path(__file__).resolve().parents[1]
#: where an argument's default used to be re-typed (DatoArgs, PassSettings, the optional-key list, Settings,
#: X/Y/Z, the routes, the preview): the glue and the modules that read the table
SURFACES = sorted([*(ROOT / "scripts").rglob("*.py"), *(ROOT / "dato" / "core").glob("*.py"), ROOT / "tools" /
                   "webui_timing.py"])
ENGINE_DEFAULTS = {"max_downsample", "prune_variant", "downsample_factor", "downsample_factor2", "downsample_stop",
                   "adaptive_cap"}
#: engine functions whose keyword of the same name is another thing than the script argument's default
#: (a Schedule's own depth; MACs and speed pricing of any call)
OTHER_MEANINGS = ("dato/core/schedule.py", "dato/core/macs.py", "dato/core/speed.py", "dato/core/layout.py",
                  "dato/core/tokens.py")


def _restatements(arg: Arg, files: list[Path] | None = None) -> list[str]:
    """Places that write ``arg``'s default next to its name (``name: T = v``, ``name=v``, ``"name": v``) instead of
    reading it from the table or the engine's options."""
    literal = re.escape(repr(arg.default))
    name = rf"\b{arg.name}\s*(?::\s*[\w\[\]|. ]+)?\s*=\s*|[\"']{arg.name}[\"']\s*:\s*"
    pattern = re.compile(rf"(?:{name}){literal}(?![\w.])")
    found = []
    for path in SURFACES if files is None else files:
        where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        if files is None and where in OTHER_MEANINGS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{where}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize("arg", [a for a in ARGS if a.scope != "run"], ids=lambda a: a.name)
def test_each_default_is_written_once(arg):
    places = _restatements(arg)
    if arg.name in ENGINE_DEFAULTS:  # its one home is the engine's PatchOptions (a literal, or tokens' constant)
        assert len(places) <= 1 and all(p.startswith("dato/core/patch.py:") for p in places), places
        assert getattr(PatchOptions("none"), arg.name) == arg.default
    else:
        assert places == [], places


def test_shared_literals_have_one_home():
    """The literals the review found re-typed: the prune variant's name (11 times in dato/core) and the ratio
    limit (in Settings, X/Y/Z and the page script)."""
    product = [*(ROOT / "dato").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"), ROOT / "javascript" / "dato.js"]
    variant = [p for p in product if '"shared-plan"' in p.read_text()]
    assert [str(p.relative_to(ROOT)) for p in variant] == ["dato/core/tokens.py"]
    limit = re.compile(r"(?<![\w.])0\.75(?![\w])")
    glue = [*(ROOT / "scripts").rglob("*.py"), ROOT / "javascript" / "dato.js", *(ROOT / "dato" / "core").glob("*.py")]
    retyped = [f"{p.relative_to(ROOT)}:{n}" for p in glue for n, line in enumerate(p.read_text().splitlines(), 1)
               if limit.search(line) and not line.lstrip().startswith(("#", "*"))
               and not any(ok in line for ok in ('"""', "RATIO_LIMIT = 0.75", "DEFAULT_DENOISING = 0.75",
                                                 "ratio 0.75 = ToDo"))]
    assert retyped == [], retyped


def test_the_default_check_sees_a_restatement(tmp_path):
    """The checker itself: a second ``adaptive_cap: int = 3`` (or ``ratio = 0.4``, ``'schedule': 'balanced'``)."""
    probe = tmp_path / "probe.py"
    probe.write_text("class X:\n    adaptive_cap: int = 3\n    ratio = 0.4\n    opts = {'schedule': 'balanced'}\n")
    by_name = {a.name: a for a in ARGS}
    for name in ("adaptive_cap", "ratio", "schedule"):
        assert len(_restatements(by_name[name], [probe])) == 1, name
    assert _restatements(by_name["interval"], [probe]) == []


def test_the_dataclasses_are_the_table():
    assert DatoArgs.__dataclass_fields__.keys() == set(ARG_NAMES)
    assert [f for f in DatoArgs.__dataclass_fields__] == list(ARG_NAMES)
    assert DatoArgs().to_args() == [a.default for a in ARGS]
    passes = [a.name for a in ARGS if a.scope != "run" and a.hires_of is None]
    assert list(PassSettings.__dataclass_fields__) == passes
    assert set(INFOTEXT_KEYS) == set(ARG_NAMES) and len(set(INFOTEXT_KEYS.values())) == len(ARGS)
    for arg in ARGS:  # every default passes its own kind, and every slider covers the default
        assert arg.kind.coerce(arg.default, arg.name) == arg.default
        if arg.ui is not None:
            assert arg.ui[0] <= arg.default <= arg.ui[1], arg.name


def test_null_means_the_default_for_every_argument():
    assert "default" in NULL_MEANS
    defaults = DatoArgs(ratio=0.3, schedule="fast", adaptive_cap=5)
    assert DatoArgs.from_args([None] * len(ARGS), defaults) == defaults
    assert DatoArgs.from_args([{name: None for name in ARG_NAMES}], defaults) == \
        DatoArgs(**{**defaults.to_dict(), "enabled": True})  # the named form means enabled unless it says


# ------------------------------------------------------------------ recorded forms
RECORDED_CALLS = [
    # (what an earlier version's client sent, what it means now)
    ([True, "prune", 0.4, "balanced"], {}),  # the README's example since the first release
    ([True, "merge", 0.35, "uniform", 3, 1, 2, "own", "schedule", 0.4, "fast", 3, 0],  # 13 arguments
     {"method": "merge", "ratio": 0.35, "schedule": "uniform", "interval": 3, "depth": 1, "max_downsample": 2,
      "hr_mode": "own", "hr_method": "schedule", "hr_ratio": 0.4, "hr_schedule": "fast", "hr_interval": 3}),
    ([True, "downsample", 0.5, "none", 5, 0, 1, "same", "prune", 0.4, "balanced", 3, 0, "shared-plan", 2.0, 0.0,
      0.6],  # 17: the ToDo options
     {"method": "downsample", "ratio": 0.5, "schedule": "none", "downsample_factor": 2.0, "downsample_stop": 0.6}),
    ([True, "prune", 0.4, "balanced", 5, 0, 1, "same", "prune", 0.4, "balanced", 3, 0, "faithful", 0, 0, 1, 4],
     {"prune_variant": "faithful", "speed_target": 4.0}),  # 18: the speed target
    ([True, "none", 0.0, "none", 5, 0, 1, "same", "prune", 0.4, "balanced", 3, 0, "shared-plan", 0, 0, 1, 0, 0.2,
      5], {"method": "none", "ratio": 0.0, "schedule": "none", "adaptive": 0.2, "adaptive_cap": 5}),  # 20
    ([{"method": "prune", "ratio": 0.4}], {}),  # the named form
    (["True", "DaTo prune", "0.5", "uniform", 3.0, 1.0, 2.0, "Own settings", "ToMe merge"],  # Gradio's own values
     {"ratio": 0.5, "schedule": "uniform", "interval": 3, "depth": 1, "max_downsample": 2, "hr_mode": "own",
      "hr_method": "merge"}),
]


@pytest.mark.parametrize("sent, meaning", RECORDED_CALLS, ids=lambda v: str(len(v)) if isinstance(v, list) else "")
def test_old_positional_and_named_calls_keep_their_meaning(sent, meaning):
    assert DatoArgs.from_args(sent) == DatoArgs(enabled=True, **meaning)


def _recorded_infotexts() -> list[str]:
    """Infotexts a real WebUI v1.10.1 wrote for this extension (tools/webui_timing.py's recorded runs)."""
    data = json.loads((ROOT / "docs" / "bench" / "webui-timing-sd15.json").read_text())
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "infotext" and isinstance(value, str) and "DaTo: True" in value:
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return sorted(found)


def _parse(infotext: str) -> dict[str, str]:
    """What the WebUI's ``parse_generation_parameters`` gives for the keys (values unquoted)."""
    line = infotext.splitlines()[-1]
    parts = (part.split(":", 1) for part in line.split(", ") if ":" in part)
    return {k.strip(): v.strip().strip('"') for k, v in parts}


def test_infotexts_recorded_in_a_real_webui_paste_back_to_the_arguments_they_describe():
    recorded = _recorded_infotexts()
    assert len(recorded) >= 4
    for infotext in recorded:
        params = _parse(infotext)
        normalize_pasted(params)
        values = {name: params[INFOTEXT_KEYS[name]] for name in ARG_NAMES if INFOTEXT_KEYS[name] in params}
        args = DatoArgs.from_dict(values)
        assert args.enabled and args.schedule == params["DaTo schedule"]
        assert args.ratio == float(params["DaTo ratio"]) and args.method == params["DaTo method"]
        assert args.speed_target == float(params.get("DaTo speed target", 0))
        assert (args.hr_mode, args.adaptive, args.adaptive_cap, args.max_downsample) == ("same", 0.0, 3, 1)


#: the accordion's ui-config.json keys as users' files hold them (``customscript/dato.py/<tab>/<label>/value``)
RECORDED_UI_CONFIG_LABELS = [
    "DaTo acceleration", "Token method", "Token ratio", "Cache schedule", "Uniform: full step every N",
    "Uniform: cache depth", "Token levels", "Hires. fix pass", "Hires token method", "Hires token ratio",
    "Hires cache schedule", "Hires uniform: every N", "Hires uniform: depth", "DaTo prune variant", "ToDo factor",
    "ToDo factor, second level", "ToDo stop after", "Speed target (× faster, 0 = off)",
    "Adaptive threshold (0 = off)", "Adaptive: cached in a row at most",
]


def test_saved_ui_config_keys_still_name_the_same_controls(host):
    from modules import script_callbacks

    script_callbacks.ui_tabs_callback()
    for tab in ("txt2img", "img2img"):
        script = host.script(tab)
        controls = script.controls if hasattr(script, "controls") else []
        labels = [getattr(c, "label", None) for c in controls]
        assert labels == RECORDED_UI_CONFIG_LABELS
        assert {c.custom_script_source for c in controls} == {"dato.py"}


@pytest.mark.parametrize("bad, message", [
    ([{"ratio": None, "speed_target": "x"}], "(speed_target) = 'x': expected a number"),
    ([None] * 6 + [3], "argument 6 (max_downsample) = 3: expected one of 1, 2, 4, 8"),
    ([None] * 13 + ["exact"], "argument 13 (prune_variant) = 'exact': expected one of faithful"),
])
def test_a_bad_value_names_its_argument(bad, message):
    with pytest.raises(ArgsError, match=re.escape(message)):
        DatoArgs.from_args(bad)


def test_the_api_answer_describes_each_argument_from_the_table(host):
    from dato_webui import api

    spec = api.args_spec()
    assert [a["name"] for a in spec["args"]] == list(ARG_NAMES)
    ratio = next(a for a in spec["args"] if a["name"] == "ratio")
    assert (ratio["minimum"], ratio["maximum"], ratio["infotext"]) == (0.0, 0.75, "DaTo ratio")
    assert ratio["null"] == "default"
    method = next(a for a in spec["args"] if a["name"] == "method")
    assert method["choices"] == ["prune", "merge", "downsample", "schedule", "none"]
    assert "null" in spec and harness is not None


def test_the_api_page_states_the_tables_defaults():
    """docs/api.md's argument table: one row per argument (or a range of rows), in order, with the table's
    default in its last column."""
    rows = [line for line in (ROOT / "docs" / "api.md").read_text().splitlines() if re.match(r"\| \d+(–\d+)? \|", line)]
    stated: list[str] = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        stated += [v.strip().strip("`") for v in cells[-1].split(",")]
    expected = []
    for arg in ARGS:
        value = arg.default
        text = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        expected.append(f"{text:g}" if isinstance(text, float) else str(text))
    assert stated == expected
