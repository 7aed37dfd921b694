"""``python -m dato demo``: the first thing a new user runs (structure and arithmetic, never timings)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dato import __main__ as cli
from dato.core.schedule import find_schedules
from dato.evaluation.demo import demo_variants
from dato.evaluation.progress import Progress, format_duration

pytestmark = pytest.mark.usefixtures("one_thread")


def test_progress_scales_the_remaining_estimates_by_how_the_finished_ones_turned_out():
    now = [0.0]
    lines: list[str] = []
    progress = Progress(lines.append, width=10, clock=lambda: now[0])
    progress.plan(10.0)
    now[0] = 4.0  # the first 2 estimated seconds took 4: the machine runs at half the estimated speed
    progress.step(2.0, "first")
    assert lines[-1] == "[##........]  20 %  first  ETA 16 s"
    now[0] = 20.0
    progress.step(8.0, "last")
    assert lines[-1] == "[##########] 100 %  last  ETA 0 s"


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (0.4, 42, 185, 4320)] == ["0 s", "42 s", "3 min 05 s", "1 h 12 min"]


def test_the_demo_shows_the_unaccelerated_run_and_every_preset():
    names = [v.name for v in demo_variants(20)]
    assert names[0] == "unaccelerated" and sorted(names[1:]) == sorted(find_schedules())
    assert all(v.schedule.steps == 20 for v in demo_variants(20))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["demo", "--model", "tiny", "--steps", "4", "--samples", "2", "--repeats", "1", "--size", "64",
                         "--threads", "1", "--out", str(out)])
    return code, out, buffer.getvalue()


def test_demo_writes_one_grid_a_table_and_a_report(demo_run):
    code, out, printed = demo_run
    assert code == 0
    assert printed.splitlines()[0] == f"writing into {out.resolve()}/ (demo-grid.png, demo.md, demo.json)"
    report = json.loads((out / "demo.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == [v.name for v in demo_variants(4)]
    base = rows["unaccelerated"]
    assert base["ssim"] == 1.0 and base["psnr"] == float("inf")
    assert base["fixture_macs_speedup"] == 1.0 and base["sd15_macs_speedup"] == 1.0
    assert base["fixture_time_speedup"] == 1.0 and base["sd15_time_speedup"] == 1.0
    assert rows["fast"]["fixture_macs_speedup"] > 1.0 and rows["fast"]["sd15_macs_speedup"] > 1.0
    assert rows["fast"]["ssim"] < 1.0
    grid = Image.open(out / "demo-grid.png")
    assert grid.height > len(rows) * 2 * 16 and grid.width >= 640  # a row per variant, 2 samples each
    table = (out / "demo.md").read_text()
    assert "| fast |" in table and "composed from timed calls" in table and "random weights" in table


def test_demo_says_its_plan_and_shows_progress_with_an_eta(demo_run):
    lines = demo_run[2].splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("plan:"))
    assert "fixture runs" in lines[plan] and "timed SD1.5 calls" in lines[plan]
    progress = [line for line in lines[plan:] if "ETA" in line]
    assert len(progress) == (len(demo_variants(4)) - 1) + 10  # every fixture run, every timed kind of call
    assert progress[-1].startswith("[" + "#" * 20 + "] 100 %")
    assert "python -m dato bench" in lines[-1]


def test_demo_without_the_sd15_part(tmp_path, capsys):
    assert cli.main(["demo", "--no-sd15", "--steps", "2", "--samples", "1", "--repeats", "1", "--threads", "1",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert "sd15_time_speedup" not in report["rows"][0]
    assert "SD1.5" not in capsys.readouterr().out.split("plan:")[1].splitlines()[0]


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "--samples 0: expected an integer 1..100"),
    (["--repeats", "x"], "--repeats x: expected an integer 1..100"),
    (["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    (["--size", "100"], "--size 100: expected a multiple of 64 pixels (64, 128, ..., 4096)"),
    (["--sd-repeats", "0"], "--sd-repeats 0: expected an integer 1..100"),
    (["--out", ""], "--out '': expected a path"),
])
def test_demo_refuses_bad_values_in_one_line_before_anything_starts(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n" and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no folder left behind


def test_demo_refuses_an_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    assert cli.main(["demo", "--out", str(target)]) == 2
    assert capsys.readouterr().err == f"error: --out {target}: exists and is not a folder\n"
