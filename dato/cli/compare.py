"""``python -m dato compare``: the schedule generators side by side at equal MACs on the fixture."""

from __future__ import annotations

import argparse

import torch

from dato.generators.compare import GENERATORS, CompareConfig, format_markdown, run_compare, write_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    parser.add_argument("--steps", type=int, default=d.steps, help=f"sampling steps (default {d.steps})")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in d.targets),
                        help="MACs speed-ups to compare at (default 3,5,8)")
    parser.add_argument("--per-class", type=int, default=d.per_class, help="held-out samples per digit")
    parser.add_argument("--generators", default=",".join(GENERATORS), help="subset of " + ",".join(GENERATORS))
    parser.add_argument("--gate-iterations", type=int, default=d.gate_iterations)
    parser.add_argument("--population", type=int, default=d.population)
    parser.add_argument("--generations", type=int, default=d.generations)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--out", default=d.out, help="folder for compare.md and compare.json")


def run(args: argparse.Namespace) -> int:
    try:
        targets = tuple(float(t) for t in args.targets.split(",") if t.strip())
        generators = tuple(g.strip() for g in args.generators.split(",") if g.strip())
    except ValueError:
        raise SystemExit(f"error: --targets {args.targets!r}: expected numbers like 3,5,8") from None
    bad = [g for g in generators if g not in GENERATORS]
    if bad or not generators:
        raise SystemExit(f"error: --generators: unknown {bad}; choose from {', '.join(GENERATORS)}")
    if not targets or any(t < 1 for t in targets) or args.steps < 2 or args.per_class < 1:
        raise SystemExit("error: --targets must be >= 1, --steps >= 2, --per-class >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CompareConfig(steps=args.steps, targets=targets, per_class=args.per_class, generators=generators,
                           gate_iterations=args.gate_iterations, population=args.population,
                           generations=args.generations, out=args.out)
    data = run_compare(config, log=lambda m: print(m, flush=True))
    written = write_reports(data, config.out)
    print()
    print(format_markdown(data))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
