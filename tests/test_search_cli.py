"""``python -m dato search``: the headless search end to end on a tiny built-in model, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from dato.__main__ import main
from dato.core.schedule import Schedule


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_search_command_runs_prints_the_front_and_saves_the_pick(tmp_path, capsys, one_thread):
    code = main(["search", "--builtin", "tiny", "--latent-size", "8", "--steps", "4", "--population", "4",
                 "--generations", "2", "--no-presets", "--prompt", "a red fox", "--results-dir", str(tmp_path),
                 "--run-id", "cli", "--save-best", "cli-pick", "--save-dir", str(tmp_path / "user")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "generation 2/2" in out and "Pareto front (fidelity-snr" in out
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["status"] == "done" and results["prompts"] == ["a red fox"]
    assert results["settings"]["steps"] == 4 and results["model"]["model_hash"] == "builtin-tiny-seed0"
    saved = Schedule.load(tmp_path / "user" / "cli-pick.json")
    assert saved.steps == 4 and saved.provenance["run_id"] == "cli"


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status whether argparse or a later check refused the input."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--population", "1"], "--population 1: expected an integer 4..1000"),
        (["--mode", "ratio"], "--mode ratio: needs --base-schedule"),
        (["--ratios", "3,x"], "--ratios 3,x: expected comma-separated integers 0..7"),
        (["--ratios", "3,8"], "--ratios 3,8: expected comma-separated integers 0..7"),
        (["--method", "none"], "--method none: --mode joint searches token ratios"),
        (["--save-best", "bad/name"], "--save-best bad/name: use 1-64 letters"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file /nonexistent/prompts.txt: no such file"),
        (["--checkpoint", "/nonexistent/model.safetensors"], "--checkpoint /nonexistent/model.safetensors: no such"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path):
    code = run_cli(["search", "--results-dir", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_save_best_without_save_dir_is_found_by_the_schedules_command(tmp_path, capsys, monkeypatch, one_thread):
    from dato.cli import common, schedules

    user = tmp_path / "user"  # stands in for schedules/user, the default of --save-dir
    monkeypatch.setattr(common, "user_schedule_dir", lambda: user)
    monkeypatch.setattr(schedules, "user_schedule_dir", lambda: user)
    code = main(["search", "--builtin", "tiny", "--latent-size", "8", "--steps", "4", "--population", "4",
                 "--generations", "1", "--no-presets", "--prompt", "a red fox", "--results-dir", str(tmp_path),
                 "--save-best", "found-later"])
    assert code == 0 and (user / "found-later.json").is_file()
    capsys.readouterr()
    assert main(["schedules", "found-later"]) == 0
    assert capsys.readouterr().out.startswith("found-later (4 steps")
