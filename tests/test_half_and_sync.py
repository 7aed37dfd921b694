"""The hot path on devices: no host synchronisation per patched UNet call; half precision stays close to fp32.

A GPU runs the UNet asynchronously; a ``.item()``, ``.cpu()``, ``.tolist()`` or a Python ``if tensor``
in the patch would stall it on every call. On a CPU that cannot be seen as a stall, so the first test
counts those calls through a patched forward at every kind of step; where CUDA exists, the second runs
the same calls under ``torch.cuda.set_sync_debug_mode('error')``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_inputs

import dato
from dato.core.schedule import FULL, REUSE, Schedule
from dato.evaluation.models import place_unet

# (name, schedule of two steps: a full step, then the step under test)
STEPS = [
    ("full", Schedule("s", (FULL, FULL), (0.0, 0.0), "none")),
    ("cached d1", Schedule("s", (FULL, 1), (0.0, 0.0), "none")),
    ("cached d0", Schedule("s", (FULL, 0), (0.0, 0.0), "none")),
    ("reuse", Schedule("s", (FULL, REUSE), (0.0, 0.0), "none")),
    ("prune", Schedule("s", (FULL, FULL), (0.5, 0.5), "prune")),
    ("merge", Schedule("s", (FULL, FULL), (0.5, 0.5), "merge")),
    ("downsample", Schedule("s", (FULL, FULL), (0.75, 0.75), "downsample")),
    ("cached d1 + prune", Schedule("s", (FULL, 1), (0.5, 0.5), "prune")),
]
SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _two_steps(unet, x, context, schedule, seed=0):
    """Both steps with a manual clock (as in the WebUI); returns the second step's output."""
    dato.apply_patch(unet, schedule, clock="manual", seed=seed)
    try:
        with torch.no_grad():
            outs = []
            for i, t in enumerate((999.0, 950.0)):
                dato.set_step(unet, i, 2)
                outs.append(unet(x, torch.full((x.shape[0],), t, dtype=x.dtype), context=context))
        return outs
    finally:
        dato.remove_patch(unet)


class SyncCounter:
    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(self_, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("name,schedule", STEPS, ids=[s[0] for s in STEPS])
def test_a_patched_unet_call_reads_nothing_back_to_the_host(unet, monkeypatch, name, schedule):
    x, context = make_inputs()
    _two_steps(unet, x, context, schedule)  # builds per-shape buffers outside the counted run
    with monkeypatch.context() as m:
        counter = SyncCounter(m)
        with torch.no_grad():
            unet(x, torch.full((2,), 999.0), context=context)
        unpatched = list(counter.calls)
        counter.calls.clear()
        _two_steps(unet, x, context, schedule)
    assert unpatched == []  # the counter sees nothing in ldm's own forward either
    assert counter.calls == [], f"{name}: host reads {counter.calls}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("name,schedule", STEPS, ids=[s[0] for s in STEPS])
def test_a_patched_unet_call_does_not_synchronise_cuda(unet, name, schedule):
    gpu = copy.deepcopy(unet).cuda()
    x, context = (t.cuda() for t in make_inputs())
    _two_steps(gpu, x, context, schedule)  # warm-up: buffers, generators, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _two_steps(gpu, x, context, schedule)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# Half precision on the CPU. bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 % per operation),
# fp16 11 (0.05 %); through the tiny UNet's ~25 blocks, with random weights, the output drifts a few
# tenths of a percent (fp16) to a few percent (bf16) from fp32. Token choice (argsort of similarities)
# may flip between near-equal candidates in lower precision, which moves a token's output to a
# neighbour's: the bound below leaves room for that and still fails on any overflow, NaN or wrong cast.
TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.03}


