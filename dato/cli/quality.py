"""``python -m dato quality``: the quality-vs-speed table on the trained fixture."""

from __future__ import annotations

import argparse

import torch

from dato.evaluation.quality import QualityConfig, format_markdown, run_quality, write_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--per-class", type=int, default=8, help="samples per digit class (default 8)")
    parser.add_argument("--sampler", choices=("euler", "ddim", "heun"), default="euler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/quality", help="folder for quality.md, quality-timing.md, JSON, plot")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only this variant (and the baseline); repeat for several")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice; 1 is fastest on a shared 2-core machine)")


def run(args: argparse.Namespace) -> int:
    if args.steps < 2 or args.per_class < 1:
        raise SystemExit("--steps must be >= 2 and --per-class >= 1")
    config = QualityConfig(steps=args.steps, per_class=args.per_class, sampler=args.sampler, seed=args.seed,
                           out=args.out, plot=not args.no_plot, threads=args.threads, only=tuple(args.only))
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        rows = run_quality(config, log=lambda m: print(m, flush=True))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    written = write_reports(rows, config)
    print()
    print(format_markdown(rows, timing=False))
    print(format_markdown(rows, timing=True))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
