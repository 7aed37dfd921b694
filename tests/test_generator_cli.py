"""``python -m dato calibrate | gates | compare``: real runs on small models, and every bad input's message."""

from __future__ import annotations

import json

import pytest

from dato.__main__ import main
from dato.core.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--builtin", "tiny", "--latent-size", "8", "--steps", "4", "--prompt", "a cat", "--prompt", "a dog"]


def test_calibrate_writes_curves_and_saves_a_schedule(tmp_path, capsys):
    out = tmp_path / "cal.json"
    code = main(["calibrate", *TINY, "--lookahead", "2", "--alpha", "0", "--alpha", "1e9", "--out", str(out),
                 "--save", "my-cal", "--save-dir", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibrated on 2 prompt(s), 4 steps" in printed and "FFFF" in printed  # alpha 0: all full
    data = json.loads(out.read_text())
    assert data["steps"] == 4 and data["lookahead"] == 2 and set(data["errors"]) >= {"depth0", "output"}
    saved = Schedule.load(tmp_path / "my-cal.json")
    assert saved.name == "my-cal" and saved.provenance["generator"] == "calibration"
    assert saved.preview() == "FRRF"  # alpha 1e9, lookahead 2: the coarsest schedule


def test_calibrate_target_speedup(tmp_path, capsys):
    assert main(["calibrate", *TINY, "--target-speedup", "2", "--no-reuse", "--out", str(tmp_path / "c.json")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert "R" not in line.split()[-1]


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status whether argparse or a later check refused the input."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "-1"], "--alpha -1: expected a finite number >= 0"),
    (["--save", "bad/name"], "--save bad/name: use 1-64 letters"),
    (["--lookahead", "9"], "--lookahead 9: expected 1..3"),
    (["--lookahead", "0"], "--lookahead 0: expected an integer >= 1"),
])
def test_calibrate_bad_input(tmp_path, capsys, extra, message):
    assert run_cli(["calibrate", *TINY, "--out", str(tmp_path / "c.json"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


def test_gates_trains_and_saves(tmp_path, capsys):
    out = tmp_path / "g.json"
    code = main(["gates", *TINY, "--iterations", "2", "--batch-size", "1", "--pool", "2", "--target-speedup", "1.5",
                 "--also", "2", "--out", str(out), "--save", "my-gates", "--save-dir", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[   2/2] loss" in printed and "trained in" in printed
    data = json.loads(out.read_text())
    assert len(data["logits"]) == 4 and len(data["history"]) == 2
    saved = Schedule.load(tmp_path / "my-gates.json")
    assert saved.provenance["generator"] == "gates" and saved.provenance["macs_speedup"] >= 1.5


@pytest.mark.parametrize("extra, message", [
    (["--iterations", "0"], "--iterations 0: expected an integer >= 1"),
    (["--target-speedup", "0.5"], "--target-speedup 0.5: expected a finite number >= 1"),
    (["--pool", "1", "--batch-size", "2"], "--pool 1: expected at least --batch-size (2)"),
    (["--save", "no/slash"], "--save no/slash: use 1-64 letters"),
])
def test_gates_bad_input(tmp_path, capsys, extra, message):
    assert run_cli(["gates", *TINY, "--out", str(tmp_path / "g.json"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "g.json").exists()


def test_compare_uniform_on_the_fixture(tmp_path, capsys):
    code = main(["compare", "--steps", "3", "--per-class", "1", "--targets", "1.5", "--generators", "uniform",
                 "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "compare.md").read_text()
    assert "| 1.5x | uniform |" in table and "Unaccelerated baseline" in table
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert rows[0]["schedule"].startswith("F") and rows[0]["macs_speedup"] > 1


@pytest.mark.parametrize("extra, message", [
    (["--generators", "magic"], "--generators magic: expected a comma-separated subset of uniform,"),
    (["--targets", "x"], "--targets x: expected comma-separated speed-ups >= 1"),
    (["--targets", "0.5"], "--targets 0.5: expected comma-separated speed-ups >= 1"),
])
def test_compare_bad_input(tmp_path, capsys, extra, message):
    assert run_cli(["compare", "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
