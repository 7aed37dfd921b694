"""The benchmark command end to end on the tiny UNet (structure and arithmetic, never timings)."""

from __future__ import annotations

import json

import pytest

from dato import __main__ as cli
from dato.core.schedule import FULL
from dato.evaluation.bench import BenchConfig, build_variants, format_table, run_benchmark, step_kinds

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: one thread is far faster on a busy machine


def test_variants_cover_baseline_methods_peer_presets_and_combinations():
    variants = build_variants(50)
    names = {v.name for v in variants}
    assert {"baseline", "prune 0.5", "merge 0.5", "downsample 0.75", "tomesd 0.5", "fast", "dato-reference"} <= names
    assert any(" + " in n for n in names)
    assert all(v.schedule.steps == 50 for v in variants)
    assert step_kinds(variants[0])[0].action == FULL


@pytest.fixture(scope="module")
def quick_report():
    config = BenchConfig(model="tiny", size=128, steps=4, repeats=1, fidelity_size=64, quick=True)
    lines = []
    return run_benchmark(config, log=lines.append), lines


def test_quick_benchmark_reports_every_variant_against_the_baseline(quick_report):
    report, lines = quick_report
    rows = {r["name"]: r for r in report.rows}
    assert rows["baseline"]["speedup_ldm"] == pytest.approx(1.0)
    assert rows["baseline"]["speedup_sdpa"] == pytest.approx(1.0)
    assert rows["baseline"]["macs_speedup"] == pytest.approx(1.0)
    assert rows["baseline"]["fidelity_rel_l2"] == 0.0
    assert rows["deepcache-every2-d0"]["macs_speedup"] > 1.0
    assert rows["prune 0.5"]["fidelity_rel_l2"] > 0.0
    assert {r["method"] for r in report.token_overhead} == {
        "prune[shared-plan]", "prune[base-restore]", "prune[faithful]", "merge", "downsample"}
    assert report.confirmation["schedule"] == "fast"
    plan = [line for line in lines if line.startswith("[plan]") and "in all" in line]
    assert len(plan) == 1 and "fidelity" in plan[0] and "end-to-end" in plan[0]  # said up front, before any timing
    assert lines.index(plan[0]) < next(i for i, line in enumerate(lines) if "[ldm]" in line)
    progress = [line for line in lines if "ETA" in line]
    assert any("[ldm]" in line for line in progress) and any("[fidelity" in line for line in progress)
    assert progress[-1].startswith("[" + "#" * 20 + "] 100 %")  # the last task ends the plan
    table = format_table(report)
    assert "baseline" in table and "end-to-end check" in table


def test_bench_table_has_a_legend(quick_report):
    legend = format_table(quick_report[0]).split("\n\n")[0]
    assert "MACs x" in legend and "composed from timed calls" in legend and "random weights" in legend
    assert "says nothing of image quality" in legend


def test_bench_cli_writes_json(tmp_path, capsys):
    code = cli.main(["bench", "--model", "tiny", "--quick", "--steps", "3", "--attention", "ldm", "--no-fidelity",
                     "--no-confirm", "--out", str(tmp_path)])
    assert code == 0
    files = list(tmp_path.glob("bench-tiny-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["rows"][0]["name"] == "baseline"
    assert "baseline" in capsys.readouterr().out


def test_bench_cli_rejects_sizes_the_unet_cannot_take(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--size", "500"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --size 500: expected a multiple of 64 pixels (64, 128, ..., 4096)\n"


def test_schedules_cli_lists_and_validates(capsys, tmp_path):
    assert cli.main(["schedules"]) == 0
    assert "balanced" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "cache": [0]}')
    assert cli.main(["schedules", str(bad)]) == 1
    assert "the first step must be 'full'" in capsys.readouterr().out


def test_bench_in_bf16_reports_the_device_the_patch_overhead_and_no_memory_counter_on_a_cpu(tmp_path, capsys):
    code = cli.main(["bench", "--model", "tiny", "--quick", "--steps", "3", "--size", "64", "--dtype", "bf16",
                     "--device", "cpu", "--no-fidelity", "--no-confirm", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads(next(tmp_path.glob("bench-tiny-64px-cpu-bf16-*.json")).read_text())
    assert data["machine"]["dtype"] == "bf16" and data["machine"]["device"] == "cpu"
    assert list(data["step_kinds"]) == ["sdpa"]  # ldm's attention cannot run in half precision
    overhead = data["patch_overhead"]["sdpa"]
    assert overhead["unpatched_ms"] > 0 and overhead["patched_ms"] > 0 and overhead["latent"] == 8
    assert data["rows"][0]["peak_mib_sdpa"] is None
    out = capsys.readouterr().out
    assert "device: cpu" in out and "dtype bf16" in out and "patch overhead (sdpa" in out and "n/a" in out


def test_bench_refuses_ldm_attention_in_half_precision(capsys):
    assert cli.main(["bench", "--attention", "ldm", "--dtype", "fp16"]) == 2
    assert "--attention ldm: ldm's own attention does not run in fp16" in capsys.readouterr().err
