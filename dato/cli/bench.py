"""``python -m dato bench``: time and count MACs of every method and preset against the baseline."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from dataclasses import asdict
from pathlib import Path

from dato.cli.common import (
    CliError,
    add_device_arguments,
    bad,
    check_output_dir,
    existing_file,
    int_range,
    path_arg,
    pixel_size,
    require,
    steps_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=existing_file, help="an SD1.x or SDXL base .safetensors/.ckpt; default: "
                                                          "built-in UNet of --arch, random weights")
    parser.add_argument("--arch", choices=("sd1", "sdxl"), default=None,
                        help="built-in UNet: sd1 (SD1.5 architecture, default) or sdxl (SDXL base architecture; "
                             "about 10 GB of memory in float32)")
    parser.add_argument("--model", choices=("sd15", "tiny", "sdxl", "tiny-sdxl"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--size", type=pixel_size, default=None,
                        help="image size in pixels, a multiple of 64 (default 512; 128 with --quick)")
    parser.add_argument("--steps", type=steps_int(2), default=None, help="sampling steps (default 50; 10 with "
                                                                          "--quick)")
    parser.add_argument("--sampler", choices=("euler", "ddim"), default="euler")
    parser.add_argument("--repeats", type=int_range(1, 1000), default=None,
                        help="timed repeats of each kind of step (median; default 3, 1 with --quick)")
    parser.add_argument("--attention", choices=("ldm", "sdpa", "both"), default="both")
    parser.add_argument("--fidelity-size", type=pixel_size, default=None,
                        help="pixel size of the real sampling runs that measure rel-L2 to the baseline (default 128; "
                             "64 with --quick)")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the fidelity sampling runs")
    parser.add_argument("--no-confirm", action="store_true", help="skip the end-to-end timing check")
    parser.add_argument("--threads", type=int_range(0, 1024), default=0, help="torch threads (default 0: torch's "
                                                                             "choice)")
    parser.add_argument("--out", type=path_arg, default="bench-results",
                        help="folder for the JSON report (default bench-results)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 px, 10 steps, fewer variants, 1 repeat")
    parser.add_argument("--no-overhead", action="store_true", help="skip timing the patch's own per-call overhead")
    add_device_arguments(parser)


def config_from_args(args: argparse.Namespace):
    """Defaults depend on ``--quick``; anything given explicitly wins (every value was checked by its type)."""
    from dato.evaluation.bench import BenchConfig

    quick = args.quick

    def given(value, quick_default, default):
        return value if value is not None else (quick_default if quick else default)

    return BenchConfig(
        model=args.ckpt or args.model or {"sdxl": "sdxl"}.get(args.arch, "sd15"),
        size=given(args.size, 128, 512),
        steps=given(args.steps, 10, 50),
        sampler=args.sampler,
        repeats=given(args.repeats, 1, 3),
        attention=(("ldm", "sdpa") if args.dtype == "fp32" else ("sdpa",)) if args.attention == "both"
        else (args.attention,),
        fidelity_size=given(args.fidelity_size, 64, 128),
        fidelity=not args.no_fidelity, confirm=not args.no_confirm, threads=args.threads, out=args.out, quick=quick,
        device=args.device, dtype=args.dtype, overhead=not args.no_overhead,
    )


def run(args: argparse.Namespace) -> int:
    check_output_dir("--out", args.out)
    if args.dtype != "fp32" and args.attention == "ldm":
        raise bad("--attention", "ldm", f"ldm's own attention does not run in {args.dtype} (it upcasts q and k "
                                        "only); use sdpa, as the WebUI does")
    if args.ckpt and args.ckpt.endswith(".safetensors"):
        require("bench", "safetensors", "safetensors", "for a .safetensors checkpoint")
    if args.ckpt:  # before any folder or model: a damaged or foreign file is one line, not a traceback
        from dato.evaluation.models import CheckpointError, check_checkpoint

        try:
            check_checkpoint(args.ckpt)
        except CheckpointError as exc:
            raise CliError(str(exc)) from None
    config = config_from_args(args)
    from dato.evaluation.bench import BenchReport, format_table, run_benchmark

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.model if config.model in ("sd15", "tiny", "sdxl", "tiny-sdxl") else "ckpt"
    path = out / f"bench-{name}-{config.size}px-{config.device.replace(':', '')}-{config.dtype}-{stamp}.json"

    def write(report: BenchReport) -> None:
        path.write_text(json.dumps(asdict(report), indent=1, default=str))

    report = run_benchmark(config, log=lambda m: print(m, flush=True), checkpoint=write)
    write(report)
    print()
    print(format_table(report))
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0