def _half_ok(dtype):
    try:
        a = torch.randn(4, 4, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(a[None], a[None], a[None])
        torch.nn.functional.conv2d(torch.randn(1, 2, 4, 4, dtype=dtype), torch.randn(2, 2, 3, 3, dtype=dtype))
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        return str(exc)
    return None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,schedule", STEPS, ids=[s[0] for s in STEPS])
def test_half_precision_outputs_are_finite_and_close_to_fp32(unet, dtype, name, schedule):
    missing = _half_ok(dtype)
    if missing:
        pytest.skip(f"this torch has no CPU {dtype} kernels: {missing}")
    x, context = make_inputs()
    reference = _two_steps(place_unet(copy.deepcopy(unet)), x, context, schedule)[1]
    half = place_unet(copy.deepcopy(unet), dtype=dtype)
    out = _two_steps(half, x.to(dtype), context.to(dtype), schedule)[1]
    assert out.dtype == dtype and torch.isfinite(out).all()
    error = float((out.float() - reference).norm() / reference.norm())
    assert error < TOLERANCE[dtype], f"{name} in {dtype}: relative L2 {error:.4f}"


@pytest.mark.parametrize("restore", ["base", "kept"])
def test_similarity_does_not_overflow_on_a_backend_whose_half_norm_does(monkeypatch, restore):
    """On a backend whose half ``norm`` sums squares in half precision (simulated here: this CPU build's own
    ``norm`` accumulates in fp32), |x|^2 overflows fp16 and a plan built from half norms would be all ties; the
    token plans normalise half tensors in fp32 and pick what fp32 picks, for matching and for restoration."""
    from dato.core.tokens import merge_plan, prune_plan

    gen = torch.Generator().manual_seed(0)
    metric = (torch.randn(2, 64, 320, generator=gen) * 40).half()  # |x|^2 summed over 320 channels >> 65504
    reference = prune_plan(metric.float(), (8, 8), 0.5, None, torch.zeros(2, 64), restore=restore)
    real_norm = torch.Tensor.norm

    def half_accumulating_norm(self, *args, **kwargs):
        if self.dtype == torch.float16:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            return (self * self).sum(dim=dim, keepdim=kwargs.get("keepdim", False)).sqrt()
        return real_norm(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "norm", half_accumulating_norm)
    assert not torch.isfinite(metric.norm(dim=-1)).all()  # the simulated backend does overflow
    plan = prune_plan(metric, (8, 8), 0.5, None, torch.zeros(2, 64, dtype=torch.float16), restore=restore)
    assert plan.kept_tokens == reference.kept_tokens
    assert torch.equal(plan.kept, reference.kept) and torch.equal(plan.source, reference.source)
    assert merge_plan(metric, (8, 8), 0.5) is not None


def test_upcast_sampling_a_half_unet_fed_fp32_by_the_host_as_the_webui_does(unet):
    """--upcast-sampling: the UNet holds bf16 weights, the sampler works in fp32; A1111's apply_model casts
    x and the conditioning to the UNet's dtype and the output back to fp32. --no-half is the fp32 UNet."""
    x, context = make_inputs()
    half = place_unet(copy.deepcopy(unet), dtype=torch.bfloat16)
    schedule = Schedule("s", (FULL, 1), (0.5, 0.5), "prune")

    class Upcast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t, context=None):
            return self.inner(x.to(torch.bfloat16), t, context=context.to(torch.bfloat16)).float()

    wrapped = Upcast(half)
    dato.apply_patch(half, schedule, clock="manual")
    try:
        with torch.no_grad():
            outs = []
            for i, t in enumerate((999.0, 950.0)):
                dato.set_step(half, i, 2)
                outs.append(wrapped(x, torch.full((2,), t), context=context))
    finally:
        dato.remove_patch(half)
    no_half = _two_steps(place_unet(copy.deepcopy(unet)), x, context, schedule)
    for a, b in zip(outs, no_half, strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert float((a - b).norm() / b.norm()) < TOLERANCE[torch.bfloat16]


def test_the_counter_sees_a_host_read_the_auto_clock_makes(unet, monkeypatch):
    """The check above can fail: the auto clock (not the WebUI's) reads one timestep per call, and is seen."""
    x, context = make_inputs()
    dato.apply_patch(unet, Schedule("s", (FULL, 1), (0.0, 0.0), "none"), clock="auto")
    try:
        with monkeypatch.context() as m:
            counter = SyncCounter(m)
            with torch.no_grad():
                unet(x, torch.full((2,), 999.0), context=context)
        assert counter.calls == ["__float__"]
    finally:
        dato.remove_patch(unet)


def test_the_gpu_check_script_runs_on_a_cpu_at_a_tiny_setting(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--device", "cpu", "--dtype", "bf16", "--model", "tiny", "--sizes", "64", "--steps", "2",
                        "--repeats", "1", "--quick", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    assert data["device"] == "cpu" and data["dtype"] == "bf16"
    assert all(r["host_syncs"] == [] and r["finite"] for r in data["checks"])
    assert data["bench"]["64"]["patch_overhead"]["sdpa"]["patched_ms"] > 0
    assert "| full |" in (tmp_path / "gpu-check.md").read_text()
