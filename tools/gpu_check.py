"""GPU checks and the fp16 benchmark in one run: ``python tools/gpu_check.py`` (about 5-8 minutes on a GPU).

What it does, on ``--device`` (default: cuda when present, else mps, else cpu) in ``--dtype`` (default fp16):

1. synchronisation: a patched SD1.5-shaped UNet at 512 px through a full, a cached, a reused and a
   prune/merge/downsample step under ``torch.cuda.set_sync_debug_mode('error')`` (CUDA; elsewhere the
   host reads ``.item()``/``.cpu()``/``.tolist()``/``bool``/``float`` are counted instead);
2. half-precision correctness: the same steps in ``--dtype`` against fp32 on the same device
   (relative L2 of the UNet output; finite or not);
3. the benchmark (``dato.evaluation.bench``, SDPA attention, no fidelity runs) at each ``--sizes`` with
   peak device memory per variant and the patch's own per-call overhead.

Writes ``gpu-check.json`` and ``gpu-check.md`` into ``--out``. Needs only ``dato`` (and ldm/torch),
never ``scripts/``. On a CPU use ``--model tiny --sizes 64 --quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dato  # noqa: E402
from dato.core.schedule import FULL, REUSE, Schedule  # noqa: E402
from dato.evaluation import device as dev  # noqa: E402
from dato.evaluation.bench import BenchConfig, format_table, run_benchmark  # noqa: E402
from dato.evaluation.models import build_unet, place_unet, sd15_unet_config, tiny_unet_config  # noqa: E402

STEPS = {
    "full": Schedule("s", (FULL, FULL), (0.0, 0.0), "none"),
    "cached d0": Schedule("s", (FULL, 0), (0.0, 0.0), "none"),
    "reuse": Schedule("s", (FULL, REUSE), (0.0, 0.0), "none"),
    "prune 0.5": Schedule("s", (FULL, FULL), (0.5, 0.5), "prune"),
    "merge 0.5": Schedule("s", (FULL, FULL), (0.5, 0.5), "merge"),
    "downsample 0.75": Schedule("s", (FULL, FULL), (0.75, 0.75), "downsample"),
    "cached d1 + prune 0.5": Schedule("s", (FULL, 1), (0.5, 0.5), "prune"),
}
SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def two_steps(unet, x, context, schedule):
    dato.apply_patch(unet, schedule, clock="manual", seed=0)
    try:
        with torch.no_grad():
            out = None
            for i, t in enumerate((999.0, 950.0)):
                dato.set_step(unet, i, 2)
                out = unet(x, torch.full((x.shape[0],), t, device=x.device), context=context)
        return out
    finally:
        dato.remove_patch(unet)


def host_reads(fn, cuda: bool) -> list[str]:
    """Python-level host reads of tensors during ``fn()``; on CUDA, the sync debug mode instead."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            return []
        except RuntimeError as exc:
            return [str(exc).splitlines()[0]]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}
    try:
        for name, original in originals.items():
            def counted(self, *args, _n=name, _o=original, **kwargs):
                calls.append(_n)
                return _o(self, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        fn()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return calls


def check_steps(model: str, size: int, device: str, dtype: torch.dtype, log) -> list[dict]:
    config, ctx_dim, ctx_len = (sd15_unet_config(), 768, 77) if model == "sd15" else (tiny_unet_config(), 32, 7)
    base = build_unet(config, seed=0)
    reference = place_unet(copy.deepcopy(base), device)
    half = place_unet(base, device, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=gen)
    context = torch.randn(2, ctx_len, ctx_dim, generator=gen)
    x32, c32 = x.to(device), context.to(device)
    xh, ch = x.to(device, dtype), context.to(device, dtype)
    cuda = torch.device(device).type == "cuda"
    rows = []
    for name, schedule in STEPS.items():
        two_steps(half, xh, ch, schedule)  # warm-up
        reads = host_reads(lambda schedule=schedule: two_steps(half, xh, ch, schedule), cuda)
        out = two_steps(half, xh, ch, schedule).float()
        ref = two_steps(reference, x32, c32, schedule).float()
        row = {"step": name, "host_syncs": reads, "finite": bool(torch.isfinite(out).all()),
               "rel_l2_vs_fp32": float((out - ref).norm() / ref.norm())}
        rows.append(row)
        log(f"[check {size}px] {name:<24} syncs {len(reads)}  finite {row['finite']}  "
            f"rel-L2 vs fp32 {row['rel_l2_vs_fp32']:.4f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best one here)")
    parser.add_argument("--dtype", choices=tuple(dev.DTYPES), default="fp16")
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--sizes", default="512,1024", help="benchmark sizes in pixels (default 512,1024)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer benchmark variants (smoke run)")
    parser.add_argument("--out", default="gpu-check")
    args = parser.parse_args(argv)
    device = args.device or default_device()
    try:
        dev.check_device(device)
    except ValueError as exc:
        print(f"error: --device {device}: {exc}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    dtype = dev.DTYPES[args.dtype]
    started = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "device_name": torch.cuda.get_device_name(device) if "cuda" in device else device,
              "dtype": args.dtype, "torch": torch.__version__, "command": " ".join(["python tools/gpu_check.py",
                                                                                      *(argv or sys.argv[1:])]),
              "checks": check_steps(args.model, sizes[0], device, dtype, log), "bench": {}}
    tables = []
    for size in sizes:
        config = BenchConfig(model=args.model, size=size, steps=args.steps, repeats=args.repeats,
                             attention=("sdpa",), fidelity=False, confirm=False, quick=args.quick,
                             device=device, dtype=args.dtype)
        report = run_benchmark(config, log=log)
        result["bench"][str(size)] = asdict(report)
        tables.append(f"## {size} px\n\n```\n{format_table(report)}\n```\n")
    result["seconds"] = time.perf_counter() - started
    checks = "\n".join(f"| {r['step']} | {len(r['host_syncs'])} | {r['finite']} | {r['rel_l2_vs_fp32']:.4f} |"
                       for r in result["checks"])
    md = (f"# GPU check: {result['device_name']} ({device}), {args.dtype}, torch {torch.__version__}\n\n"
          f"`{result['command']}` ({result['seconds']:.0f} s)\n\n"
          f"| step ({sizes[0]} px) | host syncs | finite | rel-L2 vs fp32 |\n|---|---:|:-:|---:|\n{checks}\n\n"
          + "\n".join(tables))
    (out / "gpu-check.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu-check.md").write_text(md)
    print(md)
    print(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    bad = [r["step"] for r in result["checks"] if r["host_syncs"] or not r["finite"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
