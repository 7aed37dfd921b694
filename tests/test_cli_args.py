"""``python -m dato``: every bad input is refused before anything heavy starts (issue 12).

Each refusal is one line, ``error: --OPTION VALUE: <what is allowed>``, on
stderr, with exit status 2, no traceback, nothing printed on stdout and no
folder or file left behind. ``--help`` works without the optional packages,
and a missing one at run time is named with what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dato.__main__ import COMMANDS, main
from dato.cli import common
from dato.core.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--builtin", "tiny", "--latent-size", "8", "--steps", "4"]

# where each command would write; every case runs with these (a case's own value comes later and wins)
OUTPUTS = {
    "search": ["--results-dir", "{tmp}/out", "--save-dir", "{tmp}/save"],
    "demo": ["--out", "{tmp}/out"],
    "bench": ["--out", "{tmp}/out"],
    "quality": ["--out", "{tmp}/out", "--no-plot"],
    "compare": ["--out", "{tmp}/out"],
    "calibrate": [*TINY, "--out", "{tmp}/out/c.json", "--save-dir", "{tmp}/save"],
    "gates": [*TINY, "--out", "{tmp}/out/g.json", "--save-dir", "{tmp}/save"],
    "schedules": [],
}

BAD = [
    # search: the 'or default' values (0 used to become the default) and every range
    ("search", ["--population", "0"], "--population 0: expected an integer 4..1000"),
    ("search", ["--population", "1001"], "--population 1001: expected an integer 4..1000"),
    ("search", ["--steps", "0"], "--steps 0: expected an integer 2..10000"),
    ("search", ["--steps", "-3"], "--steps -3: expected an integer 2..10000"),
    ("search", ["--steps", "10001"], "--steps 10001: expected an integer 2..10000"),
    ("search", ["--steps", "eight"], "--steps eight: expected an integer"),
    # the search settings' own limit (dato.generators.search.settings), said as the option
    ("search", ["--steps", "5000"], "--steps 5000: expected an integer 2..1000"),
    ("search", ["--generations", "0"], "--generations 0: expected an integer 1..10000"),
    ("search", ["--samples", "0"], "--samples 0: expected an integer 1..1024"),
    ("search", ["--repeats", "0"], "--repeats 0: expected an integer 1..20"),
    ("search", ["--cfg", "0"], "--cfg 0: expected a finite number > 0"),
    ("search", ["--cfg", "-1"], "--cfg -1: expected a finite number > 0"),
    ("search", ["--cfg", "nan"], "--cfg nan: expected a finite number > 0"),
    ("search", ["--cfg", "inf"], "--cfg inf: expected a finite number > 0"),
    ("search", ["--min-quality", "nan"], "--min-quality nan: expected a finite number"),
    ("search", ["--max-depth", "99"], "--max-depth 99: expected an integer 0.."),
    ("search", ["--seed", "-1"], "--seed -1: expected an integer 0..4294967295"),
    ("search", ["--latent-size", "12"], "--latent-size 12: expected a multiple of 8"),
    ("search", ["--size", "500"], "--size 500: expected a multiple of 64 pixels"),
    ("search", ["--ratios", "3,9"], "--ratios 3,9: expected comma-separated integers 0..7"),
    ("search", ["--ratios", ","], "--ratios ,: expected comma-separated integers 0..7"),
    ("search", ["--prompt", ""], "--prompt '': expected a non-empty text"),
    ("search", ["--prompt", "   "], "--prompt '   ': expected a non-empty text"),
    ("search", ["--prompts-file", "{tmp}/missing.txt"], "--prompts-file {tmp}/missing.txt: no such file"),
    ("search", ["--prompts-file", "{tmp}/empty.txt"], "--prompts-file {tmp}/empty.txt: has no prompts"),
    ("search", ["--prompts-file", "{tmp}"], "--prompts-file {tmp}: is a folder, expected a file"),
    ("search", ["--prompts-file", "{tmp}/latin1.txt"], "--prompts-file {tmp}/latin1.txt: is not UTF-8 text"),
    ("search", ["--checkpoint", "{tmp}/missing.safetensors"], "--checkpoint {tmp}/missing.safetensors: no such"),
    ("search", ["--checkpoint", "{tmp}/model.ckpt", "--device", "bogus"],
     "--device bogus: expected cpu, cuda, cuda:N or mps"),
    ("search", ["--device", "cuda:x"], "--device cuda:x: expected cpu, cuda, cuda:N or mps"),
    ("bench", ["--device", "tpu"], "--device tpu: expected cpu, cuda, cuda:N or mps"),
    ("bench", ["--dtype", "fp8"], "--dtype fp8: expected one of fp32, fp16, bf16"),
    ("quality", ["--dtype", "half"], "--dtype half: expected one of fp32, fp16, bf16"),
    ("compare", ["--device", "gpu"], "--device gpu: expected cpu, cuda, cuda:N or mps"),
    ("calibrate", ["--dtype", "float64"], "--dtype float64: expected one of fp32, fp16, bf16"),
    ("gates", ["--device", "cpu:1"], "--device cpu:1: expected cpu, cuda, cuda:N or mps"),
    ("search", ["--fixture", "--prompt", "a cat"], "--prompt 'a cat': with --fixture each prompt names one digit"),
    ("search", ["--mode", "ratio"], "--mode ratio: needs --base-schedule"),
    ("search", ["--mode", "ratio", "--base-schedule", "{tmp}/broken.json"],
     "--base-schedule {tmp}/broken.json: broken.json: not valid JSON"),
    ("search", ["--mode", "ratio", "--base-schedule", "{tmp}/bad-rule.json"],
     "--base-schedule {tmp}/bad-rule.json: schedule 'bad-rule': rule.interval = 0, expected an integer 1..10000"),
    ("search", ["--mode", "ratio", "--base-schedule", "{tmp}/missing.json"],
     "--base-schedule {tmp}/missing.json: no such file"),
    ("search", ["--mode", "ratio", "--base-schedule", "no-such-preset"],
     "--base-schedule no-such-preset: unknown schedule"),
    ("search", ["--base-schedule", "balanced"], "--base-schedule balanced: only used with --mode ratio"),
    ("search", ["--method", "none"], "--method none: --mode joint searches token ratios"),
    ("search", ["--method", "none", "--mode", "cache", "--ratios", "3"], "--ratios 3: not used with --method none"),
    ("search", ["--fidelity-metric", "psnr"], "--fidelity-metric psnr: needs decoded images"),
    ("search", ["--quality", "imagereward"], "--quality imagereward: needs decoded images"),
    ("search", ["--run-id", "a/b"], "--run-id a/b: use 1-80 letters"),
    ("search", ["--save-best", "bad/name"], "--save-best bad/name: use 1-64 letters"),
    ("search", ["--save-best", "taken"], "--save-best taken: {tmp}/save/taken.json already exists"),
    ("search", ["--results-dir", "{tmp}/afile"], "--results-dir {tmp}/afile: exists and is not a folder"),
    ("search", ["--sampler", "x"], "--sampler 'x': choose from euler, euler_a, heun, ddim"),
    ("search", ["--fixture", "--checkpoint", "{tmp}/model.ckpt"], "--checkpoint: not allowed with argument --fixture"),
    ("search", ["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ("search", ["--results-dir", ""], "--results-dir '': expected a path"),
    ("search", ["--save-dir", " "], "--save-dir ' ': expected a path"),
    # demo: every range, checked before the fixture or the SD1.5 UNet is built
    ("demo", ["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    ("demo", ["--samples", "0"], "--samples 0: expected an integer 1..100"),
    ("demo", ["--repeats", "0"], "--repeats 0: expected an integer 1..100"),
    ("demo", ["--size", "100"], "--size 100: expected a multiple of 64 pixels"),
    ("demo", ["--sd-repeats", "101"], "--sd-repeats 101: expected an integer 1..100"),
    ("demo", ["--threads", "-1"], "--threads -1: expected an integer 0..1024"),
    ("demo", ["--out", "{tmp}/afile"], "--out {tmp}/afile: exists and is not a folder"),
    # bench: a missing checkpoint used to be a traceback, 0 used to become the default
    ("bench", ["--ckpt", "/missing.safetensors"], "--ckpt /missing.safetensors: no such file"),
    # a damaged or foreign checkpoint used to be a traceback after the output folder was made
    ("bench", ["--ckpt", "{tmp}/model.ckpt"], "{tmp}/model.ckpt: not a readable torch (.ckpt) checkpoint ("),
    ("bench", ["--ckpt", "{tmp}/model.safetensors"],
     "{tmp}/model.safetensors: not a readable safetensors checkpoint (Error while deserializing header"),
    ("bench", ["--ckpt", "{tmp}/vae.safetensors"], "{tmp}/vae.safetensors: no 'model.diffusion_model.*' weights"),
    ("bench", ["--steps", "0"], "--steps 0: expected an integer 2..10000"),
    ("bench", ["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    ("bench", ["--repeats", "0"], "--repeats 0: expected an integer 1..1000"),
    ("bench", ["--size", "0"], "--size 0: expected a multiple of 64 pixels"),
    ("bench", ["--size", "500"], "--size 500: expected a multiple of 64 pixels"),
    ("bench", ["--fidelity-size", "32"], "--fidelity-size 32: expected a multiple of 64 pixels"),
    ("bench", ["--threads", "-1"], "--threads -1: expected an integer 0..1024"),
    ("bench", ["--out", "{tmp}/afile"], "--out {tmp}/afile: exists and is not a folder"),
    # quality
    ("quality", ["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    ("quality", ["--per-class", "0"], "--per-class 0: expected an integer >= 1"),
    ("quality", ["--threads", "-2"], "--threads -2: expected an integer 0..1024"),
    ("quality", ["--seed", "-1"], "--seed -1: expected an integer 0..4294967295"),
    ("quality", ["--only", "nope"], "--only nope: unknown variant"),
    ("quality", ["--out", "{tmp}/afile"], "--out {tmp}/afile: exists and is not a folder"),
    # compare
    ("compare", ["--targets", "0.5"], "--targets 0.5: expected comma-separated speed-ups >= 1"),
    ("compare", ["--targets", "3,nan"], "--targets 3,nan: expected comma-separated speed-ups >= 1"),
    ("compare", ["--targets", "x"], "--targets x: expected comma-separated speed-ups >= 1"),
    ("compare", ["--generators", "magic"], "--generators magic: expected a comma-separated subset of"),
    ("compare", ["--generators", ""], "--generators '': expected a comma-separated subset of"),
    ("compare", ["--population", "2"], "--population 2: expected an integer 4..1000"),
    ("compare", ["--gate-iterations", "0"], "--gate-iterations 0: expected an integer >= 1"),
    ("compare", ["--per-class", "0"], "--per-class 0: expected an integer >= 1"),
    ("compare", ["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    ("compare", ["--out", "{tmp}/afile"], "--out {tmp}/afile: exists and is not a folder"),
    # calibrate
    ("calibrate", ["--lookahead", "0"], "--lookahead 0: expected an integer >= 1"),
    ("calibrate", ["--lookahead", "4"], "--lookahead 4: expected 1..3 (steps - 1)"),
    ("calibrate", ["--max-prompts", "0"], "--max-prompts 0: expected an integer >= 1"),
    ("calibrate", ["--alpha", "nan"], "--alpha nan: expected a finite number >= 0"),
    ("calibrate", ["--alpha", "-1"], "--alpha -1: expected a finite number >= 0"),
    ("calibrate", ["--target-speedup", "0.5"], "--target-speedup 0.5: expected a finite number >= 1"),
    ("calibrate", ["--max-depth", "-1"], "--max-depth -1: expected an integer 0.."),
    ("calibrate", ["--cfg", "0"], "--cfg 0: expected a finite number > 0"),
    ("calibrate", ["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    ("calibrate", ["--out", "{tmp}/save"], "--out {tmp}/save: is a folder, expected a file path"),
    ("calibrate", ["--out", "{tmp}/afile/c.json"], "--out {tmp}/afile/c.json: {tmp}/afile is not a folder"),
    ("calibrate", ["--save", "taken"], "--save taken: {tmp}/save/taken.json already exists"),
    ("calibrate", ["--prompts-file", "{tmp}/empty.txt"], "--prompts-file {tmp}/empty.txt: has no prompts"),
    # gates
    ("gates", ["--iterations", "0"], "--iterations 0: expected an integer >= 1"),
    ("gates", ["--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
    ("gates", ["--pool", "1", "--batch-size", "2"], "--pool 1: expected at least --batch-size (2)"),
    ("gates", ["--lr", "0"], "--lr 0: expected a finite number > 0"),
    ("gates", ["--lr", "nan"], "--lr nan: expected a finite number > 0"),
    ("gates", ["--sparsity-weight", "-1"], "--sparsity-weight -1: expected a finite number >= 0"),
    ("gates", ["--relaxed-fraction", "1.5"], "--relaxed-fraction 1.5: expected a finite number >= 0 and <= 1"),
    ("gates", ["--also", "0.5"], "--also 0.5: expected a finite number >= 1"),
    ("gates", ["--target-speedup", "nan"], "--target-speedup nan: expected a finite number >= 1"),
    ("gates", ["--threads", "-1"], "--threads -1: expected an integer 0..1024"),
    ("gates", ["--save", "taken"], "--save taken: {tmp}/save/taken.json already exists"),
    # schedules
    ("schedules", ["--steps", "0", "balanced"], "--steps 0: expected an integer 1..10000"),
    ("schedules", ["--dir", "{tmp}/missing"], "--dir {tmp}/missing: no such folder"),
    ("schedules", ["--dir", ""], "--dir '': no such folder"),
    ("calibrate", ["--out", ""], "--out '': expected a path"),
    ("gates", ["--out", ""], "--out '': expected a path"),
    ("quality", ["--out", ""], "--out '': expected a path"),
    ("compare", ["--out", ""], "--out '': expected a path"),
    ("bench", ["--out", ""], "--out '': expected a path"),
    ("schedules", ["nope"], "nope: unknown schedule name; known: balanced"),
    ("schedules", ["{tmp}/missing.json"], "{tmp}/missing.json: a .json path that does not exist"),
]


@pytest.fixture(autouse=True)
def no_heavy_work(monkeypatch):
    """A bad input must stop the command before any of these starts; if a check is missing, fail fast."""
    from dato.cli import calibrate, gates, search
    from dato.evaluation import bench, demo, quality
    from dato.generators import compare

    def heavy(*args, **kwargs):
        raise AssertionError("the command started its work on a bad input")

    for module, name in ((search, "backend_from_args"), (calibrate, "backend_from_args"),
                         (gates, "backend_from_args"), (bench, "run_benchmark"), (quality, "run_quality"),
                         (demo, "run_demo"), (compare, "run_compare")):
        monkeypatch.setattr(module, name, heavy)


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """The files and folders the bad inputs refer to; nothing else may appear next to them."""
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("un café\n".encode("latin-1"))
    (tmp_path / "broken.json").write_text('{"name": "broken", "cache": [', encoding="utf-8")
    bad_rule = Schedule.uniform(6, 3).to_dict()
    bad_rule.update(name="bad-rule", rule={**bad_rule["rule"], "interval": 0})
    (tmp_path / "bad-rule.json").write_text(json.dumps(bad_rule), encoding="utf-8")
    (tmp_path / "afile").write_text("not a folder", encoding="utf-8")
    (tmp_path / "model.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a truncated header
    from safetensors.torch import save_file

    save_file({"first_stage_model.w": torch.zeros(2)}, str(tmp_path / "vae.safetensors"))
    (tmp_path / "save").mkdir()
    Schedule.full(4, name="taken").save(tmp_path / "save" / "taken.json")
    return tmp_path


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status, whether argparse or a later check refused the input."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("command", "args", "message"), BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_a_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(inputs, capsys, command, args, message):
    tmp = str(inputs)
    before = tree(inputs)
    argv = [command, *(a.replace("{tmp}", tmp) for a in OUTPUTS[command]), *(a.replace("{tmp}", tmp) for a in args)]
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", tmp) in err, err
    assert "Traceback" not in err and out == ""
    assert tree(inputs) == before  # no output folder, run folder or file was created


def test_the_top_level_command_name_is_checked_too(capsys):
    assert run_cli(["serch"]) == 2
    assert capsys.readouterr().err == ("error: COMMAND 'serch': choose from demo, bench, search, quality, calibrate, "
                                       "gates, compare, schedules, target\n")


@pytest.mark.parametrize("argv", [
    ["search", "--population", "9" * 5000],
    ["search", "--prompts-file", "f" * 100_000],
    ["search", "--prompt", " " * 100_000],
    ["search", "--sampler", "s" * 100_000],
    ["schedules", "n" * 100_000],
    ["search", "--mode", "ratio", "--base-schedule", "b" * 100_000],
    ["bench", "--unknown-" + "u" * 100_000],
])
def test_a_huge_bad_value_is_quoted_short(capsys, argv):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 500, err[:600]


def test_value_checks_name_what_is_allowed():
    assert common.int_range(2, 5)("3") == 3
    assert common.float_range(0.0, lo_open=True)("1e-3") == 1e-3
    assert common.pixel_size("512") == 512 and common.choice_list(("a", "b"))("b, a") == ("b", "a")
    for check, value in [(common.positive_int, "0"), (common.finite_float, "-inf"), (common.pixel_size, "96"),
                         (common.seed_int, str(2**32)), (common.steps_int(2), "1"), (common.text, "\t")]:
        with pytest.raises(common.BadValue):
            check(value)


# ------------------------------------------------------------------ optional packages
OPTIONAL = ("pymoo", "sklearn", "matplotlib", "ImageReward", "transformers", "safetensors", "PIL")

HELP_WITHOUT_OPTIONAL = """
import io, sys, contextlib
for name in {optional!r}:
    sys.modules[name] = None  # 'import name' (and name.anything) now raises ImportError
