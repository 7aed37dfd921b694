"""The benchmark and checkpoint loading on SDXL (structure and arithmetic on a tiny SDXL UNet, never timings)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from dato.cli import bench as bench_cli
from dato.evaluation.bench import BenchConfig, format_table, run_benchmark
from dato.evaluation.models import build_unet, load_unet_from_checkpoint, tiny_sdxl_unet_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def xl_report():
    config = BenchConfig(model="tiny-sdxl", size=128, steps=4, repeats=1, attention=("sdpa",), fidelity_size=64,
                         quick=True)
    return run_benchmark(config, log=lambda m: None)


def test_the_sdxl_benchmark_reports_caching_and_todo_against_the_baseline(xl_report):
    rows = {r["name"]: r for r in xl_report.rows}
    assert rows["baseline"]["speedup_sdpa"] == pytest.approx(1.0) and rows["baseline"]["fidelity_rel_l2"] == 0.0
    assert rows["deepcache-every5-d0"]["macs_speedup"] > 1.5  # the DeepCache mechanism, its every-5 default
    assert rows["downsample 0.75"]["macs_speedup"] > 1.0  # ToDo's factor-2 downsampling, at SDXL's 64x64 level
    assert rows["prune 0.5"]["fidelity_rel_l2"] > 0.0
    assert not any(name.startswith("tomesd") for name in rows)  # tomesd acts on ds 1 only: no SDXL attention there
    # the overhead table's structure, not its timings (a busy machine can make any saving negative)
    overhead = {row["method"]: row for row in xl_report.token_overhead}
    assert set(overhead) == {"prune[shared-plan]", "prune[base-restore]", "prune[faithful]", "merge", "downsample"}
    assert all(0 < row["kept"] < row["tokens"] for name, row in overhead.items() if name != "downsample")
    assert all(math.isfinite(row["select_ms"]) and row["select_ms"] >= 0 for row in overhead.values())
    assert "baseline" in format_table(xl_report)


def test_arch_sdxl_selects_the_built_in_sdxl_unet():
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    assert bench_cli.config_from_args(parser.parse_args(["--arch", "sdxl", "--quick"])).model == "sdxl"
    assert bench_cli.config_from_args(parser.parse_args([])).model == "sd15"
    assert bench_cli.config_from_args(parser.parse_args(["--arch", "sdxl", "--ckpt", __file__])).model == __file__


def test_an_sdxl_checkpoint_loads_and_a_non_base_sgm_unet_is_named(tmp_path):
    from safetensors.torch import save_file

    unet = build_unet(tiny_sdxl_unet_config(), seed=4)
    path = tmp_path / "xl.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    loaded = load_unet_from_checkpoint(str(path), config=tiny_sdxl_unet_config())
    x, t, c, y = torch.randn(1, 4, 8, 8), torch.full((1,), 500.0), torch.randn(1, 7, 32), torch.randn(1, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context=c, y=y), unet(x, t, context=c, y=y))
    with pytest.raises(ValueError, match="an sgm UNet but not SDXL base \\(adm_in_channels 16"):
        load_unet_from_checkpoint(str(path))
