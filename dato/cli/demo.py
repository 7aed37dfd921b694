"""``python -m dato demo``: the product in a few minutes: presets on the trained fixture and SD1.5 speed-ups.

Everything heavy lives in :mod:`dato.evaluation.demo`; this module checks the
command line (before anything is built) and prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dato.cli.common import check_output_dir, int_range, path_arg, pixel_size, require, seed_int, steps_int

DEFAULT_OUT = "demo-results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=steps_int(2), default=None, help="sampling steps (default 20; 10 with --quick)")
    parser.add_argument("--samples", type=int_range(1, 100), default=None,
                        help="fixture samples per variant, digits 0..9 in turn (default 10; 4 with --quick)")
    parser.add_argument("--repeats", type=int_range(1, 100), default=None,
                        help="timed fixture runs per variant, the fastest counts (default 2; 1 with --quick)")
    parser.add_argument("--size", type=pixel_size, default=None,
                        help="SD1.5 part: image side in pixels, a multiple of 64 (default 256; 64 with --quick)")
    parser.add_argument("--sd-repeats", type=int_range(1, 100), default=1,
                        help="SD1.5 part: timed calls of each kind, median (default 1)")
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15", help=argparse.SUPPRESS)
    parser.add_argument("--no-sd15", action="store_true", help="skip the SD1.5-architecture timing")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--threads", type=int_range(0, 1024), default=0,
                        help="torch threads (default 0: torch's choice)")
    parser.add_argument("--out", type=path_arg, default=DEFAULT_OUT,
                        help=f"folder for demo-grid.png, demo.md, demo.json (default {DEFAULT_OUT}, untracked)")
    parser.add_argument("--quick", action="store_true",
                        help="every part at its smallest (10 steps, 4 samples, SD1.5 at 64 px): under a minute")


def config_from_args(args: argparse.Namespace):
    """Defaults depend on ``--quick``; anything given explicitly wins (every value was checked by its type)."""
    from dato.evaluation.demo import QUICK, DemoConfig

    base = DemoConfig()

    def given(name: str):
        value = getattr(args, name)
        return value if value is not None else (QUICK[name] if args.quick else getattr(base, name))

    return DemoConfig(steps=given("steps"), samples=given("samples"), repeats=given("repeats"), size=given("size"),
                      sd_repeats=args.sd_repeats, sd15=not args.no_sd15, sd_model=args.model, threads=args.threads,
                      seed=args.seed, out=args.out, quick=args.quick)


def run(args: argparse.Namespace) -> int:
    check_output_dir("--out", args.out)
    require("demo", "PIL", "Pillow", "for ldm and the grid picture")
    require("demo", "safetensors", "safetensors", "for the fixture's weights")
    require("demo", "ldm", "stable-diffusion-sdkit", "(ldm's UNet; install it with --no-deps)", find_only=True)
    config = config_from_args(args)
    from dato.evaluation.demo import format_markdown, legend, run_demo, write_outputs

    started = time.perf_counter()
    print(f"writing into {Path(config.out).resolve()}/ (demo-grid.png, demo.md, demo.json)", flush=True)
    result = run_demo(config, log=lambda m: print(m, flush=True))
    paths = write_outputs(result, config.out)
    print()
    print(format_markdown(result))
    for line in legend(result):
        print(f"* {line}")
    print(f"\nthe picture: {paths[0]}\nwrote {', '.join(str(p) for p in paths)} "
          f"({time.perf_counter() - started:.0f} s)")
    print("the full benchmark (every method, both attention paths, 512 px, 50 steps): python -m dato bench")
    return 0