from dato.__main__ import main
for command in {commands!r}:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main([command, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, (command, exc.code)
    assert "usage: python -m dato " + command in buffer.getvalue(), command
    loaded = sorted(n for n in {optional!r} if sys.modules.get(n) is not None)
    assert not loaded, loaded
print("ok", len({commands!r}))
"""


def test_help_of_every_command_works_without_the_optional_packages():
    code = HELP_WITHOUT_OPTIONAL.format(optional=OPTIONAL, commands=tuple(COMMANDS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"ok {len(COMMANDS)}", done.stderr[-3000:]


@pytest.mark.parametrize(("argv", "blocked", "message"), [
    (["search", *TINY], "pymoo", "error: python -m dato search needs pymoo: pip install pymoo\n"),
    (["demo"], "PIL", "error: python -m dato demo needs Pillow for ldm and the grid picture: pip install Pillow\n"),
    (["quality"], "sklearn", "error: python -m dato quality needs scikit-learn for the fixture's digits and "
                             "classifier: pip install scikit-learn\n"),
    (["quality"], "matplotlib", "error: python -m dato quality needs matplotlib for quality.png (or pass --no-plot): "
                                "pip install matplotlib\n"),
    (["compare"], "sklearn", "error: python -m dato compare needs scikit-learn for the fixture's digits and "
                             "classifier: pip install scikit-learn\n"),
    (["compare", "--generators", "uniform,nsga2"], "pymoo", "error: python -m dato compare needs pymoo for the nsga2 "
                                                            "generator (or leave it out of --generators): pip install "
                                                            "pymoo\n"),
    (["search", "--fixture", "--quality", "imagereward", "--no-fallback"], "ImageReward",
     "error: python -m dato search needs image-reward for --quality imagereward --no-fallback: pip install "
     "image-reward\n"),
    (["calibrate", "--checkpoint", "{tmp}/model.ckpt"], "transformers",
     "error: python -m dato calibrate needs transformers for --checkpoint (the CLIP text encoder): pip install "
     "transformers\n"),
])
def test_a_missing_package_at_run_time_is_one_line_naming_it(inputs, capsys, monkeypatch, argv, blocked, message):
    monkeypatch.setitem(sys.modules, blocked, None)
    tmp = str(inputs)
    before = tree(inputs)
    argv = [argv[0], *(a.replace("{tmp}", tmp) for a in OUTPUTS[argv[0]]), *(a.replace("{tmp}", tmp) for a in argv[1:])]
    if argv[0] == "quality" and blocked == "matplotlib":
        argv.remove("--no-plot")
    assert run_cli(argv) == 2
    out, err = capsys.readouterr()
    assert err == message and out == ""
    assert tree(inputs) == before


def test_constants_kept_out_of_the_help_path_agree_with_their_sources():
    from dato.cli import compare, search
    from dato.generators.compare import GENERATORS
    from dato.generators.search.genome import DEFAULT_RATIO_LEVELS
    from dato.generators.search.settings import DEFAULT_PROMPTS, MODES

    assert search.MODES == MODES and compare.GENERATORS == GENERATORS
    assert search.ratio_codes(search.DEFAULT_RATIOS) == tuple(round(r * 10) for r in DEFAULT_RATIO_LEVELS)
    assert common._DEFAULT_PROMPTS == DEFAULT_PROMPTS


# ------------------------------------------------------------------ default output folders (untracked, announced)
def test_quality_and_compare_write_to_untracked_folders_by_default():
    from dato.cli import compare, quality

    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for module, folder in ((quality, "quality-results"), (compare, "compare-results")):
        parser = common.CliParser()
        module.add_arguments(parser)
        assert parser.parse_args([]).out == folder
        assert f"/{folder}/" in ignored
        done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x.md"], cwd=ROOT)
        assert done.returncode == 0, f"{folder} is not ignored by git"


# ------------------------------------------------------------------ schedules/user is where --save writes and looks
@pytest.fixture()
def user_dir(tmp_path, monkeypatch) -> Path:
    """``schedules/user`` moved into tmp_path for every module that names it."""
    from dato.cli import schedules, search

    user = tmp_path / "user"
    for module in (common, schedules, search):
        monkeypatch.setattr(module, "user_schedule_dir", lambda: user)
    return user


def test_schedules_finds_what_save_named_wrote(user_dir, capsys):
    path = common.save_named(Schedule.uniform(10, 2, name="x"), "my-pick")
    assert path == user_dir / "my-pick.json"
    assert run_cli(["schedules", "my-pick"]) == 0
    assert capsys.readouterr().out.startswith("my-pick (10 steps, method prune")
    assert run_cli(["schedules"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("my-pick ")]
    assert len(listed) == 1 and listed[0].endswith("(user)")
    assert run_cli(["schedules", "--steps", "20", "my-pick"]) == 0
    assert "F0F0F0F0F0F0F0F0F0F0" in capsys.readouterr().out


def test_a_user_schedule_is_a_valid_base_schedule_and_a_taken_name(user_dir, capsys):
    from dato.cli import search

    common.save_named(Schedule.uniform(8, 2, name="x"), "my-base")
    parser = common.CliParser()
    search.add_arguments(parser)
    _, base = search.check_args(parser.parse_args(["--mode", "ratio", "--base-schedule", "my-base"]))
    assert base == str(user_dir / "my-base.json")
    _, base = search.check_args(parser.parse_args(["--mode", "ratio", "--base-schedule", "balanced"]))
    assert base == "balanced"  # a preset stays a name (the search finds presets itself)
    assert run_cli(["search", "--save-best", "my-base"]) == 2
    assert f"--save-best my-base: {user_dir / 'my-base.json'} already exists" in capsys.readouterr().err
