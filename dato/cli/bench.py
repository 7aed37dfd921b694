"""``python -m dato bench``: time and count MACs of every method and preset against the baseline."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from dataclasses import asdict
from pathlib import Path

from dato.evaluation.bench import BenchConfig, BenchReport, format_table, run_benchmark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", help="an SD1.x .safetensors/.ckpt; default: built-in SD1.5-architecture UNet, "
                                       "random weights")
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help="image size in pixels (default 512; 128 with --quick)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 50; 10 with --quick)")
    parser.add_argument("--sampler", choices=("euler", "ddim"), default="euler")
    parser.add_argument("--repeats", type=int, help="timed repeats of each kind of step (median; default 3, 1 with "
                                                    "--quick)")
    parser.add_argument("--attention", choices=("ldm", "sdpa", "both"), default="both")
    parser.add_argument("--fidelity-size", type=int,
                        help="pixel size of the real sampling runs that measure rel-L2 to the baseline (default 128)")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the fidelity sampling runs")
    parser.add_argument("--no-confirm", action="store_true", help="skip the end-to-end timing check")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench-results", help="folder for the JSON report")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 px, 10 steps, fewer variants, 1 repeat")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Defaults depend on ``--quick``; anything given explicitly wins."""
    quick = args.quick
    config = BenchConfig(
        model=args.ckpt or args.model,
        size=args.size or (128 if quick else 512),
        steps=args.steps or (10 if quick else 50),
        sampler=args.sampler,
        repeats=args.repeats or (1 if quick else 3),
        attention=("ldm", "sdpa") if args.attention == "both" else (args.attention,),
        fidelity_size=args.fidelity_size or (64 if quick else 128),
        fidelity=not args.no_fidelity, confirm=not args.no_confirm, threads=args.threads, out=args.out, quick=quick,
    )
    if config.size % 64 or config.size < 64:
        raise SystemExit(f"--size {config.size}: use a multiple of 64 pixels")
    if config.fidelity_size % 64 or config.fidelity_size < 64:
        raise SystemExit(f"--fidelity-size {config.fidelity_size}: use a multiple of 64 pixels")
    if config.steps < 2 or config.repeats < 1:
        raise SystemExit("--steps must be >= 2 and --repeats >= 1")
    return config


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"bench-{config.model if config.model in ('sd15', 'tiny') else 'ckpt'}-{config.size}px-{stamp}.json"

    def write(report: BenchReport) -> None:
        path.write_text(json.dumps(asdict(report), indent=1, default=str))

    report = run_benchmark(config, log=lambda m: print(m, flush=True), checkpoint=write)
    write(report)
    print()
    print(format_table(report))
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0
