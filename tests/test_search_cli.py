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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--population", "1"], "population = 1"),
        (["--mode", "ratio"], "base_schedule is required"),
        (["--ratios", "3,x"], "--ratios"),
        (["--ratios", "3,8"], "ratio_levels"),
        (["--method", "none"], "method = 'none'"),
        (["--save-best", "bad/name"], "schedule name"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "No such file"),
        (["--checkpoint", "/nonexistent/model.safetensors"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path):
    code = main(["search", "--results-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
