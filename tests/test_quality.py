"""``python -m dato quality`` on the trained fixture: deterministic, complete, and honest about bad input."""

from __future__ import annotations

import argparse
import json

import pytest

from dato.evaluation.quality import QualityConfig, format_markdown, pareto_front, run_quality

pytestmark = pytest.mark.usefixtures("one_thread")

ONLY = ("deepcache-every2-d0", "prune 0.5")


def small(tmp_path, **kw) -> QualityConfig:
    return QualityConfig(steps=4, per_class=1, out=str(tmp_path), plot=False, only=ONLY, **kw)


def test_pareto_front_by_hand():
    points = [(1.0, 1.0), (2.0, 0.9), (1.5, 0.8), (3.0, 0.5), (2.0, 0.9)]
    # (1.5, 0.8) is dominated by (2.0, 0.9); the two equal points do not dominate each other
    assert pareto_front(points) == [0, 1, 3, 4]


def test_rows_are_deterministic_and_complete(tmp_path):
    first = run_quality(small(tmp_path), log=lambda m: None)
    second = run_quality(small(tmp_path), log=lambda m: None)
    assert [r["name"] for r in first] == ["baseline", "prune 0.5", "deepcache-every2-d0"]
    base = first[0]
    assert base["macs_speedup"] == 1.0 and base["psnr"] == float("inf") and base["ssim"] == 1.0
    assert base["pareto"]
    cached = first[2]
    assert cached["macs_speedup"] > 1.5 and 0 < cached["ssim"] < 1 and cached["rel_l2"] > 0
    assert 0 <= cached["accuracy"] <= 1 and cached["frechet"] > 0
    assert format_markdown(first, timing=False) == format_markdown(second, timing=False)
    timing = format_markdown(first, timing=True)
    assert timing.splitlines()[0] == "| variant | MACs x | wall-time x | seconds |"


def test_command_writes_the_files(tmp_path, capsys):
    from dato.cli import quality as quality_cli

    parser = argparse.ArgumentParser()
    quality_cli.add_arguments(parser)
    args = parser.parse_args(["--steps", "3", "--per-class", "1", "--out", str(tmp_path), "--no-plot",
                              "--only", "prune 0.5", "--threads", "1"])
    assert quality_cli.run(args) == 0
    assert f"writing into {tmp_path}/" in capsys.readouterr().out
    table = (tmp_path / "quality.md").read_text()
    assert table.count("\n") == 4 and "| prune 0.5 |" in table
    data = json.loads((tmp_path / "quality.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["baseline", "prune 0.5"]
    assert "seconds" not in data["rows"][0]  # the JSON holds only the deterministic columns
    assert (tmp_path / "quality-timing.md").is_file() and not (tmp_path / "quality.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "--steps 1: expected an integer 2..10000"),
    (["--per-class", "0"], "--per-class 0: expected an integer >= 1"),
    (["--only", "no such variant", "--steps", "2"], "--only 'no such variant': unknown variant"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    from dato.__main__ import main

    try:
        code = main(["quality", *argv, "--out", str(tmp_path / "out"), "--no-plot"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_speed_target_and_adaptive_rows(tmp_path):
    config = QualityConfig(steps=6, per_class=1, out=str(tmp_path), plot=False, only=("target 2x", "adaptive 0.3"))
    rows = {r["name"]: r for r in run_quality(config, log=lambda m: None)}
    assert rows["target 2x"]["macs_speedup"] >= 2
    adaptive = rows["adaptive 0.3"]
    assert adaptive["preview"][0] == "F" and len(adaptive["preview"]) == 6
    assert adaptive["macs_speedup"] == pytest.approx(1.0) if set(adaptive["preview"]) == {"F"} \
        else adaptive["macs_speedup"] > 1


def test_the_token_study_runs_only_token_variants():
    """--study tokens is the token-method comparison; the speed-target and adaptive rows belong to the default set."""
    from dato.evaluation.bench import token_study_variants
    from dato.evaluation.quality import SPEED_VARIANT_NAMES

    names = {v.name for v in token_study_variants(10)}
    assert names and not names & set(SPEED_VARIANT_NAMES)
    from dato.cli import quality as quality_cli
    from dato.cli.common import CliError

    parser = argparse.ArgumentParser()
    quality_cli.add_arguments(parser)
    with pytest.raises(CliError, match="unknown variant"):
        quality_cli.run(parser.parse_args(["--study", "tokens", "--only", "target 2x", "--no-plot"]))
