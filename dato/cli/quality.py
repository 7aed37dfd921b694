"""``python -m dato quality``: the quality-vs-speed table on the trained fixture.

Writes into ``quality-results/`` (untracked) unless ``--out`` says otherwise;
the checked-in tables under ``docs/quality/`` are refreshed only on purpose,
with ``--out docs/quality``.
"""

from __future__ import annotations

import argparse

from dato.cli.common import (
    add_device_arguments,
    bad,
    check_output_dir,
    int_range,
    path_arg,
    positive_int,
    require,
    seed_int,
    steps_int,
    torch_dtype,
)

DEFAULT_OUT = "quality-results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=steps_int(2), default=20, help="sampling steps (default 20)")
    parser.add_argument("--per-class", type=positive_int, default=8, help="samples per digit class (default 8)")
    parser.add_argument("--sampler", choices=("euler", "ddim", "heun"), default="euler")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--out", type=path_arg, default=DEFAULT_OUT,
                        help=f"folder for quality.md, quality-timing.md, JSON, plot (default {DEFAULT_OUT}; "
                             "the README's tables live in docs/quality)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only this variant (and the baseline); repeat for several")
    parser.add_argument("--study", choices=("tokens",), default=None,
                        help="tokens: DaTo's faithful prune vs its shortcuts vs merge vs downsample at ratios "
                             "0.3/0.5/0.7, alone and on deepcache-every5-d0 (instead of the benchmark's variants)")
    parser.add_argument("--threads", type=int_range(0, 1024), default=0,
                        help="torch threads (default 0: torch's choice; 1 is fastest on a shared 2-core machine)")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_output_dir("--out", args.out)
    from dato.evaluation.bench import build_variants, token_study_variants
    from dato.evaluation.quality import SPEED_VARIANT_NAMES

    if args.study == "tokens":
        known = {v.name for v in token_study_variants(args.steps)}
    else:
        known = {v.name for v in build_variants(args.steps)} | set(SPEED_VARIANT_NAMES)
    for name in args.only:
        if name not in known:
            raise bad("--only", name, f"unknown variant; known: {', '.join(sorted(known))}")
    require("quality", "sklearn", "scikit-learn", "for the fixture's digits and classifier")
    require("quality", "safetensors", "safetensors", "for the fixture's weights")
    if not args.no_plot:
        require("quality", "matplotlib", "matplotlib", "for quality.png (or pass --no-plot)")

    import torch

    from dato.evaluation.quality import QualityConfig, format_markdown, run_quality, write_reports

    config = QualityConfig(steps=args.steps, per_class=args.per_class, sampler=args.sampler, seed=args.seed,
                           out=args.out, plot=not args.no_plot, threads=args.threads, only=tuple(args.only),
                           study=args.study or "", device=args.device, dtype=torch_dtype(args))
    print(f"writing into {args.out}/ (quality.md, quality-timing.md, quality.json"
          f"{', quality.png' if config.plot else ''})", flush=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = run_quality(config, log=lambda m: print(m, flush=True))
    written = write_reports(rows, config)
    print()
    print(format_markdown(rows, timing=False))
    print(format_markdown(rows, timing=True))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
