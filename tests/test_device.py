"""--device and --dtype: checked at parse time, threaded into the models; timing and memory helpers on the CPU."""

from __future__ import annotations

import pytest
import torch

from dato import __main__ as cli
from dato.evaluation import device as dev


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["bench", "quality", "search", "calibrate", "gates", "compare"])
def test_a_device_that_is_not_here_is_one_line_naming_the_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--device", "cuda:1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda:1: CUDA is not available here") and err.count("\n") == 1


def test_mps_is_refused_where_there_is_none(capsys):
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(SystemExit):
        cli.main(["bench", "--device", "mps"])
    assert "--device mps: MPS (Apple silicon) is not available here" in capsys.readouterr().err


def test_device_helpers_on_the_cpu_time_and_report_no_memory_counter():
    assert dev.check_device("cpu") == torch.device("cpu")
    assert dev.peak_memory("cpu") is None
    dev.reset_peak_memory("cpu")
    dev.synchronize("cpu")
    calls = []
    seconds = dev.median_time(lambda: calls.append(1), repeats=3)
    assert seconds >= 0 and len(calls) == 4  # one warm-up, three timed
    assert dev.dtype_name(torch.bfloat16) == "bf16"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_builtin_backend_and_bench_model_take_the_dtype(dtype):
    from dato.core.schedule import Schedule
    from dato.evaluation.backends import builtin_backend

    backend = builtin_backend(latent_size=8, steps=3, model="tiny", device="cpu", dtype=dev.DTYPES[dtype])
    assert next(backend.unet.parameters()).dtype == dev.DTYPES[dtype]
    samples = backend.generate(Schedule.full(3, 0.5, "prune"), [("a", 0)])
    assert samples.latents.dtype == torch.float32 and torch.isfinite(samples.latents).all()
    assert backend.describe()["dtype"] == str(dev.DTYPES[dtype]).replace("torch.", "")


def test_fixture_in_bf16_is_a_copy_and_the_fp32_fixture_is_untouched():
    from dato.evaluation.fixture import load_fixture

    base = load_fixture()
    half = load_fixture(dtype=torch.bfloat16)
    assert half is not base and half.unet is not base.unet
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    assert next(base.unet.parameters()).dtype == torch.float32
    assert load_fixture(device="cpu", dtype=torch.float32) is base
    out = half.sample([3], steps=2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_backend_from_args_passes_device_and_dtype(monkeypatch):
    from dato.cli import common
    from dato.evaluation import backends

    seen = {}
    monkeypatch.setattr(backends, "builtin_backend", lambda **kw: seen.update(kw) or "backend")
    parser = common.CliParser()
    common.add_model_arguments(parser)
    common.add_sampling_arguments(parser, 4)
    args = parser.parse_args(["--builtin", "tiny", "--dtype", "bf16"])
    assert common.backend_from_args(args, 4) == "backend"
    assert seen["device"] == "cpu" and seen["dtype"] == torch.bfloat16
    args = parser.parse_args(["--builtin", "tiny", "--half"])
    common.backend_from_args(args, 4)
    assert seen["dtype"] == torch.float16
